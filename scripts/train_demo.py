#!/usr/bin/env python3
"""Train the bundled demo Mixture-of-Experts model (data/demo-moe/).

Steps:
  1. train a byte-level BPE tokenizer (vocab 4096, ``<|endoftext|>`` as bos/eos/pad)
     on data/corpus/train.txt and wrap it in ``transformers.PreTrainedTokenizerFast``;
  2. build a small ``Qwen3MoeForCausalLM`` (4 layers, 64 experts, top-8) from a random
     init and train it on random 256-token windows of the packed, tokenized train
     text until a wall-clock budget (``--minutes``) or a number of passes over the
     train tokens (``--max-epochs``) is reached, whichever comes first, with AdamW,
     linear warmup then a cosine decay that ends at that limit, bf16 autocast on
     CUDA, residual dropout (training-only hooks) and a router load-balancing loss
     applied to each MoE layer separately;
  3. evaluate the loss / perplexity on data/corpus/heldout.txt (held-out modules)
     and the per-layer expert load there;
  4. save the model in bfloat16 (safetensors), the tokenizer and train_log.json.

The held-out loss is also checked every ``--eval-every-s`` seconds on a fixed
subset of held-out windows, and the lowest-loss weights are kept.  The corpus is
small (~0.8M tokens): a first 4-minute run at batch 64 without an epoch limit
passed over it 135 times and was best on held-out text after 12 passes, then
only memorised the train text.

Example (the command that built data/demo-moe/, on one H100)::

    PYTHONUNBUFFERED=1 python3 scripts/train_demo.py --out $OUT/demo-moe --minutes 4 --device cuda

Smoke test on CPU::

    python scripts/train_demo.py --out /tmp/demo-moe --minutes 0.05 --device cpu --batch-size 4

Only torch and transformers/tokenizers APIs available in torch 2.11 and
transformers 5.17 are used.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

EOS = "<|endoftext|>"


# --------------------------------------------------------------------------- data


def split_documents(text: str) -> list[str]:
    """The corpus files are '# file: <path>' headers separated by blank lines."""
    docs = [d.strip("\n") for d in re.split(r"\n\n(?=# file: )", text)]
    return [d for d in docs if d.strip()]


def train_tokenizer(docs: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok


def wrap_tokenizer(tok, model_max_length: int):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=None,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def token_stream(tok, docs: list[str], eos_id: int) -> torch.Tensor:
    """All documents tokenized and joined, each one followed by <|endoftext|>."""
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


def heldout_windows(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    n = stream.numel() // seq_len
    return stream[: n * seq_len].view(n, seq_len)


# --------------------------------------------------------------------------- model


def build_config(args, vocab_size: int, eos_id: int):
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=4 * args.hidden_size,  # dense MLP size; unused (every layer is MoE)
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=args.hidden_size // 4,
        hidden_act="silu",
        max_position_embeddings=1024,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_bias=False,
        attention_dropout=0.0,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        moe_intermediate_size=args.moe_intermediate_size,
        num_experts=args.num_experts,
        num_experts_per_tok=args.top_k,
        norm_topk_prob=True,
        output_router_logits=True,
        router_aux_loss_coef=args.aux_coef,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def _grouped_mm_fn():
    fn = getattr(F, "grouped_mm", None)
    if fn is None:
        fn = getattr(torch, "_grouped_mm", None)
    return fn


def fast_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """Training-time experts forward: sort token-expert pairs by expert, two grouped
    matmuls in bf16 on CUDA (weights cast per call, so the fp32 master weights get
    the gradients), un-sort and sum over the top-k.  Same maths as the library's."""
    gmm = _grouped_mm_fn()
    num_tokens, hidden = hidden_states.shape
    k = top_k_index.shape[-1]
    dt = torch.bfloat16 if hidden_states.is_cuda else hidden_states.dtype
    flat = top_k_index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    if flat.is_cuda:
        counts = torch.histc(flat.int(), bins=self.num_experts, min=0, max=self.num_experts - 1)
    else:
        counts = torch.bincount(flat, minlength=self.num_experts)
    offs = torch.cumsum(counts, dim=0).to(torch.int32)
    x = hidden_states[order // k].to(dt)
    w_up = self.gate_up_proj.to(dt)  # (E, 2I, H)
    w_down = self.down_proj.to(dt)  # (E, H, I)
    h = gmm(x, w_up.transpose(-2, -1), offs=offs)  # (S, 2I)
    gate, up = h.chunk(2, dim=-1)
    h = self.act_fn(gate) * up
    y = gmm(h, w_down.transpose(-2, -1), offs=offs)  # (S, H)
    y = y.float() * top_k_weights.reshape(-1)[order].float().unsqueeze(-1)
    out = torch.empty_like(y)
    out[order] = y
    return out.view(num_tokens, k, hidden).sum(dim=1).to(hidden_states.dtype)


def experts_modules(model):
    for m in model.modules():
        p = getattr(m, "gate_up_proj", None)
        if isinstance(p, torch.nn.Parameter) and p.dim() == 3 and hasattr(m, "down_proj"):
            yield m


def install_fast_experts(model, on: bool) -> None:
    for m in experts_modules(model):
        if on:
            m.forward = types.MethodType(fast_experts_forward, m)
        elif "forward" in m.__dict__:
            del m.forward


def check_fast_experts(model, device, vocab_size: int, autocast) -> str:
    """Compare the fast experts path with the library's on a small batch (forward and
    backward).  Returns 'fast' if it works and agrees, else 'library'."""
    if _grouped_mm_fn() is None:
        return "library"
    g = torch.Generator().manual_seed(1234)
    x = torch.randint(0, vocab_size, (2, 64), generator=g).to(device)
    try:
        install_fast_experts(model, False)
        with torch.no_grad(), autocast():
            ref = model(input_ids=x, output_router_logits=False).logits.float()
        install_fast_experts(model, True)
        with torch.no_grad(), autocast():
            got = model(input_ids=x, output_router_logits=False).logits.float()
        with autocast():
            loss = model(input_ids=x, labels=x, output_router_logits=True).loss
        loss.backward()
        grads_ok = all(
            m.gate_up_proj.grad is not None and torch.isfinite(m.gate_up_proj.grad).all() for m in experts_modules(model)
        )
        model.zero_grad(set_to_none=True)
        err = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
        print(f"[check] fast experts vs library: rel max err {err:.2e}, grads ok {grads_ok}", flush=True)
        if err < 5e-2 and grads_ok and torch.isfinite(got).all():
            return "fast"
    except Exception as e:  # noqa: BLE001 - any failure means: use the library path
        print(f"[check] fast experts path failed ({type(e).__name__}: {e}); using the library's", flush=True)
        model.zero_grad(set_to_none=True)
    install_fast_experts(model, False)
    return "library"


def add_dropout_hooks(model, p: float) -> list:
    """Residual dropout for training only: on the token embeddings and on the output of
    every attention and MoE block (Qwen3-MoE has no dropout of its own besides the
    attention-probability one).  Hooks are not saved with the model and are inactive
    in eval mode."""
    if p <= 0:
        return []

    def hook(module, inputs, output):
        if not module.training:
            return output
        if isinstance(output, tuple):
            return (F.dropout(output[0], p, True),) + tuple(output[1:])
        return F.dropout(output, p, True)

    base = model.model
    handles = [base.embed_tokens.register_forward_hook(hook)]
    for layer in base.layers:
        handles.append(layer.self_attn.register_forward_hook(hook))
        handles.append(layer.mlp.register_forward_hook(hook))
    return handles


def per_layer_balance_loss(router_logits, num_experts: int, top_k: int) -> torch.Tensor:
    """Switch-style load-balancing loss computed per MoE layer and averaged.

    For each layer: num_experts * sum_i f_i * P_i, with f_i the share of tokens that
    pick expert i among their top-k (sums to top_k) and P_i the mean router
    probability of expert i; a perfectly balanced layer scores top_k (same scale as
    transformers' load_balancing_loss_func).  The library's version pools the router
    logits of all layers before balancing, so one layer's overload can be offset by
    another's; balancing each layer on its own keeps every layer's experts in use."""
    losses = []
    for rl in router_logits:
        probs = rl.float().softmax(dim=-1)
        idx = probs.topk(top_k, dim=-1).indices.reshape(-1)
        counts = torch.zeros(num_experts, device=probs.device, dtype=torch.float32)
        counts.scatter_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
        f = counts / probs.shape[0]
        losses.append(num_experts * (f * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()


# --------------------------------------------------------------------------- eval


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, device, batch_size: int, autocast, routing: bool = False):
    """Mean next-token cross-entropy over `windows` (no aux loss) and, if asked,
    the per-layer count of top-k expert picks."""
    was_training = model.training
    model.eval()
    cfg = model.config
    total, count = 0.0, 0
    loads = None
    for i in range(0, windows.shape[0], batch_size):
        x = windows[i : i + batch_size].to(device)
        with autocast():
            out = model(input_ids=x, output_router_logits=routing, use_cache=False)
        logits = out.logits[:, :-1].float()
        tgt = x[:, 1:]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum").item()
        count += tgt.numel()
        if routing:
            if loads is None:
                loads = torch.zeros(len(out.router_logits), cfg.num_experts, dtype=torch.long)
            for layer, rl in enumerate(out.router_logits):
                idx = rl.float().topk(cfg.num_experts_per_tok, dim=-1).indices.reshape(-1).cpu()
                loads[layer] += torch.bincount(idx, minlength=cfg.num_experts)
    model.train(was_training)
    return total / max(count, 1), loads


def routing_summary(loads: torch.Tensor) -> list[dict]:
    out = []
    for layer, row in enumerate(loads.tolist()):
        t = torch.tensor(row, dtype=torch.float64)
        mean = t.mean().item()
        p = t / t.sum()
        ent = -(p[p > 0] * p[p > 0].log()).sum().item()
        out.append(
            {
                "layer": layer,
                "assignments": int(t.sum().item()),
                "max_over_mean": round(t.max().item() / mean, 4) if mean else None,
                "min_over_mean": round(t.min().item() / mean, 4) if mean else None,
                "unused_experts": int((t == 0).sum().item()),
                "normalized_entropy": round(ent / math.log(len(row)), 4),
            }
        )
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory for the checkpoint")
    ap.add_argument("--corpus", default="data/corpus", help="directory holding train.txt and heldout.txt")
    ap.add_argument("--minutes", type=float, default=4.0, help="wall-clock budget of the training loop")
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--max-epochs",
        type=float,
        default=24.0,
        help="also stop after this many passes over the train tokens (the corpus is small: "
        "longer runs only memorise it); the LR schedule ends at whichever limit comes first",
    )
    ap.add_argument("--dropout", type=float, default=0.1, help="residual dropout during training (hooks)")
    ap.add_argument(
        "--balance",
        choices=["per-layer", "global"],
        default="per-layer",
        help="per-layer: load-balancing loss per MoE layer (default); global: transformers' pooled one",
    )
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup-steps", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--aux-coef", type=float, default=0.02, help="router load-balancing loss coefficient")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--num-experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--moe-intermediate-size", type=int, default=56)
    ap.add_argument("--eval-every-s", type=float, default=10.0, help="seconds between held-out checks")
    ap.add_argument("--eval-windows", type=int, default=128, help="held-out windows used by the periodic check")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--experts-impl", choices=["auto", "fast", "library"], default="auto")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import transformers
    from transformers import Qwen3MoeForCausalLM

    t_start = time.time()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    use_cuda = device.type == "cuda"
    torch.manual_seed(args.seed)
    if use_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def autocast():
        if use_cuda:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return torch.autocast(device_type="cpu", enabled=False)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus)
    train_docs = split_documents((corpus / "train.txt").read_text(encoding="utf-8"))
    held_docs = split_documents((corpus / "heldout.txt").read_text(encoding="utf-8"))

    # 1. tokenizer
    t0 = time.time()
    tok = train_tokenizer(train_docs, args.vocab_size)
    eos_id = tok.token_to_id(EOS)
    hf_tok = wrap_tokenizer(tok, model_max_length=1024)
    train_ids = token_stream(tok, train_docs, eos_id)
    held_ids = token_stream(tok, held_docs, eos_id)
    train_bytes = sum(len(d.encode("utf-8")) for d in train_docs)
    held_bytes = sum(len(d.encode("utf-8")) for d in held_docs)
    print(
        f"[tokenizer] vocab {tok.get_vocab_size()} in {time.time() - t0:.1f}s; train {train_ids.numel():,} tokens "
        f"({train_bytes / train_ids.numel():.2f} bytes/token), heldout {held_ids.numel():,} tokens",
        flush=True,
    )

    # 2. model
    config = build_config(args, tok.get_vocab_size(), eos_id)
    model = Qwen3MoeForCausalLM(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[model] {n_params:,} parameters; device {device}", flush=True)

    if args.experts_impl == "library":
        experts_impl = "library"
    elif args.experts_impl == "fast":
        install_fast_experts(model, True)
        experts_impl = "fast"
    else:
        experts_impl = check_fast_experts(model, device, config.vocab_size, autocast)
    print(f"[model] experts path during training: {experts_impl}", flush=True)
    dropout_hooks = add_dropout_hooks(model, args.dropout)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "norm" not in name else no_decay).append(p)
    opt_kwargs = {"lr": args.lr, "betas": (0.9, 0.95), "eps": 1e-8}
    if use_cuda:
        opt_kwargs["fused"] = True
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        **opt_kwargs,
    )

    train_dev = train_ids.to(device)
    held_win = heldout_windows(held_ids, args.seq_len)
    # Fixed, evenly spaced subset of held-out windows for the periodic check.
    sel = torch.linspace(0, held_win.shape[0] - 1, min(args.eval_windows, held_win.shape[0])).long()
    check_win = held_win[sel]
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    offs = torch.arange(args.seq_len)
    max_start = train_ids.numel() - args.seq_len

    budget = args.minutes * 60.0
    max_tokens = int(args.max_epochs * train_ids.numel()) if args.max_epochs > 0 else None
    history, checks = [], []
    best = {"loss": float("inf"), "step": 0, "state": None}
    step, tokens_seen = 0, 0
    recent: list[torch.Tensor] = []
    model.train()
    if use_cuda:
        torch.cuda.synchronize()
    t_train = time.time()
    last_check = t_train

    def run_check(now_step):
        loss, _ = evaluate(model, check_win, device, args.batch_size, autocast)
        checks.append({"step": now_step, "elapsed_s": round(time.time() - t_train, 1), "heldout_subset_loss": round(loss, 4)})
        if loss < best["loss"]:
            best.update(loss=loss, step=now_step, state={k: v.detach().clone() for k, v in model.state_dict().items()})
        print(f"[check] step {now_step} heldout-subset loss {loss:.4f} (best {best['loss']:.4f} @ {best['step']})", flush=True)

    while True:
        elapsed = time.time() - t_train
        if elapsed >= budget or (max_tokens is not None and tokens_seen >= max_tokens):
            break
        progress = elapsed / budget
        if max_tokens is not None:
            progress = max(progress, tokens_seen / max_tokens)
        progress = min(progress, 1.0)
        if step < args.warmup_steps:
            lr = args.lr * (step + 1) / args.warmup_steps
        else:
            lr = args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, max_start + 1, (args.batch_size,), generator=gen)
        x = train_dev[(starts[:, None] + offs[None, :]).to(device)]
        with autocast():
            out = model(input_ids=x, output_router_logits=True, use_cache=False)
        logits = out.logits[:, :-1].float()
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        if args.balance == "per-layer":
            aux = per_layer_balance_loss(out.router_logits, config.num_experts, config.num_experts_per_tok)
        else:
            aux = out.aux_loss
        loss = ce + config.router_aux_loss_coef * aux
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += x.numel()
        recent.append(torch.stack([ce.detach(), aux.detach().float()]))
        if step % args.log_every == 0:
            vals = torch.stack(recent).float().mean(0).tolist()
            recent.clear()
            history.append(
                {"step": step, "elapsed_s": round(time.time() - t_train, 1), "lr": lr, "train_loss": round(vals[0], 4), "aux_loss": round(vals[1], 4)}
            )
            print(
                f"[train] step {step} tokens {tokens_seen:,} lr {lr:.2e} loss {vals[0]:.4f} aux {vals[1]:.4f} "
                f"({time.time() - t_train:.0f}s)",
                flush=True,
            )
        if time.time() - last_check >= args.eval_every_s:
            run_check(step)
            last_check = time.time()
    if use_cuda:
        torch.cuda.synchronize()
    train_wall = time.time() - t_train
    # train loss over the last logged window (or what is left of it)
    if recent:
        vals = torch.stack(recent).float().mean(0).tolist()
        history.append({"step": step, "elapsed_s": round(train_wall, 1), "lr": lr, "train_loss": round(vals[0], 4), "aux_loss": round(vals[1], 4)})
    final_train_loss = history[-1]["train_loss"] if history else float("nan")
    final_aux_loss = history[-1]["aux_loss"] if history else float("nan")

    run_check(step)
    selected = "final"
    if best["state"] is not None and best["step"] != step:
        model.load_state_dict(best["state"])
        selected = "best"
    print(f"[train] {step} steps, {tokens_seen:,} tokens in {train_wall:.1f}s; keeping the {selected} weights (step {best['step']})", flush=True)

    # 3. final held-out evaluation on exactly the weights that are saved (bf16-rounded)
    for h in dropout_hooks:
        h.remove()
    install_fast_experts(model, False)
    model.to(torch.bfloat16).float()
    model.eval()
    held_loss, loads = evaluate(model, held_win, device, args.batch_size, autocast, routing=True)
    routing = routing_summary(loads)
    train_win = heldout_windows(train_ids, args.seq_len)
    tsel = torch.linspace(0, train_win.shape[0] - 1, min(args.eval_windows, train_win.shape[0])).long()
    train_eval_loss, train_loads = evaluate(model, train_win[tsel], device, args.batch_size, autocast, routing=True)
    print(f"[train-eval] loss {train_eval_loss:.4f} on {tsel.numel()} train windows (no dropout)", flush=True)
    print(f"[heldout] loss {held_loss:.4f} ppl {math.exp(held_loss):.2f} on {held_win.shape[0]} windows", flush=True)
    for r in routing:
        print(f"[routing] layer {r['layer']}: max/mean {r['max_over_mean']}, unused {r['unused_experts']}", flush=True)

    # 4. save
    model.to(torch.bfloat16)
    model.config.output_router_logits = False  # training-only; plain inference should not add the aux loss
    model.save_pretrained(out_dir, safe_serialization=True)
    hf_tok.save_pretrained(out_dir)
    gpu = torch.cuda.get_device_name(device) if use_cuda else None
    log = {
        "model": "Qwen3MoeForCausalLM",
        "parameters": n_params,
        "config": {
            "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size,
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": config.num_key_value_heads,
            "head_dim": getattr(config, "head_dim", config.hidden_size // config.num_attention_heads),
            "num_experts": config.num_experts,
            "num_experts_per_tok": config.num_experts_per_tok,
            "moe_intermediate_size": config.moe_intermediate_size,
            "router_aux_loss_coef": config.router_aux_loss_coef,
            "max_position_embeddings": config.max_position_embeddings,
            "tie_word_embeddings": True,
            "norm_topk_prob": True,
        },
        "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]) if argv is None else None,
        "args": vars(args),
        "experts_path_during_training": experts_impl,
        "tokenizer": {"type": "byte-level BPE", "vocab_size": tok.get_vocab_size(), "special_tokens": [EOS]},
        "data": {
            "train_bytes": train_bytes,
            "train_tokens": int(train_ids.numel()),
            "heldout_bytes": held_bytes,
            "heldout_tokens": int(held_ids.numel()),
            "bytes_per_token_train": round(train_bytes / train_ids.numel(), 3),
            "heldout_windows": int(held_win.shape[0]),
        },
        "steps": step,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "tokens_seen": tokens_seen,
        "epochs_over_train": round(tokens_seen / train_ids.numel(), 2),
        "final_train_loss": final_train_loss,
        "final_aux_loss": final_aux_loss,
        "aux_loss_kind": args.balance,
        "train_eval_loss_selected": round(train_eval_loss, 4),
        "routing_train_subset_max_over_mean": max(r["max_over_mean"] for r in routing_summary(train_loads)),
        "selected_weights": selected,
        "selected_step": best["step"] if selected == "best" else step,
        "heldout_loss": round(held_loss, 4),
        "heldout_perplexity": round(math.exp(held_loss), 3),
        "heldout_bits_per_byte": round(held_loss * held_ids.numel() / held_bytes / math.log(2), 4),
        "routing_heldout": routing,
        "routing_heldout_max_over_mean": max(r["max_over_mean"] for r in routing),
        "routing_heldout_unused_experts": sum(r["unused_experts"] for r in routing),
        "train_wall_s": round(train_wall, 1),
        "total_wall_s": round(time.time() - t_start, 1),
        "device": str(device),
        "gpu": gpu,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "history": history,
        "heldout_checks": checks,
    }
    (out_dir / "train_log.json").write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
    print(f"[done] saved to {out_dir} in {time.time() - t_start:.1f}s total", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
