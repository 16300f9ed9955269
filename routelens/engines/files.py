"""The small files engines load: dicts of integer tensors as ``.pt`` (``torch.save``) or ``.json``.

Written atomically; ``.pt`` files hold only plain int64 tensors (what ``torch.load(weights_only=True)``
accepts) and are read back the same way, so a hostile pickle is refused.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PlanError
from ..io import atomic_write_bytes, atomic_write_json, read_json


def save_int_tensors(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> Path:
    """Write ``{name: int64 array}`` as ``.pt`` (torch tensors) or ``.json`` (nested lists) by extension.

    Raises:
        PlanError: any other extension.
    """
    path = Path(path)
    if path.suffix == ".json":
        return atomic_write_json(path, {k: np.asarray(v).tolist() for k, v in tensors.items()}, indent=None)
    if path.suffix != ".pt":
        raise PlanError(f"export file must end in .pt or .json, got '{path.name}'")
    import torch

    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for k, v in tensors.items()}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def read_placement_file(path: str | os.PathLike) -> dict[str, Any]:
    """The dict in a ``.pt`` (``torch.load(weights_only=True)``, tensors as numpy) or JSON file.

    Raises:
        PlanError: missing, unreadable, hostile (a pickle asking for code) or not a dict.
    """

    path = Path(path)
    if not path.is_file():
        raise PlanError(f"plan file not found: {path}")
    if path.suffix == ".pt":
        import torch

        try:
            data = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as exc:  # torch.load raises many types for a corrupt file (struct.error, zipfile...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PlanError(f"{path} is not a readable torch file: {first}") from exc
        if isinstance(data, dict):
            data = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in data.items()}
    else:
        try:
            data = read_json(path, what="plan")
        except Exception as exc:  # RoutelensError for unreadable or non-JSON files
            raise PlanError(str(exc)) from exc
    if not isinstance(data, dict):
        raise PlanError(f"{path} must hold a dict, got {type(data).__name__}")
    return data
