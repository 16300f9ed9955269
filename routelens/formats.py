"""routelens's file formats: each one's name, version, file name, reader and writer, defined once.

Every JSON file routelens writes starts with ``"format": NAME, "version": N``. This module is the one
place those names, versions and file names are written down; the library's readers and writers and
the dashboard import them from here.

* :data:`TRACE` (``routelens-trace``): ``RUN/manifest.json`` beside ``RUN/shards/``; ``capture``, ``reroute``.
* :data:`PLAN` (``routelens-plan``): any ``.json`` the user names (``RUN/plans/`` by convention); ``place``.
* :data:`ANALYSIS` (``routelens-analysis``): ``RUN/analysis/analysis.json`` beside its ``.npy`` arrays; ``analyze``.
* :data:`TRADEOFF` (``routelens-reroute-eval``): ``OUT/tradeoff.json``; ``reroute-eval``.
* :data:`BENCH` (``routelens-bench``): ``RUN/bench/bench-{backend}-g{G}-h{hidden}-t{tokens per rank}.json``; ``bench``.
* :data:`CALIBRATION` (``routelens-calibration``): ``RUN/bench/calibration-{backend}-g{G}.json``; ``bench --calibrate``.
* :data:`SCHEDULE` (``routelens-schedule``): ``RUN/schedules/schedule-g{G}-r{R}[-{phase}].json``; ``schedule-eval``.

Why one registry rather than a reader and writer beside each object: four of the seven formats
(trade-off, bench, calibration, schedule) are plain JSON reports with no object to sit beside, and the
dashboard needs every format's name, file name and reader without importing the modules that make
them (``runner.bench`` pulls in ``torch.distributed``, ``commands.reroute_eval`` the whole re-routing
package). The header rule is the same for all seven (the right ``format``, this ``version``, the keys a
reader relies on, a one-line error otherwise; writes stamped and atomic), so it is written once, in
:class:`FileFormat`. Formats with rich content keep their content checks beside their object and call
their format here for the header: :meth:`routelens.trace.Trace.open`, :meth:`routelens.plan.Plan.load`,
:func:`routelens.graphs.load_analysis`. This module imports only ``errors`` and ``io``, so the
dashboard's run discovery stays cheap.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import PlanError, ResultFileError, RoutelensError, TraceError
from .io import atomic_write_json, read_json

HEADER_KEYS = ("format", "version")


@dataclass(frozen=True)
class FileFormat:
    """One kind of routelens JSON file.

    Attributes:
        name: the file's ``"format"`` field.
        version: the ``"version"`` this routelens writes and reads (any other is refused: the
            formats carry no migrations, a file of another version is remade).
        what: how messages name the file (``"bench report"``).
        error: the :class:`~routelens.errors.RoutelensError` subclass a bad file raises.
        file: its file name, a :meth:`str.format` pattern over the file's own top-level fields when it
            has some (``bench-{backend}-g{num_gpus}.json``), or ``""`` when the user names it (plans).
        folder: the run's sub-folder that holds it (``"bench"``), ``""`` for the run folder itself.
        required: top-level keys every valid file has, with the JSON type each must be; readers
            rely on them without checking.
        remake: what to do about a file of another version (ends the message).
    """

    name: str
    version: int
    what: str
    error: type[RoutelensError]
    file: str = ""
    folder: str = ""
    required: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)
    remake: str = ""

    # ------------------------------------------------------------------ names
    def header(self) -> dict[str, Any]:
        """``{"format": name, "version": version}``, the first two fields of every file of this format."""
        return {"format": self.name, "version": self.version}

    def file_name(self, fields: Mapping[str, Any] | None = None) -> str:
        """The file name, its pattern filled from ``fields`` (e.g. the report itself).

        Raises:
            ValueError: a field the pattern needs is missing, or the format has no fixed name.
        """
        if not self.file:
            raise ValueError(f"{self.what} files have no fixed name")
        missing = [name for name in self.fields() if name not in (fields or {})]
        if missing:
            raise ValueError(f"{self.what} file name needs {', '.join(missing)}")
        return self.file.format_map(dict(fields or {}))

    def fields(self) -> list[str]:
        """The top-level fields the file name is made of (``[]`` for a fixed name)."""
        return [name for _, name, _, _ in string.Formatter().parse(self.file) if name]

    def pattern(self) -> str:
        """A glob matching every file name of this format (``bench-*-g*-h*-t*.json``)."""
        return "".join(text + ("*" if name else "") for text, name, _, _ in string.Formatter().parse(self.file))

    def matches(self, file_name: str) -> bool:
        """Whether ``file_name`` (a base name) is named like a file of this format."""
        return bool(self.file) and fnmatch.fnmatchcase(file_name, self.pattern())

    def folder_in(self, run_path: str | os.PathLike) -> Path:
        """``RUN/<folder>``: where a run keeps its files of this format."""
        return Path(run_path) / self.folder

    def path_in(self, run_path: str | os.PathLike, fields: Mapping[str, Any] | None = None) -> Path:
        """``RUN/<folder>/<file name>``."""
        return self.folder_in(run_path) / self.file_name(fields)

    # ------------------------------------------------------------------ reading
    def check(self, obj: Any, source: str | os.PathLike) -> dict[str, Any]:
        """Return ``obj`` if it is a file of this format and version with its required keys.

        Args:
            obj: the parsed JSON.
            source: the file (or what it came from), for the message.

        Raises:
            RoutelensError: of class :attr:`error`, one line naming ``source`` and what is wrong.
        """
        if not isinstance(obj, dict) or obj.get("format") != self.name:
            found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise self.error(f"{source} is not a routelens {self.what} (\"format\" is {_short(found)}, "
                             f"expected {self.name!r})")
        version = obj.get("version")
        if version != self.version:
            raise self.error(f"{source} has {self.what} format version {_short(version)}; this routelens reads "
                             f"version {self.version}" + (f" ({self.remake})" if self.remake else ""))
        for key, kind in self.required.items():
            if key not in obj:
                raise self.error(f"{source} lacks '{key}': not a complete {self.what}")
            value = obj[key]
            if not isinstance(value, kind) or isinstance(value, bool) and bool not in _types(kind):
                raise self.error(f"{source}: '{key}' is {type(value).__name__}, expected "
                                 f"{' or '.join(t.__name__ for t in _types(kind))}")
            if isinstance(value, float) and not math.isfinite(value):
                raise self.error(f"{source}: '{key}' is {value}, expected a finite number")
        return obj

    def read(self, path: str | os.PathLike) -> dict[str, Any]:
        """Read and :meth:`check` the file at ``path``.

        Raises:
            RoutelensError: of class :attr:`error`: missing, unreadable, not JSON (e.g. half-written),
                of another format or version, or lacking a required key (one line).
        """
        try:
            obj = read_json(path, what=self.what)
        except self.error:
            raise
        except RoutelensError as exc:
            raise self.error(str(exc)) from exc
        return self.check(obj, path)

    def sniff(self, path: str | os.PathLike, head_bytes: int = 256) -> bool:
        """Cheap test before :meth:`read`: the file's first bytes name this format (writers put it first)."""
        try:
            with open(path, "rb") as fh:
                head = fh.read(head_bytes)
        except OSError:
            return False
        return json.dumps(self.name).encode() in head

    # ------------------------------------------------------------------ writing
    def write(self, path: str | os.PathLike, body: Mapping[str, Any], indent: int | None = 2) -> Path:
        """Write ``body`` atomically (:func:`routelens.io.atomic_write_json`) after this format's header.

        ``body``'s own ``format``/``version`` fields, if any, are replaced by this format's.

        Raises:
            RoutelensError: the disk is full or the folder is not writable; ValueError: NaN or inf in ``body``.
        """
        content = {**self.header(), **{k: v for k, v in body.items() if k not in HEADER_KEYS}}
        return atomic_write_json(path, content, indent=indent)


