"""Token specialization: which tokens and token classes each expert serves, relative to base frequency.

An expert *specializes* in a token (or class) when it serves it more often than the token's share
of the text: ``lift = P(token | expert) / P(token)``, both counted over routing slots (a token
routed to ``k`` experts counts once for each). Token strings come from the tokenizer the capture
copied into the run folder (``RUN/tokenizer.json``) or one the user names (``--tokenizer``); the
model folder a manifest names is never opened (a manifest is input like any other file), nothing is
downloaded, and without a tokenizer tokens are reported by id and classes are skipped.

Classes (a heuristic on the decoded string, leading/trailing spaces stripped):
``whitespace`` (only spaces, tabs, newlines), ``digits``, ``punctuation`` (no letter, digit or
underscore), ``identifier`` (a code name: contains ``_``, mixes letters and digits, is camelCase,
or is a Python keyword or ``self``/``cls``), ``word`` (letters only: natural-language words and word
pieces) and ``other`` (anything else, e.g. partial UTF-8 bytes).
"""

from __future__ import annotations

import keyword
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..formats import TOKENIZER_FILE

TOKEN_CLASSES = ("identifier", "punctuation", "whitespace", "digits", "word", "other")
_CODE_WORDS = frozenset(keyword.kwlist) | {"self", "cls", "args", "kwargs", "init", "elif", "def", "str", "int", "dict"}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CAMEL = re.compile(r"[a-z][A-Z]")


def token_class(text: str) -> str:
    """The class of one decoded token string (see the module docstring).

    Example:
        >>> [token_class(t) for t in (" foo_bar", "):", "\\n    ", " 42", " the", "getValue")]
        ['identifier', 'punctuation', 'whitespace', 'digits', 'word', 'identifier']
    """
    if text == "" or "\ufffd" in text:
        return "other"
    stripped = text.strip()
    if stripped == "":
        return "whitespace"
    if stripped.isascii() and stripped.isdigit():
        return "digits"
    if all(not (c.isalnum() or c == "_") for c in stripped):
        return "punctuation"
    if _IDENT.match(stripped) and (
        "_" in stripped or any(c.isdigit() for c in stripped) or _CAMEL.search(stripped) or stripped in _CODE_WORDS
    ):
        return "identifier"
    if stripped.isalpha():
        return "word"
    return "other"


def tokenizer_file(trace_path: str | os.PathLike | None = None, tokenizer_path=None) -> Path | None:
    """Where token strings come from: ``tokenizer_path`` (a folder or ``tokenizer.json`` the user
    named), else the run's own copy (:data:`~routelens.formats.TOKENIZER_FILE`), else None."""
    if tokenizer_path:
        return Path(tokenizer_path).expanduser()
    if trace_path is not None and (Path(trace_path) / TOKENIZER_FILE).is_file():
        return Path(trace_path) / TOKENIZER_FILE
    return None


def load_token_texts(token_ids: Sequence[int], trace_path=None, tokenizer_path=None) -> dict[int, str] | None:
    """Decode each distinct token id to its string with the run's (or the named) tokenizer.

    Args:
        token_ids: the ids to decode (distinct).
        trace_path: the run folder (its ``tokenizer.json``, written by the capture).
        tokenizer_path: a folder or ``tokenizer.json`` to use instead.

    Returns:
        ``{id: text}``, or None when there is no tokenizer to read (nothing is downloaded).
    """
    decode = _local_decoder(tokenizer_file(trace_path, tokenizer_path))
    if decode is None:
        return None
    texts = {}
    for tid in token_ids:
        try:
            texts[int(tid)] = decode(int(tid))
        except Exception:  # an id outside the tokenizer's vocabulary (e.g. padding rows)
            texts[int(tid)] = ""
    return texts


def _local_decoder(folder: Path | None):
    if folder is None:
        return None
    file = folder if folder.is_file() else folder / "tokenizer.json"
    if file.is_file():
        try:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(file))
            return lambda tid: tok.decode([tid], skip_special_tokens=False)
        except Exception:
            pass
    if folder.is_dir():  # e.g. a sentencepiece-only folder: transformers, strictly offline
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
            return lambda tid: tok.decode([tid], skip_special_tokens=False)
        except Exception:
            return None
    return None


def class_lookup(texts: dict[int, str] | None, vocab_ids: np.ndarray) -> np.ndarray | None:
    """``[len(vocab_ids)]`` int8 class index (into :data:`TOKEN_CLASSES`) of each id, or None."""
    if texts is None:
        return None
    index = {name: i for i, name in enumerate(TOKEN_CLASSES)}
    return np.array([index[token_class(texts.get(int(t), ""))] for t in vocab_ids], dtype=np.int8)


def top_tokens(expert_counts: np.ndarray, base_counts: np.ndarray, vocab_ids: np.ndarray, texts: dict[int, str] | None,
               limit: int = 10, min_count: int = 5) -> list[list[dict[str, Any]]]:
    """Each expert's most over-represented tokens.

    Args:
        expert_counts: ``[E, V']`` slots of each token column each expert served; the first ``V``
            columns are the frequent tokens of ``vocab_ids``, any further column (rare tokens)
            counts in the totals but is never listed.
        base_counts: ``[V']`` slots of each column over all experts.
        vocab_ids: ``[V]`` vocabulary id of each frequent column.
        limit: tokens kept per expert; min_count: least times the expert must serve a token.

    Returns:
        Per expert, up to ``limit`` ``{"id", "text", "count", "share", "lift"}`` sorted by lift
        (then count); ``share`` = ``P(token | expert)``, ``lift`` = share / ``P(token)``.
    """
    counts = np.asarray(expert_counts, dtype=np.float64)
    base = np.asarray(base_counts, dtype=np.float64)
    total = base.sum()
    served = counts.sum(axis=1, keepdims=True)
    v = len(vocab_ids)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(served > 0, counts / served, 0.0)[:, :v]
        # count * total / (served * base): exact integers in float64, so equal ratios tie exactly
        lifts = np.where(base[None, :v] > 0, counts[:, :v] * total / (served * base[None, :v]), 0.0)
    out: list[list[dict[str, Any]]] = []
    for e in range(counts.shape[0]):
        cand = np.flatnonzero(counts[e, :v] >= min_count)
        order = cand[np.lexsort((-counts[e, cand], -lifts[e, cand]))][:limit]
        out.append([
            {"id": int(vocab_ids[c]), "text": None if texts is None else texts.get(int(vocab_ids[c]), ""),
             "count": int(counts[e, c]), "share": round(float(share[e, c]), 6), "lift": round(float(lifts[e, c]), 4)}
            for c in order
        ])
    return out


def class_lift(class_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(share [E, C], lift [E, C])`` of token classes per expert from ``[E, C]`` slot counts.

    ``lift[e, c]`` = ``P(class c | expert e) / P(class c)``; rows of unused experts are 0.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    per_expert = counts.sum(axis=1, keepdims=True)
    base = counts.sum(axis=0)
    total = base.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(per_expert > 0, counts / per_expert, 0.0)
        lifts = np.where((base > 0) & (total > 0), share / (base / max(total, 1.0)), 0.0)
    return share, lifts
