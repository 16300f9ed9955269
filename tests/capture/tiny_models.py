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
    "llama4_text": ("Llama4TextConfig", dict(
        **_ATTENTION, num_hidden_layers=3, intermediate_size=32, intermediate_size_mlp=64, num_local_experts=8,
        num_experts_per_tok=2, moe_layers=[0, 2], attention_chunk_size=16,
    )),
    "dbrx": ("DbrxConfig", dict(
        hidden_size=None, d_model=HIDDEN, n_heads=4, n_layers=2, max_seq_len=128, attn_config={"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        ffn_config={"ffn_hidden_size": 32, "moe_num_experts": 8, "moe_top_k": 2, "moe_normalize_expert_weights": 1.0},
    )),
    "jetmoe": ("JetMoeConfig", dict(
        num_hidden_layers=2, num_key_value_heads=2, kv_channels=8, intermediate_size=32, num_local_experts=8,
        num_experts_per_tok=2, max_position_embeddings=128,
    )),
    "switch_transformers": ("SwitchTransformersConfig", dict(
        hidden_size=None, d_model=HIDDEN, d_kv=8, d_ff=32, num_layers=2, num_sparse_encoder_layers=1,
        num_decoder_layers=2, num_sparse_decoder_layers=1, num_heads=4, num_experts=8, expert_capacity=2,
        relative_attention_num_buckets=8, router_jitter_noise=0.0, decoder_start_token_id=0,
    )),
    "nllb-moe": ("NllbMoeConfig", dict(
        hidden_size=None, d_model=HIDDEN, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, encoder_attention_heads=4, decoder_attention_heads=4, num_experts=8,
        encoder_sparse_step=2, decoder_sparse_step=2, max_position_embeddings=128, decoder_start_token_id=2,
    )),
    "qwen3_next": ("Qwen3NextConfig", dict(
        **_ATTENTION, num_hidden_layers=3, intermediate_size=64, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True,
        decoder_sparse_step=1, mlp_only_layers=[2], layer_types=["linear_attention", "full_attention", "linear_attention"],
        linear_conv_kernel_dim=4, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
        linear_num_value_heads=4,
    )),
}


# Families beyond the brief's list, shrunk from their default config: the generic discovery and
# structural rules cover them. Values: fields that set their dense / sparse layer pattern.
SHRUNK: dict[str, dict] = {
    "afmoe": dict(num_dense_layers=1),
    "cohere2_moe": dict(mlp_layer_types=["dense", "sparse"]),
    "exaone_moe": dict(mlp_layer_types=["dense", "sparse"]),
    "granitemoe_swa": {},
    "hy_v3": dict(mlp_layer_types=["dense", "sparse"]),
    "mimo_v2_flash": dict(mlp_layer_types=["dense", "sparse"]),
    "minimax_m2": {},
    "solar_open": {},
}
_SHRINK = dict(
    hidden_size=HIDDEN, intermediate_size=32, moe_intermediate_size=32, shared_expert_intermediate_size=32,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=VOCAB, num_hidden_layers=2,
    max_position_embeddings=128, num_experts=8, num_local_experts=8, n_routed_experts=8, num_experts_per_tok=2,
    n_group=2, topk_group=1, initializer_range=0.2, tie_word_embeddings=False,
)


def _shrunk_config(family: str):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    default = CONFIG_MAPPING[family]()
    fields = default.to_dict()
    fields.update({key: value for key, value in _SHRINK.items() if getattr(default, key, None) is not None})
    for key in ("layer_types", "no_rope_layers"):  # per-layer lists follow num_hidden_layers
        if isinstance(fields.get(key), list):
            fields[key] = fields[key][: _SHRINK["num_hidden_layers"]]
    fields.update(SHRUNK[family])
    for key in ("model_type", "transformers_version", "architectures"):
        fields.pop(key, None)
    return type(default)(**fields)


def tiny_config(family: str):
    """The tiny transformers config of ``family`` (a ``model_type``)."""
    import transformers

    if family in SHRUNK:
        return _shrunk_config(family)
    class_name, fields = FAMILIES[family]
    shared = dict(vocab_size=VOCAB, hidden_size=HIDDEN, tie_word_embeddings=False, initializer_range=0.2)
    shared.update(fields)
    shared = {key: value for key, value in shared.items() if value is not None or key == "q_lora_rank"}
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
        for name, buffer in list(model.named_buffers()) + list(model.named_parameters()):
            if name.endswith(("e_score_correction_bias", "expert_bias")):  # in the router or its block
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))


