"""Tiny random-init configs, one per MoE family routelens captures, for the adapter tests.

Each config has 2-3 decoder layers (with a dense layer where the family has them), 4-8 experts,
top-2 routing, hidden size 32-64 and a tiny vocabulary, so a forward pass takes milliseconds on CPU.
``build_tiny(family)`` returns a model whose router weights are re-drawn with std 1 (and, for
families with a selection bias, a random non-zero bias), so that top-k choices are far from ties and
a wrong bias or rule would show up.
"""

from __future__ import annotations

import torch

VOCAB = 96
HIDDEN = 32

# family -> (config class name, fields); shared fields are added by tiny_config
_ATTENTION = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128)

FAMILIES: dict[str, tuple[str, dict]] = {
    "qwen3_moe": ("Qwen3MoeConfig", dict(
        **_ATTENTION, num_hidden_layers=3, intermediate_size=64, moe_intermediate_size=32,
        num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1], decoder_sparse_step=1,
    )),
    "qwen2_moe": ("Qwen2MoeConfig", dict(
        **_ATTENTION, num_hidden_layers=3, intermediate_size=64, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
        mlp_only_layers=[0], decoder_sparse_step=1,
    )),
    "mixtral": ("MixtralConfig", dict(
        **_ATTENTION, num_hidden_layers=2, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2,
    )),
    "olmoe": ("OlmoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        num_hidden_layers=2, intermediate_size=32, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
    )),
    "deepseek_v2": ("DeepseekV2Config", dict(
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, num_hidden_layers=3,
        intermediate_size=64, moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=1,
        num_experts_per_tok=2, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=None,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, head_dim=8,
        topk_method="group_limited_greedy", n_group=2, topk_group=1, routed_scaling_factor=1.5,
    )),
    "deepseek_v3": ("DeepseekV3Config", dict(
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, num_hidden_layers=3,
        intermediate_size=64, moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=1,
        num_experts_per_tok=2, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=16,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, head_dim=8,
        n_group=2, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.5,
    )),
    "glm4_moe": ("Glm4MoeConfig", dict(
        **_ATTENTION, num_hidden_layers=3, intermediate_size=64, moe_intermediate_size=32,
        n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
        n_group=2, topk_group=1, norm_topk_prob=True, routed_scaling_factor=1.5,
    )),
    "dots1": ("Dots1Config", dict(
        **_ATTENTION, num_hidden_layers=3, intermediate_size=64, moe_intermediate_size=32,
        n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
        n_group=1, topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0,
    )),
    "gpt_oss": ("GptOssConfig", dict(
        **_ATTENTION, num_hidden_layers=2, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2,
        sliding_window=4, layer_types=["sliding_attention", "full_attention"],
    )),
    "granitemoe": ("GraniteMoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, num_hidden_layers=2,
        intermediate_size=32, num_local_experts=8, num_experts_per_tok=2,
    )),
    "granitemoeshared": ("GraniteMoeSharedConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, num_hidden_layers=2,
        intermediate_size=32, shared_intermediate_size=32, num_local_experts=8, num_experts_per_tok=2,
    )),
    "phimoe": ("PhimoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, num_hidden_layers=2,
        intermediate_size=32, num_local_experts=8, num_experts_per_tok=2, router_jitter_noise=0.01,
    )),
    "ernie4_5_moe": ("Ernie4_5_MoeConfig", dict(
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, num_hidden_layers=3,
        intermediate_size=64, moe_intermediate_size=32, moe_num_experts=8, moe_k=2, moe_num_shared_experts=1,
        moe_layer_start_index=1, moe_layer_end_index=2, moe_layer_interval=1,
    )),
    "hunyuan_v1_moe": ("HunYuanMoEV1Config", dict(
        **_ATTENTION, num_hidden_layers=2, intermediate_size=32, num_experts=8, moe_topk=2,
    )),
    "minimax": ("MiniMaxConfig", dict(
        **_ATTENTION, num_hidden_layers=2, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2,
        layer_types=["linear_attention", "full_attention"], block_size=4,
    )),
    "qwen3_next": ("Qwen3NextConfig", dict(
        **_ATTENTION, num_hidden_layers=3, intermediate_size=64, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
        decoder_sparse_step=1, mlp_only_layers=[2], layer_types=["linear_attention", "full_attention", "linear_attention"],
        linear_conv_kernel_dim=4, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
        linear_num_value_heads=4,
    )),
}


def tiny_config(family: str):
    """The tiny transformers config of ``family`` (a ``model_type``)."""
    import transformers

    class_name, fields = FAMILIES[family]
    shared = dict(vocab_size=VOCAB, hidden_size=HIDDEN, tie_word_embeddings=False, initializer_range=0.2)
    shared.update(fields)
    return getattr(transformers, class_name)(**shared)


def randomize_routers(model: torch.nn.Module, seed: int = 0) -> None:
    """Router weights ~ N(0, 0.3²) (logits of std ~1.7: far from ties, sigmoid not saturated) and
    selection biases ~ N(0, 0.1²) (large enough to change choices)."""
    from routelens.capture.adapters import find_router_sites

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for site in find_router_sites(model).sites:
            for name, param in site.module.named_parameters(recurse=True):
                if param.dim() == 2:
                    param.copy_(0.3 * torch.randn(param.shape, generator=generator))
            for name, buffer in list(site.module.named_buffers()) + list(site.module.named_parameters()):
                if "bias" in name and "correction" in name:
                    buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))


def build_tiny(family: str, seed: int = 0) -> torch.nn.Module:
    """A random-init tiny model of ``family`` in eval mode, routers randomized."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family))
    randomize_routers(model, seed)
    return model.eval()


# families whose routers expose no logits
NO_LOGITS: set[str] = set()


def expected_moe_layers(family: str) -> list[int]:
    """Layer indices that are MoE layers in the tiny config of ``family`` (dense ones left out)."""
    config = tiny_config(family)
    layers = range(config.num_hidden_layers)
    if family in ("qwen3_moe", "qwen2_moe", "qwen3_next"):
        return [i for i in layers if i not in config.mlp_only_layers and (i + 1) % config.decoder_sparse_step == 0]
    if family in ("deepseek_v2", "deepseek_v3", "glm4_moe", "dots1"):
        return [i for i in layers if i >= config.first_k_dense_replace]
    if family == "ernie4_5_moe":
        return [i for i in layers if config.moe_layer_start_index <= i <= config.moe_layer_end_index
                and (i + 1) % config.moe_layer_interval == 0]
    return list(layers)


def load_tiny(family: str, path):
    """Reload a saved tiny model with the Auto class capture uses."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def forward_inputs(family: str, input_ids: torch.Tensor) -> dict:
    """Keyword arguments of a forward pass over ``input_ids [B, L]``."""
    return {"input_ids": input_ids}


def received_choice(family: str, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [N, k], weights [N, k]) from an experts module's call ``experts(hidden, top_k_index, top_k_weights)``."""
    values = list(args) + list(kwargs.values())
    return values[1], values[2]
