"""Tiny random-init MoE checkpoints with a byte-level tokenizer, for tests and benchmarks.

:func:`build_tiny_moe` writes a real ``transformers`` checkpoint folder (``config.json``,
``model.safetensors``, ``tokenizer.json``) that ``from_pretrained`` and ``routelens capture`` load
like any hub model. The weights are random, so the routing carries no meaning; the model code,
router modules and file layout are the real ones. Never use it to draw conclusions about MoE models.
"""

from __future__ import annotations

import os
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"

# A few lines of text so the byte-level BPE learns some merges (any text would do).
_TOKENIZER_TEXT = (
    "def route(tokens, experts, top_k):\n"
    "    scores = [score(t, e) for e in experts]\n"
    "    return sorted(range(len(scores)), key=scores.__getitem__)[-top_k:]\n\n"
    "The quick brown fox jumps over the lazy dog. Mixture-of-Experts models send each token to a few experts.\n"
)


def build_byte_tokenizer(vocab_size: int = 300, text: str | None = None):
    """A byte-level BPE ``PreTrainedTokenizerFast`` (256 byte tokens + merges + ``<|endoftext|>``).

    Every string is encodable (byte fallback), like the GPT-2/Qwen tokenizers.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text or _TOKENIZER_TEXT], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN)


def tiny_qwen3_moe_config(
    vocab_size: int = 320,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_experts: int = 8,
    top_k: int = 2,
    **overrides,
):
    """A ``Qwen3MoeConfig`` small enough to run thousands of tokens per second on one CPU core."""
    from transformers import Qwen3MoeConfig

    fields = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        moe_intermediate_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        num_experts=num_experts,
        num_experts_per_tok=top_k,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=True,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    fields.update(overrides)
    return Qwen3MoeConfig(**fields)


def build_tiny_moe(path: str | os.PathLike, config=None, seed: int = 0, router_std: float = 0.5) -> Path:
    """Save a random-init MoE causal LM (default: tiny Qwen3-MoE) and its tokenizer to ``path``.

    Args:
        config: a transformers config of any ``AutoModelForCausalLM`` family (default
            :func:`tiny_qwen3_moe_config`); its ``vocab_size`` must be >= 257.
        seed: torch seed of the random init (same seed → same weights).
        router_std: std of the router weights, larger than the usual 0.02 init so that tokens spread
            over many experts instead of all picking the same near-tie.

    Returns:
        ``path``, a folder ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer`` load.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    config = config or tiny_qwen3_moe_config()
    tokenizer = build_byte_tokenizer(vocab_size=min(int(config.vocab_size), 300))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            # router weights: ".gate.weight" (Qwen/Mixtral/OLMoE) or ".router.weight"
            if name.endswith((".gate.weight", ".router.weight")) and param.dim() == 2:
                param.normal_(0.0, router_std)
    model.eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
