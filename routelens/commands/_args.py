"""Argument types shared by the commands: argparse reports their errors as one line and exits with 2."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """A whole number >= 1 (token counts, GPUs, windows, steps)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (bandwidths, factors, budgets); NaN and inf are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (0 often means "automatic", e.g. ``--workers 0`` = every core)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    """``--workers N``: processes working on layers at once (default 0: every core)."""
    parser.add_argument("--workers", type=non_negative_int, default=0, metavar="N",
                        help="processes working on layers at once (default 0: one per CPU core; 1: no extra processes)")
