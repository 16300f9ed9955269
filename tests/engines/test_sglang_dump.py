"""SGLang recorder dumps → routing: the same expert per token and layer comes back, whatever the ranks,
the EPLB map and the mix of prefill and decode passes; bad files get one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_records import (DECODE, eplb_map, known_passes, random_ids, write_sglang_per_token,
                            write_sglang_stat)
from hypothesis import given, settings
from hypothesis import strategies as st

from routelens.engines.imported import PHASES
from routelens.engines.sglang_dump import read_sglang_dumps
from routelens.errors import InputError


def _check_same(routing, expected):
    tokens, seq, positions, phase, ids = routing.arrays()
    assert np.unique(seq).size == len(expected)
    assert tokens.tolist() == np.concatenate([w[0] for w in expected]).tolist()
    assert positions.tolist() == np.concatenate([w[1] for w in expected]).tolist()
    assert phase.tolist() == np.concatenate([np.full(len(w[0]), w[2]) for w in expected]).tolist()
    assert np.array_equal(ids, np.concatenate([w[3] for w in expected]))
    boundaries = np.flatnonzero(np.diff(seq)) + 1
    assert boundaries.tolist() == np.cumsum([len(w[0]) for w in expected])[:-1].tolist()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), num_passes=st.integers(1, 6), ranks=st.integers(1, 3),
       kind=st.sampled_from(["replicated", "disjoint"]), redundant=st.sampled_from([0, 2, 5]))
def test_per_token_dumps_give_back_every_tokens_experts(tmp_path_factory, layout, seed, num_passes, ranks, kind,
                                                        redundant):
    rng = np.random.default_rng(seed)
    folder = tmp_path_factory.mktemp("sg")
    passes = known_passes(rng, layout, num_passes)
    mapping = eplb_map(rng, layout.num_decoder_layers, layout.num_experts, redundant)
    files, expected = write_sglang_per_token(folder, rng, layout, passes, mapping, ranks=ranks, layout_kind=kind)
    result = read_sglang_dumps(files, layout)
    _check_same(result.routing, expected)
    recorded = list(range(ranks)) if kind == "replicated" else sorted({i % ranks for i in range(num_passes)})
    assert result.ranks == recorded
    assert result.rank_layout == (kind if len(recorded) > 1 else "single rank")
    assert result.mode == "per_token" and any("weights" in c for c in result.caveats)


def test_decode_tokens_are_one_token_windows_with_their_request_positions(tmp_path, layout):
    rng = np.random.default_rng(1)
    windows = [(np.array([7]), np.array([40]), DECODE, random_ids(rng, 1, 2, 8, 2)),
               (np.array([9]), np.array([3]), DECODE, random_ids(rng, 1, 2, 8, 2))]
    files, expected = write_sglang_per_token(tmp_path, rng, layout, [(DECODE, windows)],
                                             eplb_map(rng, 3, 8, 0), ranks=1)
    tokens, seq, positions, phase, _ = read_sglang_dumps(files, layout).routing.arrays()
    assert seq.tolist() == [0, 1] and positions.tolist() == [40, 3]
    assert [PHASES[p] for p in phase] == ["decode", "decode"]


def test_per_pass_and_stat_dumps_become_counts_per_step(tmp_path, layout):
    rng = np.random.default_rng(2)
    passes = known_passes(rng, layout, 4)
    mapping = eplb_map(rng, 3, 8, 4)
    files, expected = write_sglang_per_token(tmp_path, rng, layout, passes, mapping, ranks=2, per_pass=True)
    result = read_sglang_dumps(files, layout)
    assert result.mode == "per_pass" and result.logical_count.shape == (4, 2, 8)
    ids = np.concatenate([w[3] for w in expected])
    for j in range(2):
        assert result.logical_count[:, j].sum(0).tolist() == np.bincount(ids[:, j].ravel(), minlength=8).tolist()
    counts = rng.integers(0, 9, (5, 2, 8))
    counts[2] = 0  # an unfilled step of SGLang's circular buffer
    stat = read_sglang_dumps([write_sglang_stat(tmp_path / "stat.pt", layout, counts)], layout)
    assert stat.mode == "stat" and np.array_equal(stat.logical_count, counts[[0, 1, 3, 4]])


def test_ranks_that_recorded_some_passes_alike_and_others_not_must_be_named(tmp_path, layout):
    rng = np.random.default_rng(3)
    passes = known_passes(rng, layout, 2)
    files, _ = write_sglang_per_token(tmp_path, rng, layout, passes, eplb_map(rng, 3, 8, 0), ranks=2)
    data = torch.load(files[1], weights_only=True)
    data["records"][1]["input_ids"] = [t + 1 for t in data["records"][1]["input_ids"]]
    torch.save(data, files[1])
    with pytest.raises(InputError, match="--ranks replicated"):
        read_sglang_dumps(files, layout)
    with pytest.raises(InputError, match="differently"):
        read_sglang_dumps(files, layout, ranks="replicated")
    assert read_sglang_dumps(files, layout, ranks="disjoint").routing.num_tokens == 2 * sum(
        len(w[0]) for _, windows in passes for w in windows)


def test_records_of_another_model_are_refused_in_one_line(tmp_path, layout, qwen_layout):
    rng = np.random.default_rng(4)
    passes = known_passes(rng, layout, 2)
    files, _ = write_sglang_per_token(tmp_path, rng, layout, passes, eplb_map(rng, 3, 8, 0), ranks=1)
    with pytest.raises(InputError, match="no MoE router"):  # qwen3: decoder layer 1 is dense there
        read_sglang_dumps(files, qwen_layout)
    data = torch.load(files[0], weights_only=True)
    bad = dict(data, last_physical_to_logical_map=data["last_physical_to_logical_map"][:2])
    torch.save(bad, tmp_path / "short.pt")
    with pytest.raises(InputError, match="2 decoder layers"):
        read_sglang_dumps([tmp_path / "short.pt"], layout)
    mapping = data["last_physical_to_logical_map"].clone()
    mapping[1, 0] = 11
    torch.save(dict(data, last_physical_to_logical_map=mapping), tmp_path / "experts.pt")
    with pytest.raises(InputError, match="8 experts"):
        read_sglang_dumps([tmp_path / "experts.pt"], layout)
    record = dict(data["records"][0])
    record["topk_ids_of_layer"] = record["topk_ids_of_layer"].clone()
    record["topk_ids_of_layer"][1, 0, 2] = 3  # a third expert: top-k of another model
    torch.save(dict(data, records=[record]), tmp_path / "topk.pt")
    with pytest.raises(InputError, match="more than 2 experts"):
        read_sglang_dumps([tmp_path / "topk.pt"], layout)
    record = dict(data["records"][0], input_ids=data["records"][0]["input_ids"][:-1])
    torch.save(dict(data, records=[record]), tmp_path / "cut.pt")
    with pytest.raises(InputError, match="truncated"):
        read_sglang_dumps([tmp_path / "cut.pt"], layout)


def test_hostile_truncated_foreign_and_repeated_files_get_one_line_errors(tmp_path, layout):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"records": [Evil()], "last_physical_to_logical_map": torch.zeros(3, 8)}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="weights_only refused"):
        read_sglang_dumps([tmp_path / "evil.pt"], layout)
    rng = np.random.default_rng(5)
    files, _ = write_sglang_per_token(tmp_path, rng, layout, known_passes(rng, layout, 2), eplb_map(rng, 3, 8, 0), 1)
    raw = files[0].read_bytes()
    (tmp_path / "cut.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="not a readable"):
        read_sglang_dumps([tmp_path / "cut.pt"], layout)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="not an SGLang expert-distribution dump"):
        read_sglang_dumps([tmp_path / "foreign.pt"], layout)
    with pytest.raises(InputError, match="appears twice"):
        read_sglang_dumps([files[0], files[0]], layout)
    stat = write_sglang_stat(tmp_path / "stat.pt", layout, np.ones((1, 2, 8), dtype=np.int64))
    with pytest.raises(InputError, match="mix recorder modes"):
        read_sglang_dumps([files[0], stat], layout)


@settings(max_examples=40, deadline=None)
@given(blob=st.binary(max_size=300), cut=st.integers(0, 4000))
def test_any_bytes_or_any_cut_of_a_real_dump_is_read_or_refused_in_one_line(tmp_path_factory, layout, blob, cut):
    folder = tmp_path_factory.mktemp("junk")
    rng = np.random.default_rng(cut)
    files, _ = write_sglang_per_token(folder, rng, layout, known_passes(rng, layout, 1), eplb_map(rng, 3, 8, 0), 1)
    raw = files[0].read_bytes()
    for name, content in (("blob.pt", blob), ("cut.pt", raw[: cut % len(raw)])):
        (folder / name).write_bytes(content)
        with pytest.raises(InputError) as error:
            read_sglang_dumps([folder / name], layout)
        assert "\n" not in str(error.value)
