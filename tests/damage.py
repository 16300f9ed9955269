"""Damaged traces for the robustness tests: each damage edits a copy of a sound run folder in one way.

Shared by tests/test_damaged_traces.py (every command) and tests/app/test_damaged_runs.py (every
dashboard page). Outside the run folder sits :class:`FifoWatch`'s FIFOs: a FIFO blocks whoever opens
it for reading, and the watch notices that reader (and releases it), so a read outside the run
folder fails the test instead of passing unseen.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from routelens.io import file_sha256
from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import write_trace

NUM_LAYERS, NUM_EXPERTS, TOP_K, NUM_TOKENS, SHARD_TOKENS = 2, 8, 2, 384, 128
NUM_SHARDS = NUM_TOKENS // SHARD_TOKENS
SHARD_NAMES = [f"r0-{i:06d}.safetensors" for i in range(NUM_SHARDS)]

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=5)


def build_template(folder: Path) -> Path:
    """A sound run: 2 layers, E=8, k=2, 384 tokens in windows of 64, 3 shards of 128 tokens, with logits."""
    a = synthetic_trace_arrays(num_tokens=NUM_TOKENS, num_layers=NUM_LAYERS, num_experts=NUM_EXPERTS, top_k=TOP_K,
                               seq_len=64, with_logits=True)
    return write_trace(folder, a["header"], a["token_ids"], a["seq_ids"], a["positions"], a["topk_ids"],
                       a["topk_weights"], a["router_logits"], shard_tokens=SHARD_TOKENS).path


def make_outside(folder: Path) -> Path:
    """A folder outside every run, holding FIFOs named like shards and manifests."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHARD_NAMES + ["manifest.json", "fifo"]:
        if not (folder / name).exists():
            os.mkfifo(folder / name)
    return folder


class FifoWatch:
    """Notices (and unblocks) any reader of the FIFOs in ``folders`` while the ``with`` block runs."""

    def __init__(self, *folders: Path):
        self.fifos = [p for folder in folders if folder.is_dir() and not folder.is_symlink()
                      for p in folder.iterdir() if stat.S_ISFIFO(p.lstat().st_mode)]
        self.opened: list[str] = []
        self._stop = threading.Event()

    def __enter__(self) -> "FifoWatch":
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            for fifo in self.fifos:
                try:  # succeeds only while someone holds the FIFO open for reading
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    continue
                self.opened.append(str(fifo))
                os.close(fd)  # the reader sees end-of-file and goes on (with a corrupt-file error)


def tree_hash(run: Path) -> str:
    """A hash of the trace's files (manifest, shards; links by their target), not of what commands add."""
    digest = hashlib.sha256()
    for folder, subdirs, files in os.walk(run):
        subdirs[:] = sorted(d for d in subdirs if Path(folder, d) != run / "analysis" or os.path.islink(Path(folder, d)))
        for name in sorted(files + [d for d in subdirs if os.path.islink(Path(folder, d))]):
            path = Path(folder, name)
            if path.parent == run and name.startswith(".lock"):
                continue
            info = path.lstat()
            digest.update(str(path.relative_to(run)).encode())
            if stat.S_ISLNK(info.st_mode):
                digest.update(b"link:" + os.readlink(path).encode())
            elif stat.S_ISREG(info.st_mode):
                digest.update(path.read_bytes())
            else:
                digest.update(f"mode:{info.st_mode:o}".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------- damages
def edit_manifest(run: Path, edit) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    edit(manifest)
    (run / "manifest.json").write_text(json.dumps(manifest))


def rewrite_tensors(run: Path, shard: int, edit, keep_hash: bool = True) -> None:
    """``edit(tensors)`` on one shard's tensors, rewritten; its manifest hash follows when ``keep_hash``."""
    path = run / "shards" / SHARD_NAMES[shard]
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))

    def update(manifest):
        entry = manifest["shards"][shard]
        if keep_hash:
            entry["sha256"], entry["size"] = file_sha256(path)
        else:
            entry.pop("sha256", None), entry.pop("size", None)

    edit_manifest(run, update)


def ids_out_of_range(run: Path, shard: int = 0, layer: int = 1, token: int = 5, value: int = NUM_EXPERTS) -> None:
    def edit(tensors):
        tensors[f"topk_ids.{layer}"][token, 0] = value

    rewrite_tensors(run, shard, edit)


TENSOR_DAMAGES = {
    "id too high": lambda t, j, i: t[f"topk_ids.{j}"].__setitem__((i, 0), NUM_EXPERTS),
    "id below -1": lambda t, j, i: t[f"topk_ids.{j}"].__setitem__((i, 1), -2),
    "ids int32": lambda t, j, i: t.__setitem__(f"topk_ids.{j}", t[f"topk_ids.{j}"].astype(np.int32)),
    "weights float32": lambda t, j, i: t.__setitem__(f"topk_weights.{j}", t[f"topk_weights.{j}"].astype(np.float32)),
    "ids one column more": lambda t, j, i: t.__setitem__(f"topk_ids.{j}", np.concatenate(
        [t[f"topk_ids.{j}"], t[f"topk_ids.{j}"][:, :1]], axis=1)),
    "ids one token short": lambda t, j, i: t.__setitem__(f"topk_ids.{j}", t[f"topk_ids.{j}"][1:].copy()),
    "ids missing": lambda t, j, i: t.pop(f"topk_ids.{j}"),
    "NaN weight": lambda t, j, i: t[f"topk_weights.{j}"].__setitem__((i, 0), np.nan),
    "logits narrow": lambda t, j, i: t.__setitem__(f"router_logits.{j}", t[f"router_logits.{j}"][:, :3].copy()),
    "negative position": lambda t, j, i: t["positions"].__setitem__(i, -1),
    "token ids float": lambda t, j, i: t.__setitem__("token_ids", t["token_ids"].astype(np.float32)),
    "seq ids missing": lambda t, j, i: t.pop("seq_ids"),
}


