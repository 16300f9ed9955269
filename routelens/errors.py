"""Error types routelens raises for bad input.

Every error a user can cause (a dense model, a missing file, a corrupt shard, a plan for the wrong
model) is a :class:`RoutelensError` subclass with a one-line message that names the problem. The CLI
prints that line and exits with code 2; it never shows a traceback for them.
"""

from __future__ import annotations


class RoutelensError(Exception):
    """Base class of all user-facing routelens errors (one-line message)."""


class NotMoEError(RoutelensError):
    """The model has no Mixture-of-Experts layers routelens can hook."""


class TraceError(RoutelensError):
    """A trace folder is missing, corrupt, incomplete or of an unsupported format version."""


class PlanError(RoutelensError):
    """A placement plan is malformed or does not fit the model or trace it is used with."""


class InputError(RoutelensError):
    """A user-supplied argument or input file is invalid (bad range, unreadable text, NaNs...)."""


class ResultFileError(RoutelensError):
    """A result file (analysis, re-routing trade-off, bench report, calibration) is missing, corrupt, of
    another format or of an unsupported version."""


class RunBusyError(RoutelensError):
    """Another process is writing the run folder (it holds ``RUN/.lock``)."""
