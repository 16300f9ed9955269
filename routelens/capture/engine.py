"""The capture loop: run token windows through an MoE model and record every router's choice.

For each batch of windows the model runs once under ``torch.inference_mode()`` with a
:class:`~routelens.capture.hooks.RouterRecorder` on its router sites. The recorded routing stays on
the device; after the forward each layer is converted (ids → int16, weights → float32, logits →
float16) and copied to pinned host memory with ``non_blocking=True``. The copies of batch ``i``
are waited for only after batch ``i + 1`` has been launched: one host sync per batch, none per
layer. Batches are grouped into shards of about ``shard_tokens`` tokens, written by a background
thread with :class:`~routelens.trace.TraceWriter` (atomic, manifest updated after each shard), so
an interrupted run resumes where it stopped (``resume=True``) without losing or repeating a token.

Under ``torchrun`` (``WORLD_SIZE > 1``) each rank captures a contiguous block of windows into its own
shards and rank 0 merges the part manifests after a barrier (see :mod:`routelens.capture.distributed`).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import InputError, RoutelensError, TraceError
from ..formats import PART_FILE, PARTS_DIR, SHARD_DIR
from ..lock import is_lock_file, lock_name, run_lock
from ..trace import MANIFEST, Trace, TraceWriter, merge_rank_parts, read_manifest_file
from .distributed import DistContext, init_distributed, rank_windows
from .header import build_header, config_summary
from .hooks import BatchRouting, HostCopy, RouterRecorder
from .text import Windows

DEFAULT_SHARD_TOKENS = 65536
# Without --text/--dataset/--max-tokens, capture this much of the bundled corpus (its 817k tokens
# would take minutes on a laptop CPU; 65k tokens give every demo expert thousands of tokens).
BUNDLED_MAX_TOKENS = 65536


def check_output_folder(out: str | os.PathLike, resume: bool, world_size: int = 1) -> None:
    """Refuse, before any model is loaded, an output folder that a capture must not write into."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    if not out.is_dir():
        return
    parts = sorted((out / PARTS_DIR).glob(PART_FILE.format(rank="*")))
    has_run = (out / MANIFEST).is_file() or bool(parts)
    if has_run and not resume:
        raise TraceError(f"output folder {out} already holds a run: pass --resume to continue it, or choose another --out")
    if resume and parts and world_size == 1 and not (out / MANIFEST).is_file():
        raise TraceError(
            f"{out} is an unfinished torchrun capture with {len(parts)} processes: resume it with "
            f"torchrun --nproc-per-node {len(parts)}"
        )
    if not has_run and any(p.name not in (SHARD_DIR, PARTS_DIR) and not is_lock_file(p.name) for p in out.iterdir()):
        raise TraceError(f"output folder {out} is not empty and holds no routelens trace; choose another --out")


