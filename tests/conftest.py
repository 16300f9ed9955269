"""Shared fixtures: synthetic traces with planted structure, tiny on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import write_trace

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "data" / "demo-moe"


@pytest.fixture
def synthetic_trace(tmp_path):
    """A 4-layer, 16-expert, top-2 trace of 4096 tokens with router logits."""
    arrays = synthetic_trace_arrays(num_tokens=4096, num_layers=4, num_experts=16, top_k=2, with_logits=True)
    return write_trace(tmp_path / "run", arrays["header"], arrays["token_ids"], arrays["seq_ids"], arrays["positions"],
                       arrays["topk_ids"], arrays["topk_weights"], arrays["router_logits"], shard_tokens=1000)


def pytest_collection_modifyitems(config, items):
    """Skip GPU tests only when CUDA is absent; the skip names the missing resource."""
    try:
        import torch

        cuda = torch.cuda.is_available()
        gpus = torch.cuda.device_count() if cuda else 0
    except Exception:
        cuda, gpus = False, 0
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs CUDA (no CUDA device here)"))
        if "multigpu" in item.keywords and gpus < 2:
            item.add_marker(pytest.mark.skip(reason=f"needs >= 2 CUDA devices (found {gpus})"))