def build_tiny(family: str, seed: int = 0) -> torch.nn.Module:
    """A random-init tiny model of ``family`` in eval mode, routers randomized."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if family in SEQ2SEQ else AutoModelForCausalLM
    model = auto.from_config(tiny_config(family))
    randomize_routers(model, seed)
    return model.eval()


SEQ2SEQ = {"switch_transformers", "nllb-moe"}


def expected_moe_layers(family: str) -> list[int]:
    """Layer indices of the MoE layers of the tiny ``family`` model (dense ones left out), in site order."""
    config = tiny_config(family)
    if family in ("switch_transformers", "nllb-moe"):
        return [1, 3]  # sparse encoder block 1, sparse decoder block 1 numbered after the 2 encoder blocks
    if family == "jetmoe":
        return [0, 0, 1, 1]  # mixture-of-attention then MoE MLP, per layer
    layers = range(config.num_hidden_layers)
    if family in ("qwen3_moe", "qwen2_moe", "qwen3_next"):
        return [i for i in layers if i not in config.mlp_only_layers and (i + 1) % config.decoder_sparse_step == 0]
    if family in ("deepseek_v2", "deepseek_v3", "glm4_moe", "dots1"):
        return [i for i in layers if i >= config.first_k_dense_replace]
    if family == "ernie4_5_moe":
        return [i for i in layers if config.moe_layer_start_index <= i <= config.moe_layer_end_index
                and (i + 1) % config.moe_layer_interval == 0]
    if family == "llama4_text":
        return list(config.moe_layers)
    if family == "dbrx":
        return list(range(config.n_layers))
    if family == "afmoe":
        return [i for i in layers if i >= config.num_dense_layers]
    if getattr(config, "mlp_layer_types", None):
        return [i for i in layers if config.mlp_layer_types[i] == "sparse"]
    return list(layers)


def load_tiny(family: str, path):
    """Reload a saved tiny model with the Auto class capture uses (seq2seq for Switch / NLLB-MoE)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if family in SEQ2SEQ else AutoModelForCausalLM
    return auto.from_pretrained(path).eval()


def forward_inputs(family: str, input_ids: torch.Tensor) -> dict:
    """Keyword arguments of a forward pass over ``input_ids [B, L]`` (seq2seq: a 5-token decoder input)."""
    if family in SEQ2SEQ:
        return {"input_ids": input_ids, "decoder_input_ids": input_ids[:, :5]}
    return {"input_ids": input_ids}


# ---------------------------------------------------------------------------- what the experts were given
class ExpertsProbe:
    """Hooks on one MoE layer's experts that read what they were given, independently of the adapters.

    ``calls``: one ``(ids [N, k] int64, weights [N, k] float32)`` per forward of the layer; id ``-1`` is a
    slot no expert processed (weight 0). The default reads ``experts(hidden, top_k_index, top_k_weights)``.
    """

    def __init__(self, model, experts_name: str, top_k: int):
        self.model, self.experts_name, self.top_k = model, experts_name, top_k
        self.experts = model.get_submodule(experts_name)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handles = []
        self.attach()

    def attach(self):
        self.handles.append(self.experts.register_forward_pre_hook(self.on_experts, with_kwargs=True))

    def on_experts(self, module, args, kwargs):
        values = list(args) + list(kwargs.values())
        ids, weights = values[1], values[2]
        self.calls.append((ids.reshape(-1, self.top_k).long(), weights.reshape(-1, self.top_k).float()))

    def remove(self):
        for handle in self.handles:
            handle.remove()


class OneHotProbe(ExpertsProbe):
    """Switch: ``experts(hidden, one-hot [N, 1, E], top-1 prob [N, 1])``; an all-zero row is a dropped token."""

    def on_experts(self, module, args, kwargs):
        one_hot, probs = args[1].reshape(args[1].shape[0], -1), args[2].reshape(-1, 1).float()
        routed = one_hot.sum(-1, keepdim=True) > 0
        ids = torch.where(routed, one_hot.argmax(-1, keepdim=True), -1)
        self.calls.append((ids, probs.masked_fill(~routed, 0)))


class DenseWeightsProbe(ExpertsProbe):
    """NLLB-MoE: ``experts(hidden, top-1 mask [N, E], combine weights [N, E])``: top-k nonzero entries."""

    def on_experts(self, module, args, kwargs):
        weights, ids = args[2].float().topk(self.top_k, dim=-1)
        self.calls.append((torch.where(weights > 0, ids, -1), weights))


def _owner_input(args, kwargs) -> torch.Tensor:
    hidden = args[0] if args else kwargs["hidden_states"]
    return hidden.reshape(-1, hidden.shape[-1])


class ScaledInputProbe(ExpertsProbe):
    """Llama4: the experts get ``hidden`` repeated per expert and scaled by the token's score for it
    (0 when not chosen); the score is ``<routed_in[e, n], hidden[n]> / |hidden[n]|²``."""

    def attach(self):
        owner = self.model.get_submodule(self.experts_name.rsplit(".", 1)[0])
        self.handles.append(owner.register_forward_pre_hook(self.on_owner, with_kwargs=True))
        super().attach()

    def on_owner(self, module, args, kwargs):
        self.hidden = _owner_input(args, kwargs).double()

    def on_experts(self, module, args, kwargs):
        hidden = self.hidden
        routed_in = args[0].double().view(-1, *hidden.shape)  # [E, N, H]
        scores = (routed_in * hidden).sum(-1).T / (hidden * hidden).sum(-1, keepdim=True)  # [N, E]
        chosen = (routed_in != 0).any(-1).T
        assert bool((chosen.sum(-1) <= self.top_k).all()), "no token should reach more than top_k experts"
        weights, ids = scores.masked_fill(~chosen, float("-inf")).topk(self.top_k, dim=-1)
        reached = torch.isfinite(weights)
        self.calls.append((torch.where(reached, ids, -1), weights.masked_fill(~reached, 0).float()))


