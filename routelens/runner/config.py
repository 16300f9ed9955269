"""The bench's configuration: one frozen, typed object, built once by the command and read by every rank.

``routelens bench`` (routelens/commands/bench.py) parses the command line into a :class:`BenchConfig`,
writes it as JSON and starts ``torchrun ... -m routelens.runner.bench --config FILE``; each rank reads
the same file back. ``python -m routelens.runner.bench RUN PLAN ... [options]`` under a hand-written
``torchrun`` (multi-node) builds the same object from the same option names
(:func:`BenchConfig.from_options`). Library functions of the runner take this object or plain values,
never an argparse namespace, and never write results into it (what a rank learns at run time, such as
the back-end torch really chose, lives in :class:`routelens.runner.group.RankContext`).

Every field names the ``routelens bench`` option it comes from (``metadata["flag"]``), so a bad value
read from a file is refused with the option's name, as on the command line.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..formats import BENCH
from ..io import atomic_write_json, read_json
from ..layer_selection import parse_layer_spec
from .routing import CONTIGUOUS

CONFIG_FORMAT = "routelens-bench-config"
CONFIG_VERSION = 1

BACKENDS = ("nccl", "gloo")
DTYPES = ("bfloat16", "float16", "float32")
EXPERT_KERNELS = ("auto", "grouped_mm", "loop")
# the layout phase (routelens.runner.layout): the fused path with its un-permute in a Triton kernel or in
# PyTorch ops, or the readable reference path; auto: triton on CUDA where Triton is installed, else torch
LAYOUT_KERNELS = ("auto", "triton", "torch", "reference")
COMM_PRIORITIES = ("default", "high")


def _option(flag: str, default: Any, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"flag": flag, "choices": choices})


@dataclass(frozen=True)
class BenchConfig:
    """What one bench run replays and measures (the options of ``routelens bench``, docs/runner.md).

    Attributes:
        run: trace folder. plans: plan files and/or ``contiguous``, the first the baseline.
        backend: ``nccl`` / ``gloo``; None: nccl with CUDA, else gloo.
        hidden_size, intermediate_size, shortcut_intermediate: sizes (None: the model's, scaled).
        tokens_per_rank: tile the trace to this many tokens per rank (None: the trace split over ranks).
        layers: ``--layers`` SPEC (None: all). dtype: None: bfloat16 on GPU, float32 on CPU.
        model: checkpoint folder whose experts to replay (None: random experts of the model's shapes).
        expert_kernel, layout_kernel: which implementation runs the experts and the layout phase.
        repeats, warmup: timed and untimed repeats. sync: peer barrier before each All-to-All.
        overlap: also time the dispatch overlapped with a dense shortcut MLP. comm_priority: NCCL streams.
        check: compare outputs with the single-process reference. calibrate, calibrate_max_mib: fit link terms.
        seed: random tokens and experts. out: report folder (None: RUN/bench). json: also write the
        report there (``-``: stdout instead of the table). progress: show a progress bar.
    """

    run: str = field(metadata={"flag": None})
    plans: tuple[str, ...] = field(default=(CONTIGUOUS,), metadata={"flag": None})
    backend: str | None = _option("--backend", None, BACKENDS)
    hidden_size: int | None = _option("--hidden-size", None)
    intermediate_size: int | None = _option("--intermediate-size", None)
    shortcut_intermediate: int | None = _option("--shortcut-intermediate", None)
    tokens_per_rank: int | None = _option("--tokens-per-rank", None)
    layers: str | None = _option("--layers", None)
    dtype: str | None = _option("--dtype", None, DTYPES)
    model: str | None = _option("--model", None)
    expert_kernel: str = _option("--expert-kernel", "auto", EXPERT_KERNELS)
    layout_kernel: str = _option("--layout-kernel", "auto", LAYOUT_KERNELS)
    repeats: int = _option("--repeats", 10)
    warmup: int = _option("--warmup", 3)
    sync: bool = _option("--no-sync", True)
    overlap: bool = _option("--overlap", False)
    comm_priority: str = _option("--comm-priority", "default", COMM_PRIORITIES)
    check: bool = _option("--check", False)
    calibrate: bool = _option("--calibrate", False)
    calibrate_max_mib: float = _option("--calibrate-max-mib", 64.0)
    seed: int = _option("--seed", 0)
    out: str | None = _option("--out", None)
    json: str | None = _option("--json", None)
    progress: bool = _option("--no-progress", True)

    def __post_init__(self) -> None:
        hints = _type_hints()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "plans" and isinstance(value, list):
                value = tuple(value)
            if hints[f.name] is float and type(value) is int:
                value = float(value)
            _check_type(f, value, hints[f.name])
            object.__setattr__(self, f.name, value)
        if not self.run:
            raise InputError("the trace folder RUN is empty")
        if not self.plans:
            raise InputError("no plan to replay (give 'contiguous' or plan files)")
        for name in ("hidden_size", "intermediate_size", "shortcut_intermediate", "tokens_per_rank"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"{_flag(name)} must be >= 1, got {value}")
        if self.repeats < 1:
            raise InputError(f"--repeats must be >= 1, got {self.repeats}")
        if self.warmup < 0:
            raise InputError(f"--warmup must be >= 0, got {self.warmup}")
        if not (self.calibrate_max_mib > 0 and math.isfinite(self.calibrate_max_mib)):
            raise InputError(f"--calibrate-max-mib must be a positive number, got {self.calibrate_max_mib}")
        if self.layers is not None:
            parse_layer_spec(self.layers)  # syntax only; whether the layers exist is checked against the trace

    # ---------------------------------------------------------------- building
    @classmethod
    def from_options(cls, run: str, plans, values: Mapping[str, Any]) -> BenchConfig:
        """The config of ``RUN PLAN ... [options]`` as argparse parsed them.

        Args:
            run, plans: the positional arguments (no plan: ``contiguous`` alone).
            values: each option's value under its argparse ``dest`` (``hidden_size`` for
                ``--hidden-size``, ``no_sync`` for ``--no-sync``); a missing option keeps its default.
        """
        kwargs: dict[str, Any] = {}
        for f, flag in option_fields():
            dest = flag.lstrip("-").replace("-", "_")
            if dest in values and values[dest] is not None:
                negated = flag.startswith("--no-") and f.default is True
                kwargs[f.name] = (not values[dest]) if negated else values[dest]
        return cls(run=run, plans=tuple(plans or ()) or (CONTIGUOUS,), **kwargs)

    # ---------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field, with the format name and version."""
        return {"format": CONFIG_FORMAT, "version": CONFIG_VERSION,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}}

    @classmethod
    def from_json(cls, data: Any, source: str = "bench config") -> BenchConfig:
        """The config :meth:`to_json` wrote.

        Raises:
            InputError: not a routelens bench config, another version, an unknown or missing field, or a
                value the option would refuse (one line naming the option).
        """
        if not isinstance(data, dict) or data.get("format") != CONFIG_FORMAT:
            raise InputError(f"{source} is not a routelens bench config (format '{CONFIG_FORMAT}')")
        if data.get("version") != CONFIG_VERSION:
            raise InputError(f"{source} has version {data.get('version')!r}; this routelens reads {CONFIG_VERSION}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k not in ("format", "version")}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{source} has unknown field '{unknown[0]}'")
        if "run" not in values:
            raise InputError(f"{source} names no trace folder ('run')")
        return cls(**values)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` (atomically)."""
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> BenchConfig:
        """Read a config file written by :meth:`save` (one-line errors for a missing or bad file)."""
        return cls.from_json(read_json(path, what="bench config"), source=f"bench config {path}")

    # ---------------------------------------------------------------- derived
    @property
    def out_dir(self) -> Path:
        """Where the report and calibration go: ``--out``, else ``RUN/bench``."""
        return Path(self.out) if self.out else BENCH.folder_in(self.run)


def option_fields() -> list[tuple[dataclasses.Field, str]]:
    """``(field, flag)`` of every field set by an option (``RUN`` and ``PLAN`` are positional)."""
    return [(f, f.metadata["flag"]) for f in dataclasses.fields(BenchConfig) if f.metadata.get("flag")]


def value_type(f: dataclasses.Field) -> type:
    """The type of a field's value without ``None`` (``int`` for ``int | None``)."""
    hint = _type_hints()[f.name]
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return next(a for a in (typing.get_args(hint) if union else (hint,)) if a is not type(None))


def _flag(name: str) -> str:
    return next(flag for f, flag in option_fields() if f.name == name)


@functools.cache
def _type_hints() -> dict[str, Any]:
    return typing.get_type_hints(BenchConfig)


def _check_type(f: dataclasses.Field, value: Any, hint: Any) -> None:
    """Refuse a value of the wrong kind (a hostile or hand-edited config file), naming the option."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if value is None and union and type(None) in typing.get_args(hint):
        return
    where = f.metadata.get("flag") or f.name.upper()
    base = value_type(f)
    if typing.get_origin(base) is tuple:
        ok, base = isinstance(value, tuple) and all(isinstance(v, str) and v for v in value), list
    elif base is int or base is float:
        ok = isinstance(value, base) and not isinstance(value, bool)
    else:
        ok = isinstance(value, base)
    if not ok:
        expected = "a list of non-empty names" if base is list else base.__name__
        raise InputError(f"{where}: expected {expected}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise InputError(f"{where} must be one of {', '.join(choices)}, got {value!r}")