# ---------------------------------------------------------------------------- the loop
def capture(
    model,
    tokenizer,
    windows: Windows,
    out: str | os.PathLike,
    *,
    routing=None,
    model_id: str | None = None,
    batch_size: int = 8,
    save_logits: bool = False,
    resume: bool = False,
    progress: bool = True,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    dist_context: DistContext | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> Trace:
    """Capture the routing of every token of ``windows`` into a trace folder ``out``.

    Args:
        model: a loaded transformers MoE model (eval mode), on one device or spread by a device map.
        tokenizer: its tokenizer (recorded in the manifest).
        windows: ``[S, L]`` token windows from :func:`routelens.capture.text.pack_windows`.
        out: the run folder to write.
        routing: the model's router sites (default: ``find_router_sites(model)``).
        model_id: how the manifest names the model (default: ``model.config.name_or_path``).
        batch_size: windows per forward pass.
        save_logits: also record the ``[N, E]`` router logits of every layer.
        resume: continue the run already in ``out`` (its settings must match), skipping the windows
            it holds; a finished run is returned as is.
        shard_tokens: tokens per shard file (rounded up to whole batches): the unit of resume.
        dist_context: the torchrun job (default: :func:`init_distributed`).
        on_shard: called with the number of shards this session has written, after each one.

    Returns:
        The finished :class:`~routelens.trace.Trace` (merged over ranks under torchrun).

    Raises:
        NotMoEError: the model has no router routelens knows.
        TraceError: ``out`` holds another run, or one with different settings.
        RoutelensError: NaN/inf routing weights, a router that did not run.
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    if routing is None:
        from .adapters import find_router_sites

        routing = find_router_sites(model)
    ctx = dist_context or init_distributed()
    model_id = model_id or str(getattr(model.config, "name_or_path", "") or type(model).__name__)
    header = build_header(model, tokenizer, routing, windows, model_id=model_id, save_logits=save_logits,
                          world_size=ctx.world_size)
    out = Path(out)
    with run_lock(out, "routelens capture", lock_name(ctx.rank)):  # one writer per run folder
        check_output_folder(out, resume, ctx.world_size)
        if resume:
            _check_resume_settings(out, header, ctx)
            if ctx.world_size == 1 and _is_finished(out, windows.num_windows):
                return Trace.open(out)  # nothing to add: leave the manifest (and caches keyed on it) untouched
        ctx.barrier()  # every rank has checked --out before any rank writes into it
        writer = TraceWriter(out, header, resume=resume, rank=ctx.rank, world_size=ctx.world_size)
        prior_stats = _prior_stats(out, ctx)
        mine = rank_windows(windows.num_windows, ctx.rank, ctx.world_size)
        done = writer.resume_state.num_sequences
        if done > mine.size:
            raise TraceError(f"cannot resume {out}: it holds {done} windows for rank {ctx.rank}, more than the {mine.size} it should")
        todo = mine[done:]
        seq_len = windows.seq_len
        batches_per_shard = max(1, -(-shard_tokens // (batch_size * seq_len)))

        bar = _progress_bar(progress and ctx.rank == 0, total=mine.size * seq_len, initial=done * seq_len)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="routelens-shard")
        pending_write: Future | None = None
        shards_written = 0
        group: list[tuple[np.ndarray, BatchRouting]] = []
        start = time.perf_counter()
        tokens_before = writer.resume_state.num_tokens  # tokens/s counts this session's tokens only

        def finish_write() -> None:
            nonlocal pending_write, shards_written
            if pending_write is not None:
                write, pending_write = pending_write, None
                try:
                    write.result()
                except RoutelensError as exc:  # a full disk, a file-size limit, a read-only folder
                    kept = (f"the {len(writer.shards)} shards written before are intact" if writer.shards
                            else "no shard was written")
                    raise TraceError(f"{exc}; {kept}: free some space, then finish the run with "
                                     f"routelens capture ... --out {out} --resume") from None
                shards_written += 1
                if on_shard is not None:
                    on_shard(shards_written)

        def flush() -> None:
            nonlocal pending_write, group
            if group:
                finish_write()  # at most one shard in flight: bounded memory, errors surface in order
                pending_write = pool.submit(_write_group, writer, windows, group)
                group = []

        try:
            for index, routed in iter_batch_routing(model, routing, windows, todo, batch_size, save_logits):
                _check_finite(routed.topk_weights, header["layers"], index)
                if save_logits and routed.logits is None:
                    raise RoutelensError(f"--save-logits: the {routing.family} routers of this model expose no logits")
                group.append((index, routed))
                if bar is not None:
                    bar.update(index.size * seq_len)
                if len(group) >= batches_per_shard:
                    flush()
            flush()
            finish_write()
        except BaseException:
            pool.shutdown(wait=True)  # a shard already being written completes (atomically) or not at all
            _record_stats(writer, prior_stats, time.perf_counter() - start, tokens_before, batch_size, model, final=False)
            if bar is not None:
                bar.close()
            raise
        pool.shutdown(wait=True)
        if bar is not None:
            bar.close()
        _record_stats(writer, prior_stats, time.perf_counter() - start, tokens_before, batch_size, model, final=True)
        writer.close(complete=True)
        if ctx.world_size > 1:
            ctx.barrier()
            if ctx.rank == 0:
                merge_rank_parts(out, ctx.world_size)
            ctx.barrier()
        return Trace.open(out)


def iter_batch_routing(
    model, routing, windows: Windows, indices: np.ndarray, batch_size: int, save_logits: bool = False
) -> Iterator[tuple[np.ndarray, BatchRouting]]:
    """Run ``windows.token_ids[indices]`` through ``model`` in batches; yield each batch's routing on the host.

    Yields:
        ``(index, routing)``: ``index`` ``[B]`` the windows of the batch, ``routing`` their
        :class:`BatchRouting` (per layer ``[B * L, k]`` ids and weights, token ``b * L + l`` is
        position ``l`` of window ``index[b]``).

    The host copies of batch ``i`` are waited for after batch ``i + 1`` has been launched, so the
    GPU never idles on them; the router hooks are removed when the iteration ends or is abandoned.
    """
    import torch

    forward = model_forward(model)
    input_device = model_input_device(model)
    with torch.inference_mode(), RouterRecorder(routing.sites, keep_logits=save_logits) as recorder:
        in_flight: tuple[np.ndarray, HostCopy] | None = None
        for first in range(0, len(indices), batch_size):
            index = indices[first:first + batch_size]
            input_ids = torch.from_numpy(windows.token_ids[index].astype(np.int64)).to(input_device)
            forward(input_ids)
            copy = HostCopy(recorder.take(expected_tokens=input_ids.numel()))
            if in_flight is not None:
                yield in_flight[0], in_flight[1].result()
            in_flight = (index, copy)
        if in_flight is not None:
            yield in_flight[0], in_flight[1].result()


def _write_group(writer: TraceWriter, windows: Windows, group: list[tuple[np.ndarray, BatchRouting]]) -> None:
    """Write the batches of ``group`` as one shard (runs on the writer thread)."""
    seq_len = windows.seq_len
    index = np.concatenate([g[0] for g in group])
    batches = [g[1] for g in group]
    num_layers = len(batches[0].topk_ids)
    logits = None
    if batches[0].logits is not None:
        logits = [np.concatenate([b.logits[j] for b in batches]) for j in range(num_layers)]
    writer.write_shard(
        token_ids=windows.token_ids[index].reshape(-1),
        seq_ids=np.repeat(index.astype(np.int32), seq_len),
        positions=np.tile(np.arange(seq_len, dtype=np.int32), index.size),
        topk_ids=[np.concatenate([b.topk_ids[j] for b in batches]) for j in range(num_layers)],
        topk_weights=[np.concatenate([b.topk_weights[j] for b in batches]) for j in range(num_layers)],
        router_logits=logits,
        num_seqs=int(index.size),
    )


def _check_finite(topk_weights: list[np.ndarray], layers: list[str], index: np.ndarray) -> None:
    for name, weights in zip(layers, topk_weights):
        if not np.isfinite(weights).all():
            raise RoutelensError(
                f"routing weights at {name} are NaN or inf for windows {int(index[0])}-{int(index[-1])}: "
                "the model's numbers overflowed or its weights are corrupt (try --dtype float32)"
            )


def model_forward(model) -> Callable[[Any], Any]:
    """One forward pass over ``input_ids`` ``[B, L]``, computing no more LM-head logits than needed."""
    params = inspect.signature(model.forward).parameters
    if getattr(model.config, "is_encoder_decoder", False):
        # Encoder-decoder MoE (Switch): the window is both the encoder input and the teacher-forced
        # decoder input, so every encoder and decoder router sees the same B * L tokens.
        return lambda ids: model(input_ids=ids, decoder_input_ids=ids, use_cache=False)
    kwargs: dict[str, Any] = {}
    if "use_cache" in params:
        kwargs["use_cache"] = False
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1  # skip the [B, L, vocab] LM-head output nobody reads
    return lambda ids: model(input_ids=ids, **kwargs)


def model_input_device(model):
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        device = embeddings.weight.device
        if device.type != "meta":
            return device
    return next(model.parameters()).device


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, desc="capture", dynamic_ncols=True)


def _existing_manifest_path(out: Path, ctx: DistContext) -> Path:
    return out / MANIFEST if ctx.world_size == 1 else out / PARTS_DIR / PART_FILE.format(rank=ctx.rank)


def _check_resume_settings(out: Path, header: dict[str, Any], ctx: DistContext) -> None:
    """Name the settings that differ when a resume is refused (TraceWriter refuses it too)."""
    path = _existing_manifest_path(out, ctx)
    if not path.is_file():
        return
    existing = read_manifest_file(path)
    old, new = existing.get("settings") or {}, header["settings"]
    changed = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if existing.get("layers") != header["layers"]:
        changed.insert(0, "layers")
    if changed:
        diffs = "; ".join(f"{key} was {_short(old.get(key))}, now {_short(new.get(key))}" for key in changed[:4])
        raise TraceError(f"cannot resume {out}: it was captured with other settings ({diffs})")


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) > 40 else text


def _is_finished(out: Path, num_windows: int) -> bool:
    """The run in ``out`` is complete and holds all ``num_windows`` windows."""
    if not (out / MANIFEST).is_file():
        return False  # --resume on a new folder starts it
    manifest = read_manifest_file(out / MANIFEST)
    return bool(manifest.get("complete")) and manifest.get("num_sequences") == num_windows


def _prior_stats(out: Path, ctx: DistContext) -> dict[str, Any]:
    path = _existing_manifest_path(out, ctx)
    if not path.is_file():
        return {}
    stats = read_manifest_file(path).get("stats", {})
    return stats if isinstance(stats, dict) else {}


def _record_stats(writer: TraceWriter, prior: dict[str, Any], session_s: float, tokens_before: int,
                  batch_size: int, model, final: bool) -> None:
    """Wall time summed over sessions; tokens/s of this session alone (a resume's earlier shards took earlier time)."""
    wall_s = _number(prior.get("wall_s")) + session_s
    session_tokens = writer.resume_state.num_tokens - tokens_before
    writer.update_stats(
        wall_s=round(wall_s, 3),
        session_s=round(session_s, 3),
        session_tokens=int(session_tokens),
        tokens_per_s=round(session_tokens / session_s, 1) if session_s > 0 and session_tokens > 0 else None,
        sessions=int(_number(prior.get("sessions"))) + 1,
        batch_size=batch_size,
        device=str(model_input_device(model)),
    )
    if not final and writer.shards:
        try:
            writer.close(complete=False)  # keep the stats of an interrupted session
        except Exception:
            pass


def _number(value: Any) -> float:
    """A stored statistic, or 0 when it is missing or not a number (a damaged manifest)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


# ---------------------------------------------------------------------------- from a path
def capture_from_path(
    model: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    text: str | os.PathLike | None = None,
    dataset: str | None = None,
    max_tokens: int | None = None,
    seq_len: int = 256,
    batch_size: int = 8,
    dtype: str | None = None,
    device: str | None = None,
    device_map: str | None = None,
    trust_remote_code: bool = False,
    save_logits: bool = False,
    resume: bool = False,
    progress: bool = True,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    on_shard: Callable[[int], None] | None = None,
) -> Trace:
    """Load ``model`` (hub id, folder, or None for the bundled demo), pack the text, capture.

    Without ``text`` or ``dataset`` the bundled corpus is used, its first ``BUNDLED_MAX_TOKENS``
    tokens unless ``max_tokens`` says otherwise.

    The output folder is checked and locked before the model is loaded, so a wrong ``--out`` (or a
    second capture into the same one) fails fast. See :func:`capture` for the other arguments and
    what is raised; :class:`~routelens.errors.RunBusyError` when another process writes ``out``.
    """
    from .adapters import find_router_sites
    from .load import demo_model_path, load_model, model_reference
    from .text import pack_windows, resolve_source

    import torch

    wants_cuda = device is None or str(device).startswith("cuda")
    ctx = init_distributed(use_cuda=wants_cuda and torch.cuda.is_available())
    try:
        check_output_folder(out, resume, ctx.world_size)
        if ctx.world_size > 1 and device_map is not None:
            raise InputError("--device-map cannot be combined with torchrun: each process holds a whole model copy")
        if ctx.world_size > 1:
            device = ctx.device  # one GPU per process (cuda:LOCAL_RANK), or the CPU
        name = str(model) if model is not None else str(demo_model_path())
        source = resolve_source(text=text, dataset=dataset)
        if source.kind == "bundled" and max_tokens is None:
            max_tokens = BUNDLED_MAX_TOKENS
        with run_lock(out, "routelens capture", lock_name(ctx.rank)):  # held again (re-entrant) by capture()
            with _hf_progress_bars(progress and ctx.rank == 0):
                loaded, tokenizer = load_model(name, dtype=dtype, device=device, device_map=device_map,
                                               trust_remote_code=trust_remote_code)
            routing = find_router_sites(loaded)  # before reading the text: a dense model fails fast
            windows = pack_windows(source, tokenizer, seq_len=seq_len, max_tokens=max_tokens)
            _check_seq_len(loaded.config, seq_len)
            return capture(
                loaded, tokenizer, windows, out, routing=routing, model_id=model_reference(name),
                batch_size=batch_size, save_logits=save_logits, resume=resume, progress=progress,
                shard_tokens=shard_tokens, dist_context=ctx, on_shard=on_shard,
            )
    finally:
        ctx.close()


@contextlib.contextmanager
def _hf_progress_bars(enabled: bool):
    """transformers' own bars (loading weights) follow ``--no-progress`` too."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if was_enabled and not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def _check_seq_len(config, seq_len: int) -> None:
    limit = config_summary(config).get("max_position_embeddings")
    if isinstance(limit, int) and seq_len > limit:
        raise InputError(f"--seq-len {seq_len} exceeds the model's context of {limit} positions")
