"""A model's MoE layout from config.json alone: router paths, decoder indices, E and k."""

from __future__ import annotations

import pytest

from routelens.engines.layout import model_layout
from routelens.errors import RoutelensError


def test_layout_maps_moe_layers_to_their_decoder_rows_and_skips_dense_ones(layout, qwen_layout):
    assert layout.family == "deepseek_v3"
    assert layout.layers == ("model.layers.1.mlp.gate", "model.layers.2.mlp.gate")
    assert layout.layer_indices == (1, 2) and layout.num_decoder_layers == 3
    assert (layout.num_experts, layout.top_k) == (8, 2)
    assert qwen_layout.layer_indices == (0, 2)  # mlp_only_layers=[1]


def test_layout_reads_no_weights_only_the_config(models, tmp_path):
    folder = tmp_path / "only-config"
    folder.mkdir()
    (folder / "config.json").write_text((models["mixtral"] / "config.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]
    assert model_layout(folder).layer_indices == (0, 1)


def test_layout_refuses_a_folder_without_config_and_a_dense_model(tmp_path):
    with pytest.raises(RoutelensError, match="no config.json"):
        model_layout(tmp_path)
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, vocab_size=64).save_pretrained(tmp_path / "dense")
    with pytest.raises(RoutelensError, match="no Mixture-of-Experts router"):
        model_layout(tmp_path / "dense")