def _types(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


NUMBER = (int, float)

# ---------------------------------------------------------------------------- the formats
TRACE = FileFormat(
    "routelens-trace", 1, what="trace manifest", error=TraceError, file="manifest.json",
    remake="re-capture it with this version",
)
# The rest of a trace folder's layout (see routelens.trace): shard files, and the per-rank part
# manifests of a torchrun capture (same format as the manifest) before they are merged.
SHARD_DIR = "shards"
PARTS_DIR = "parts"
PART_FILE = "rank{rank}.json"
# The capture's tokenizer (the ``tokenizers`` JSON of a fast tokenizer), so that token strings come
# from inside the run folder and analysis never opens the model folder a manifest names.
TOKENIZER_FILE = "tokenizer.json"

PLAN = FileFormat("routelens-plan", 1, what="plan", error=PlanError, folder="plans",
                  remake="re-make it with routelens place")

ANALYSIS = FileFormat(
    "routelens-analysis", 1, what="analysis", error=ResultFileError, file="analysis.json", folder="analysis",
    required={"layers": list, "layer_names": list, "num_experts": int, "top_k": int, "num_tokens": int,
              "per_layer": list},
    remake="re-run routelens analyze on the run",
)

TRADEOFF = FileFormat(
    "routelens-reroute-eval", 1, what="re-routing trade-off", error=ResultFileError, file="tradeoff.json",
    required={"rows": list}, remake="re-run routelens reroute-eval",
)

BENCH = FileFormat(
    "routelens-bench", 1, what="bench report", error=ResultFileError, folder="bench",
    file="bench-{backend}-g{num_gpus}-h{hidden_size}-t{tokens_per_rank}.json",
    required={"plans": list, "num_gpus": int, "baseline": str}, remake="re-run routelens bench",
)

CALIBRATION = FileFormat(
    "routelens-calibration", 1, what="calibration", error=ResultFileError, folder="bench",
    file="calibration-{backend}-g{num_gpus}.json",
    required={"latency_us": NUMBER, "bandwidth_GBps": NUMBER}, remake="re-run routelens bench --calibrate",
)

SCHEDULE = FileFormat(
    "routelens-schedule", 1, what="placement schedule", error=ResultFileError, folder="schedules",
    file="schedule-{label}.json",
    required={"label": str, "schedules": list, "best": dict, "trace": dict, "num_gpus": int, "fit_tokens": int,
              "batch_tokens": int},
    remake="re-run routelens schedule-eval",
)

FORMATS: dict[str, FileFormat] = {f.name: f for f in (TRACE, PLAN, ANALYSIS, TRADEOFF, BENCH, CALIBRATION, SCHEDULE)}

__all__ = ["FileFormat", "FORMATS", "TRACE", "PLAN", "ANALYSIS", "TRADEOFF", "BENCH", "CALIBRATION", "SCHEDULE",
           "SHARD_DIR", "PARTS_DIR", "PART_FILE", "HEADER_KEYS"]
