#!/usr/bin/env python3
"""Build the bundled demo text corpus from the Python standard library's sources.

The corpus is the .py files of the running interpreter's standard library (test
suites, GUI/IDE packages, vendored tooling, codec tables and site-packages left
out), in sorted order.  Files are grouped by top-level module (``json`` for
``json/decoder.py``, ``argparse`` for ``argparse.py``); every 8th module by
sorted name goes to the held-out split, the rest to the train split, so the two
splits never share a module.  Each split is then thinned to its size target by
taking an evenly spaced, deterministic subset of its files (in sorted order),
with very long files cut at a line boundary.

Every file is written as::

    # file: json/decoder.py
    <source>
    <blank line>

The output depends on the interpreter's version (the stdlib changes between
releases), which is why the result is committed under data/corpus/ rather than
regenerated on each machine.  The committed corpus was built with CPython 3.11.7.

Usage::

    python scripts/build_corpus.py [--out data/corpus] [--train-bytes 3000000]
                                   [--heldout-bytes 500000] [--heldout-every 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from pathlib import Path

# Directories (any path component) that are never part of the corpus.
EXCLUDED_DIRS = {
    "test",
    "tests",
    "idle_test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "pydoc_data",  # one huge generated data module
    "encodings",  # mostly generated codec tables
    "__phello__",
    "msilib",
    "config-3",  # config-3.x-<platform> build directory
}
# Top-level single-file modules that are generated data or test helpers.
EXCLUDED_FILES = {
    "this.py",
    "antigravity.py",
    "turtle.py",  # Tk-based
    "_pydecimal.py",  # very long; decimal is represented elsewhere
    "_sysconfigdata.py",
}
HEADER = "# file: {}\n"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def is_excluded(rel: Path) -> bool:
    parts = rel.parts
    for p in parts[:-1]:
        if p in EXCLUDED_DIRS or p.startswith("config-") or p.startswith("site-"):
            return True
    name = parts[-1]
    if name in EXCLUDED_FILES or name.startswith("_sysconfigdata"):
        return True
    if name.startswith("test_") or name.endswith("_test.py"):
        return True
    return False


def list_sources(root: Path) -> list[str]:
    """Sorted POSIX-style relative paths of the stdlib .py files that qualify."""
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if is_excluded(rel):
            continue
        out.append(rel.as_posix())
    return sorted(out)


def top_module(rel: str) -> str:
    first = rel.split("/", 1)[0]
    return first[:-3] if first.endswith(".py") else first


def read_text(root: Path, rel: str, max_bytes: int) -> str | None:
    try:
        text = (root / rel).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    text = text.strip("\n")
    if not text.strip():
        return None
    if len(text.encode("utf-8")) > max_bytes:
        # Cut at the last line boundary under the cap.
        cut = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
        text = cut[: cut.rfind("\n")] if "\n" in cut else cut
    return text


def entry(rel: str, text: str) -> str:
    return HEADER.format(rel) + text + "\n\n"


def select(root: Path, files: list[str], target: int, max_file_bytes: int) -> tuple[list[str], str]:
    """Evenly spaced subset of `files` (sorted order kept) filling about `target` bytes."""
    texts = {}
    for rel in files:
        t = read_text(root, rel, max_file_bytes)
        if t is not None:
            texts[rel] = t
    names = sorted(texts)
    sizes = [len(entry(n, texts[n]).encode("utf-8")) for n in names]
    total = sum(sizes)
    if total <= target:
        chosen = names
    else:
        # Take files at fractional stride total/target so the subset spans the whole
        # alphabet of modules, then stop at the target.
        stride = total / target
        chosen, acc, pos = [], 0, 0.0
        while int(pos) < len(names) and acc < target:
            i = int(pos)
            chosen.append(names[i])
            acc += sizes[i]
            pos += stride
        if acc < target:  # top up from what was skipped, in order
            taken = set(chosen)
            for n, s in zip(names, sizes):
                if acc >= target:
                    break
                if n not in taken:
                    chosen.append(n)
                    taken.add(n)
                    acc += s
            chosen.sort()
    body = "".join(entry(n, texts[n]) for n in chosen)
    return chosen, body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/corpus", help="output directory (default: data/corpus)")
    ap.add_argument("--train-bytes", type=int, default=3_000_000)
    ap.add_argument("--heldout-bytes", type=int, default=500_000)
    ap.add_argument("--heldout-every", type=int, default=8, help="every N-th module by sorted name is held out")
    ap.add_argument("--max-file-bytes", type=int, default=40_000, help="cut longer files at a line boundary")
    args = ap.parse_args(argv)

    root = stdlib_root()
    files = list_sources(root)
    modules = sorted({top_module(f) for f in files})
    held_modules = {m for i, m in enumerate(modules) if i % args.heldout_every == args.heldout_every - 1}
    train_files = [f for f in files if top_module(f) not in held_modules]
    held_files = [f for f in files if top_module(f) in held_modules]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"python": sys.version.split()[0], "stdlib": str(root), "modules": len(modules)}
    for name, group, target in (
        ("train", train_files, args.train_bytes),
        ("heldout", held_files, args.heldout_bytes),
    ):
        chosen, body = select(root, group, target, args.max_file_bytes)
        (out / f"{name}.txt").write_text(body, encoding="utf-8", newline="\n")
        summary[name] = {
            "files": len(chosen),
            "modules": len({top_module(c) for c in chosen}),
            "bytes": len(body.encode("utf-8")),
        }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