def link_shard(run: Path, shard: int, target: Path | str) -> None:
    path = run / "shards" / SHARD_NAMES[shard]
    path.unlink()
    path.symlink_to(target)


def link_shards_folder(run: Path, outside: Path) -> None:
    shutil.rmtree(run / "shards")
    (run / "shards").symlink_to(outside)


def link_manifest(run: Path, target: Path) -> None:
    (run / "manifest.json").unlink()
    (run / "manifest.json").symlink_to(target)


def outside_damages(outside: Path) -> dict:
    """Every way a run can point outside itself, each at a FIFO in ``outside``."""
    fifo = outside / SHARD_NAMES[1]

    def set_file(value):
        return lambda run: edit_manifest(run, lambda m: m["shards"][1].__setitem__("file", value))

    return {
        "dotdot path": set_file(f"shards/../../{outside.name}/{fifo.name}"),
        "etc passwd path": set_file("../../../../etc/passwd"),
        "absolute path": set_file(str(fifo)),
        "shard link to a FIFO outside": lambda run: link_shard(run, 1, fifo),
        "relative shard link leaving the run": lambda run: link_shard(run, 1, os.path.relpath(fifo, run / "shards")),
        "shards folder linked outside": lambda run: link_shards_folder(run, outside),
        "manifest linked to a FIFO outside": lambda run: link_manifest(run, outside / "manifest.json"),
        "manifest is a FIFO": lambda run: ((run / "manifest.json").unlink(), os.mkfifo(run / "manifest.json")),
        "shard is a FIFO inside": lambda run: ((run / "shards" / SHARD_NAMES[2]).unlink(),
                                               os.mkfifo(run / "shards" / SHARD_NAMES[2])),
        "shard link inside the run": lambda run: link_shard(run, 2, SHARD_NAMES[0]),
    }


MANIFEST_KEYS = ["layers", "num_experts", "top_k", "shards", "complete", "has_logits", "num_tokens", "num_sequences",
                 "model", "settings", "stats", "source", "parent", "num_experts_per_layer", "routing_rules",
                 "format", "version", "dtype"]
SHARD_KEYS = ["file", "num_tokens", "num_seqs", "rank", "sha256", "size"]


@st.composite
def damages(draw, outside: Path):
    """``(label, apply(run))``: one damage, drawn from every kind."""
    kind = draw(st.sampled_from(["manifest field", "shard entry", "E or k lie", "tensor", "truncated", "outside"]))
    if kind == "manifest field":
        key, value, delete = draw(st.sampled_from(MANIFEST_KEYS)), draw(JSON_VALUES), draw(st.booleans())
        apply = (lambda run: edit_manifest(run, lambda m: m.pop(key, None))) if delete else \
            (lambda run: edit_manifest(run, lambda m: m.__setitem__(key, value)))
        return f"manifest {key} {'deleted' if delete else '= ' + repr(value)}", apply
    if kind == "shard entry":
        shard, key, value = draw(st.integers(0, NUM_SHARDS - 1)), draw(st.sampled_from(SHARD_KEYS)), draw(JSON_VALUES)
        return f"shards[{shard}].{key} = {value!r}", lambda run: edit_manifest(
            run, lambda m: m["shards"][shard].__setitem__(key, value))
    if kind == "E or k lie":
        key = draw(st.sampled_from(["num_experts", "top_k"]))
        value = draw(st.integers(1, 2 * NUM_EXPERTS))
        return f"{key} = {value}", lambda run: edit_manifest(run, lambda m: m.__setitem__(key, value))
    if kind == "tensor":
        name = draw(st.sampled_from(sorted(TENSOR_DAMAGES)))
        shard, layer = draw(st.integers(0, NUM_SHARDS - 1)), draw(st.integers(0, NUM_LAYERS - 1))
        token, keep_hash = draw(st.integers(0, SHARD_TOKENS - 1)), draw(st.booleans())
        return (f"{name} (shard {shard}, layer {layer}, token {token})",
                lambda run: rewrite_tensors(run, shard, lambda t: TENSOR_DAMAGES[name](t, layer, token), keep_hash))
    if kind == "truncated":
        shard, keep = draw(st.integers(0, NUM_SHARDS - 1)), draw(st.floats(0, 0.99))

        def truncate(run):
            path = run / "shards" / SHARD_NAMES[shard]
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * keep)])

        return f"shard {shard} cut to {keep:.0%}", truncate
    name = draw(st.sampled_from(sorted(outside_damages(outside))))
    return name, outside_damages(outside)[name]


def fresh_copy(template: Path, folder: Path) -> Path:
    """A copy of the template run (links copied as links), in a new folder."""
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(template, folder, symlinks=True)
    return folder


def wait_quiet(seconds: float = 0.02) -> None:
    """Give the FIFO watch a moment to see a reader that is still blocked."""
    time.sleep(seconds)