class OutputSolveProbe(ExpertsProbe):
    """Families that apply the weights outside any module call (JetMoE) or per expert (DBRX).

    Records which (token, expert) pairs were computed and each pair's expert output ``O [R, H]``, then
    solves ``Y[n] = sum_r w_r O_r`` for the weights from the layer's combined output ``Y [N, H]``
    (least squares per token, float64).
    """

    def attach(self):
        family = self.model.config.model_type
        if family == "jetmoe":
            block_path = self.experts_name.rsplit(".", 1)[0]  # ...mlp or ...self_attention.experts
            self.owner_path = block_path[: -len(".experts")] if block_path.endswith(".experts") else block_path
            block = self.model.get_submodule(block_path)
            self.bias = block.bias
            self.handles.append(block.input_linear.register_forward_pre_hook(self.on_jet_input))
            self.handles.append(block.output_linear.register_forward_hook(self.on_jet_output))
        else:  # dbrx: experts.mlp(hidden[token_idx], w1, v1, w2) per expert
            self.owner_path = self.experts_name.rsplit(".", 1)[0]
            self.bias = None
            self.handles.append(self.experts.mlp.register_forward_hook(self.on_dbrx_expert))
            self.handles.append(self.experts.register_forward_hook(self.new_group))
        owner = self.model.get_submodule(self.owner_path)
        self.handles.append(owner.register_forward_pre_hook(self.on_owner_input, with_kwargs=True))
        self.handles.append(owner.register_forward_hook(self.on_owner_output))

    def on_owner_input(self, module, args, kwargs):
        self.hidden = _owner_input(args, kwargs)
        self.groups = [[]]  # lists of (tokens [R], experts [R], outputs [R, H])

    def new_group(self, *_):
        self.groups.append([])

    def _tokens_of(self, rows: torch.Tensor) -> torch.Tensor:
        matches = (rows[:, None, :] == self.hidden[None, :, :]).all(-1)
        assert bool((matches.sum(-1) == 1).all()), "each routed row should be exactly one input token"
        return matches.int().argmax(-1)

    def on_jet_input(self, module, args):
        rows, expert_size = args[0], args[1]
        experts = torch.repeat_interleave(torch.arange(len(expert_size)), torch.tensor(expert_size))
        self.pending = (self._tokens_of(rows), experts)

    def on_jet_output(self, module, args, output):
        self.groups[-1].append((*self.pending, output))

    def on_dbrx_expert(self, module, args, output):
        rows, w1 = args[0], args[1]
        expert = (w1.data_ptr() - module.w1.data_ptr()) // (w1.numel() * w1.element_size())
        tokens = self._tokens_of(rows)
        self.groups[-1].append((tokens, torch.full_like(tokens, expert), output.reshape(rows.shape[0], -1)))

    def on_owner_output(self, module, args, output):
        combined = (output[0] if isinstance(output, tuple) else output).reshape(self.hidden.shape).double()
        if self.bias is not None:
            combined = combined - self.bias.double()
        group = [g for g in self.groups if g][-1]
        tokens = torch.cat([t for t, _, _ in group])
        experts = torch.cat([e for _, e, _ in group])
        outputs = torch.cat([o for _, _, o in group]).double()
        n_tokens = combined.shape[0]
        ids = torch.full((n_tokens, self.top_k), -1, dtype=torch.int64)
        weights = torch.zeros(n_tokens, self.top_k)
        for n in range(n_tokens):
            rows = (tokens == n).nonzero().flatten()
            solution = torch.linalg.lstsq(outputs[rows].T, combined[n].unsqueeze(-1)).solution.flatten()
            ids[n, : rows.numel()] = experts[rows]
            weights[n, : rows.numel()] = solution.float()
        self.calls.append((ids, weights))


_PROBES = {"switch_transformers": OneHotProbe, "nllb-moe": DenseWeightsProbe, "llama4_text": ScaledInputProbe,
           "jetmoe": OutputSolveProbe, "dbrx": OutputSolveProbe}


def probe_experts(family: str, model, experts_module, top_k: int) -> ExpertsProbe:
    """Attach the probe that reads what ``experts_module`` was given in ``family``'s layout."""
    name = next(n for n, m in model.named_modules() if m is experts_module)
    return _PROBES.get(family, ExpertsProbe)(model, name, top_k)
