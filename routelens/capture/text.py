"""Text sources for capture, tokenized and packed into fixed-length windows.

Three sources: a file (``--text FILE``: plain text, or JSONL with a ``"text"`` field per line), a
``datasets`` dataset (``--dataset NAME[:CONFIG[:SPLIT]]``), or the bundled corpus
(``data/corpus/train.txt``). Documents are tokenized without special tokens, joined with the
tokenizer's EOS token and packed into consecutive windows of ``seq_len`` tokens; the last partial
window is dropped, so every recorded token is a real token (no padding). Window ``i`` is sequence
``i`` of the trace; a token's position is its column in the window.

Documents are tokenized in batches of about :data:`BATCH_CHARS` characters: a fast (Rust)
tokenizer encodes the documents of a batch on all cores, several times faster than one call per
document, with exactly the same ids. :func:`pack_windows` can run in a background thread (the
capture packs the text while the model's weights load) and stops early when asked to.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import InputError, RoutelensError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
BLOCK_CHARS = 1 << 16  # plain text is tokenized in blocks of about 64 KB, cut at line ends
BATCH_CHARS = 1 << 22  # documents encoded by one batch call (about 1M tokens of English or code)
BATCH_DOCUMENTS = 4096  # ... or this many documents, whichever comes first (short JSONL records)


@dataclass
class TextSource:
    """Where capture text comes from.

    Attributes:
        kind: ``file`` | ``dataset`` | ``bundled``.
        name: what the user gave (file path, ``NAME:CONFIG:SPLIT``) or the bundled file's name.
        documents: a callable returning a fresh iterator of document strings.
        separate_documents: join documents with EOS (JSONL records, dataset rows); False for a
            plain file, which arrives in blocks of one long document.
        sha256: content hash (whole file for files; the documents read, for datasets), filled
            once the documents have been read when not known up front.
    """

    kind: str
    name: str
    documents: Callable[[], Iterator[str]]
    separate_documents: bool = True
    sha256: str | None = None

    def describe(self) -> str:
        """``file:corpus.txt``, ``dataset:wikitext:wikitext-2-raw-v1:test`` or ``bundled:train.txt``."""
        label = Path(self.name).name if self.kind in ("file", "bundled") else self.name
        return f"{self.kind}:{label}"


@dataclass
class Windows:
    """Token windows to capture: ``token_ids[i]`` is window (sequence) ``i``.

    Attributes:
        token_ids: ``[S, L]`` int32, ``S`` windows of ``L = seq_len`` tokens.
        source: the :class:`TextSource` they came from.
        max_tokens: the ``--max-tokens`` limit they were packed under (None: all the text).
        tokens_sha256: hash of ``token_ids`` (resume checks that the windows are the same).
    """

    token_ids: np.ndarray
    source: TextSource
    max_tokens: int | None = None
    tokens_sha256: str = field(default="")

    def __post_init__(self) -> None:
        if not self.tokens_sha256:
            self.tokens_sha256 = hashlib.sha256(np.ascontiguousarray(self.token_ids, np.int32).tobytes()).hexdigest()

    @property
    def num_windows(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.token_ids.shape[1])

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.size)


# ---------------------------------------------------------------------------- sources
def file_source(path: str | os.PathLike, kind: str = "file") -> TextSource:
    """A plain-text or JSONL (``.jsonl``/``.ndjson``, one ``{"text": ...}`` per line) file.

    Raises:
        InputError: the file is missing, unreadable or empty.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"text file not found: {path}")
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(f"cannot read text file {path}: {exc.strerror or exc}") from exc
    if path.stat().st_size == 0:
        raise InputError(f"text file {path} is empty")
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    reader = _jsonl_documents if jsonl else _plain_documents
    return TextSource(kind=kind, name=str(path), documents=lambda: reader(path), separate_documents=jsonl,
                      sha256=digest.hexdigest())


