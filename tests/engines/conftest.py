"""Tiny model folders (config.json only, as ``routelens import --model`` reads) and their layouts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # engine_records, the loader reproductions
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "capture"))  # tiny_models


def _model_folder(root: Path, family: str) -> Path:
    from tiny_models import tiny_config

    folder = root / family
    tiny_config(family).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """``deepseek_v3`` (3 decoder layers, layer 0 dense, E=8, k=2) and ``qwen3_moe`` (layer 1 dense)."""
    root = tmp_path_factory.mktemp("models")
    return {family: _model_folder(root, family) for family in ("deepseek_v3", "qwen3_moe", "mixtral")}


@pytest.fixture(scope="session")
def layout(models):
    from routelens.engines.layout import model_layout

    return model_layout(models["deepseek_v3"])


@pytest.fixture(scope="session")
def qwen_layout(models):
    from routelens.engines.layout import model_layout

    return model_layout(models["qwen3_moe"])
