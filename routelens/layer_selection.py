"""The one syntax for choosing MoE layers (``--layers`` of every command), parsed in one place.

A selection is ``all`` or comma-separated items, each one of

- an index ``5`` (negative counts from the end: ``-1`` is the last MoE layer),
- an inclusive range ``0-11`` (ends may be negative: ``-4--1`` is the last four),
- a router path as the trace records it, ``model.layers.3.mlp.gate``.

Indices count the trace's MoE layers (0 = the first MoE layer), not the model's decoder layers.
:func:`parse_layer_spec` checks the syntax alone (the CLI calls it while parsing arguments);
:func:`select_layers` resolves a selection against a trace's layers.

Example:
    >>> select_layers("0,2,5-6", 8)
    [0, 2, 5, 6]
    >>> select_layers("-2--1,model.layers.1.mlp.gate", ["model.layers.1.mlp.gate", "b", "c", "d"])
    [0, 2, 3]
"""

from __future__ import annotations

import re
from typing import Sequence, Union

from .errors import InputError

# An index, or a range of two indices (either may be negative): "5", "-1", "0-11", "-4--1".
_RANGE = re.compile(r"(-?\d+)(?:-(-?\d+))?")
# A router module path: dotted Python names and decimal parts, starting with a letter or "_".
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")

LayerItem = Union[int, tuple[int, int], str]
"""One item of a selection: an index, an inclusive ``(first, last)`` range, or a router path."""


def parse_layer_spec(text: str) -> tuple[LayerItem, ...]:
    """The items of a selection string; ``()`` means every layer (``""`` or ``all``).

    Args:
        text: e.g. ``"0-11"``, ``"0,2,5-7"``, ``"-4--1"``, ``"model.layers.3.mlp.gate"``.

    Returns:
        The items in the order given: ``int`` indices, ``(first, last)`` ranges, ``str`` router paths.

    Raises:
        InputError: an item that is none of the three (one line, with an example).
    """
    text = text.strip()
    if text in ("", "all"):
        return ()
    items: list[LayerItem] = []
    for part in (p.strip() for p in text.split(",")):
        match = _RANGE.fullmatch(part)
        if match:
            first, last = match.groups()
            items.append(int(first) if last is None else (int(first), int(last)))
        elif _PATH.fullmatch(part):
            items.append(part)
        else:
            raise InputError(f"cannot read layer selection {text!r}: use indices and ranges (0,2,5-7; -1 is the "
                             "last layer) or router paths (model.layers.3.mlp.gate)")
    return tuple(items)


def select_layers(spec: str | Sequence[int | str] | None, layers: Sequence[str] | int) -> list[int]:
    """Resolve a selection to sorted, distinct layer indices.

    Args:
        spec: a selection string (see :func:`parse_layer_spec`), a sequence of indices or router
            paths, or None (every layer).
        layers: the trace's router paths, in order, or just their number (then paths cannot be named).

    Returns:
        Sorted distinct indices into ``layers``.

    Raises:
        InputError: malformed, empty, an index out of ``[0, len(layers))``, or a path the trace lacks.
    """
    names = None if isinstance(layers, int) else list(layers)
    count = layers if isinstance(layers, int) else len(names)
    if spec is None:
        return list(range(count))
    items = parse_layer_spec(spec) if isinstance(spec, str) else tuple(spec)
    if not items:
        if isinstance(spec, str):
            return list(range(count))
        raise InputError("the layer selection is empty")
    chosen: list[int] = []
    for item in items:
        if isinstance(item, tuple):
            first, last = (v + count if v < 0 else v for v in item)
            if last < first:
                raise InputError(f"layer range {item[0]}-{item[1]} in --layers {spec} is empty (end before start)")
            chosen.extend(range(first, last + 1))
        elif isinstance(item, str):
            if names is None or item not in names:
                raise InputError(f"layer '{item}' is not in the trace (it has {count} MoE layers; --layers also "
                                 f"takes indices 0-{count - 1})")
            chosen.append(names.index(item))
        else:
            chosen.append(int(item) + count if int(item) < 0 else int(item))
    bad = [v for v in chosen if not 0 <= v < count]
    if bad:
        raise InputError(f"layer {bad[0]} out of bounds in --layers {spec}: the trace has {count} MoE layers "
                         f"(0-{count - 1})")
    return sorted(set(chosen))