def dataset_source(spec: str) -> TextSource:
    """``NAME[:CONFIG[:SPLIT]]`` read with the ``datasets`` library (streamed; split defaults to train).

    The text column is ``text`` when present, else the first string column.

    Raises:
        InputError: ``datasets`` is not installed, or the dataset cannot be reached or read.
    """
    parts = spec.split(":")
    if not parts[0] or len(parts) > 3:
        raise InputError(f"--dataset '{spec}' is not NAME[:CONFIG[:SPLIT]]")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise InputError("--dataset needs the 'datasets' package: pip install 'routelens[data]'") from exc
    try:  # open the stream now, so a wrong name fails before a big model is loaded
        stream = load_dataset(name, config, split=split, streaming=True)
    except Exception as exc:  # network errors, unknown dataset/config/split
        raise InputError(f"cannot read dataset {spec}: {_first_line(exc)}") from exc

    def documents() -> Iterator[str]:
        column = None
        try:
            for row in stream:
                if column is None:
                    column = "text" if isinstance(row.get("text"), str) else next(
                        (k for k, v in row.items() if isinstance(v, str)), None
                    )
                    if column is None:
                        raise InputError(f"dataset {spec} has no text column (columns: {', '.join(row)})")
                yield row[column]
        except RoutelensError:
            raise
        except Exception as exc:  # a shard that fails to download or parse mid-way
            raise InputError(f"cannot read dataset {spec}: {_first_line(exc)}") from exc

    return TextSource(kind="dataset", name=spec, documents=documents)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _plain_documents(path: Path) -> Iterator[str]:
    """The file as one document, yielded in ~64 KB blocks cut at line ends (reading stops early with --max-tokens)."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            block: list[str] = []
            size = 0
            for line in fh:
                block.append(line)
                size += len(line)
                if size >= BLOCK_CHARS:
                    yield "".join(block)
                    block, size = [], 0
            if block:
                yield "".join(block)
    except UnicodeDecodeError as exc:
        raise InputError(f"text file {path} is not UTF-8 (byte {exc.start})") from exc


def _jsonl_documents(path: Path) -> Iterator[str]:
    with open(path, "r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path} line {lineno} is not valid JSON: {exc.msg}") from exc
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise InputError(f'{path} line {lineno} has no string "text" field')
            yield text


# ---------------------------------------------------------------------------- packing
def pack_windows(
    source: TextSource,
    tokenizer,
    seq_len: int = 256,
    max_tokens: int | None = None,
    stop: threading.Event | None = None,
) -> Windows:
    """Tokenize ``source`` and pack it into ``[S, seq_len]`` windows.

    Documents are joined with ``tokenizer.eos_token_id`` (when the tokenizer has one); reading stops
    as soon as ``max_tokens`` (rounded down to whole windows) are available, so a small capture of a
    huge corpus does not tokenize all of it (at most one batch of :data:`BATCH_CHARS` more).

    Args:
        stop: when set (by another thread), stop between two batches and raise :class:`PackingStopped`.

    Raises:
        InputError: ``seq_len``/``max_tokens`` out of range, or too little text for one window.
        PackingStopped: ``stop`` was set.
    """
    if seq_len < 1:
        raise InputError(f"--seq-len must be >= 1, got {seq_len}")
    if max_tokens is not None and max_tokens < seq_len:
        raise InputError(f"--max-tokens {max_tokens} is less than one window of --seq-len {seq_len}")
    max_windows = None if max_tokens is None else max_tokens // seq_len
    needed = None if max_windows is None else max_windows * seq_len
    eos = getattr(tokenizer, "eos_token_id", None)
    pieces: list[np.ndarray] = []
    total = 0
    text_hash = hashlib.sha256() if source.sha256 is None else None
    index = 0
    # a short capture tokenizes about what it needs (a token is rarely more than 8 characters)
    batch_chars = BATCH_CHARS if needed is None else min(BATCH_CHARS, max(BLOCK_CHARS, 8 * needed))
    for batch in _batches(source.documents(), batch_chars):
        if stop is not None and stop.is_set():
            raise PackingStopped("text packing stopped")
        for document, ids in zip(batch, _encode_batch(tokenizer, batch)):
            if text_hash is not None:  # the documents that gave tokens, as if read one by one
                text_hash.update(document.encode("utf-8"))
            if index > 0 and eos is not None and source.separate_documents:
                pieces.append(np.array([eos], np.int32))
                total += 1
            index += 1
            pieces.append(ids)
            total += ids.size
            if needed is not None and total >= needed:
                break
        if needed is not None and total >= needed:
            break
    if text_hash is not None:
        source.sha256 = text_hash.hexdigest()
    flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    del pieces
    num_windows = flat.size // seq_len if max_windows is None else min(flat.size // seq_len, max_windows)
    if num_windows == 0:
        raise InputError(
            f"{source.describe()} gives {flat.size} tokens, fewer than one window of --seq-len {seq_len}"
        )
    token_ids = flat[: num_windows * seq_len].reshape(num_windows, seq_len)
    return Windows(token_ids=token_ids, source=source, max_tokens=max_tokens)


class PackingStopped(RoutelensError):
    """:func:`pack_windows` was asked to stop (the capture failed elsewhere before the text was packed)."""


def _batches(documents: Iterator[str], batch_chars: int = BATCH_CHARS) -> Iterator[list[str]]:
    """Consecutive documents in lists of about ``batch_chars`` characters (at least one document each)."""
    batch: list[str] = []
    size = 0
    for document in documents:
        batch.append(document)
        size += len(document)
        if size >= batch_chars or len(batch) >= BATCH_DOCUMENTS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encode_batch(tokenizer, texts: list[str]) -> list[np.ndarray]:
    """Token ids of each text, as ``tokenizer(text, add_special_tokens=False)`` gives them, in one call.

    A fast tokenizer encodes the list in parallel (Rust threads, without the GIL).
    """
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return [np.asarray(ids, dtype=np.int32) for ids in encoded]


def resolve_source(text: str | None = None, dataset: str | None = None) -> TextSource:
    """The text source the CLI options name: ``--text``, ``--dataset``, or the bundled corpus."""
    if text is not None and dataset is not None:
        raise InputError("give either --text or --dataset, not both")
    if dataset is not None:
        return dataset_source(dataset)
    if text is not None:
        return file_source(text)
    from .load import demo_corpus_path

    return file_source(demo_corpus_path(), kind="bundled")
