"""Loading for capture: weights straight onto their device, ``--max-memory`` limits with a device map."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from routelens.capture.load import load_weights, parse_max_memory
from routelens.capture.tiny import build_tiny_moe
from routelens.errors import InputError

SIZES = st.builds(lambda n, unit: f"{n}{unit}", st.integers(1, 10**6), st.sampled_from(["", "B", "KB", "MiB", "GiB", "gb", "TiB"]))


@given(st.dictionaries(st.one_of(st.integers(0, 15), st.just("cpu")), SIZES, min_size=1, max_size=6))
def test_max_memory_parses_back_what_it_was_written_from(limits):
    text = ",".join(f"{device}={size}" for device, size in limits.items())
    assert parse_max_memory(text) == limits


@pytest.mark.parametrize("text, message", [
    ("0:70GiB", "not DEVICE=SIZE"), ("0=", "not DEVICE=SIZE"), ("=3GiB", "not DEVICE=SIZE"),
    ("0=lots", "not a number with a unit"), ("0=70GiB,gpu0=1GiB", "not a GPU index or cpu"), ("0=-1GiB", "not a number"),
])
def test_malformed_max_memory_is_a_one_line_error(text, message):
    with pytest.raises(InputError, match=message):
        parse_max_memory(text)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_moe(tmp_path_factory.mktemp("load") / "tiny-moe")


def test_max_memory_needs_a_device_map_and_goes_with_it(tiny):
    with pytest.raises(InputError, match="--max-memory limits a --device-map"):
        load_weights(tiny, device="cpu", max_memory={"cpu": "1GiB"})
    model = load_weights(tiny, device_map="auto", max_memory={"cpu": "1GiB"})
    assert {p.device.type for p in model.parameters()} == {"cpu"} and not model.training


@pytest.mark.gpu
def test_weights_load_straight_onto_the_gpu(tiny):
    model = load_weights(tiny, device="cuda")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert getattr(model, "hf_device_map", {"": None}).keys() <= {""}  # one device: no accelerate hooks
