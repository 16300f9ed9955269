"""The capture loop: run token windows through an MoE model and record every router's choice.

For each batch of windows the model runs once under ``torch.inference_mode()`` with a
:class:`~routelens.capture.hooks.RouterRecorder` on its router sites. The recorded routing stays on
the device; after the forward each layer is converted (ids → int16, weights and logits → float16,
the trace's own dtypes) and copied to pinned host memory with ``non_blocking=True``. The copies of
batch ``i`` are waited for only after batch ``i + 1`` has been launched: one host sync per batch,
none per layer. Each batch is copied into a shard buffer (:mod:`routelens.capture.shards`); full
shards are checked (NaN/inf) and written by a background thread with
:class:`~routelens.trace.TraceWriter` (atomic, manifest updated after each shard) while the next
one fills, so host memory holds two shards at most and an interrupted run resumes where it
stopped (``resume=True``) without losing or repeating a token.

:func:`capture_from_path` packs the text in a background thread while the weights load, straight
onto the device they run on (:func:`routelens.capture.load.load_weights`).

Under ``torchrun`` (``WORLD_SIZE > 1``) each rank captures a contiguous block of windows into its own
shards and rank 0 merges the part manifests after a barrier (see :mod:`routelens.capture.distributed`).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import InputError, RoutelensError, TraceError
from ..formats import PART_FILE, PARTS_DIR, SHARD_DIR, TOKENIZER_FILE
from ..io import atomic_write
from ..lock import is_lock_file, lock_name, run_lock
from ..trace import MANIFEST, Trace, TraceWriter, merge_rank_parts, read_manifest_file
from ..trace_format import all_finite
from .distributed import DistContext, init_distributed, rank_windows
from .header import build_header, check_routing_config, config_summary
from .hooks import BatchRouting, HostCopy, RouterRecorder
from .shards import ShardBuffer, ShardPipeline, shard_tokens as shard_size
from .text import Windows

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
    shard_tokens: int | None = None,
    dist_context: DistContext | None = None,
    on_shard: Callable[[int], None] | None = None,
    phase_seconds: dict[str, float] | None = None,
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
        shard_tokens: tokens per shard file (rounded up to whole batches): the unit of resume
            (None: :func:`routelens.capture.shards.shard_tokens` decides, 65536 or fewer).
        dist_context: the torchrun job (default: :func:`init_distributed`).
        on_shard: called with the number of shards this session has written, after each one.
        phase_seconds: seconds spent before the capture loop (``load_s``, ``text_wait_s``), recorded
            in the manifest's ``stats`` next to its ``wall_s``.

    Returns:
        The finished :class:`~routelens.trace.Trace` (merged over ranks under torchrun).

    Raises:
        NotMoEError: the model has no router routelens knows.
        TraceError: ``out`` holds another run, or one with different settings.
        RoutelensError: NaN/inf routing weights, a router that did not run, a shard that could not
            be written (a full disk: one line, the shards written before intact).
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
                save_tokenizer(out, tokenizer)
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
        capacity = shard_size(shard_tokens, batch_size * seq_len, _routing_bytes_per_token(header))

        bar = _progress_bar(progress and ctx.rank == 0, total=mine.size * seq_len, initial=done * seq_len)
        shards = ShardPipeline(lambda buffer: _write_shard(writer, windows, header["layers"], out, buffer), capacity,
                               on_written=on_shard)
        start = time.perf_counter()
        tokens_before = writer.resume_state.num_tokens  # tokens/s counts this session's tokens only
        try:
            for index, routed in iter_batch_routing(model, routing, windows, todo, batch_size, save_logits):
                if save_logits and routed.logits is None:
                    raise RoutelensError(f"--save-logits: the {routing.family} routers of this model expose no logits")
                shards.add(index, routed)
                if bar is not None:
                    bar.update(index.size * seq_len)
            shards.close()
        except BaseException:
            shards.abort()  # a shard already being written completes (atomically) or not at all
            _record_stats(writer, prior_stats, time.perf_counter() - start, tokens_before, batch_size, model,
                          final=False, phase_seconds=phase_seconds)
            if bar is not None:
                bar.close()
            raise
        if bar is not None:
            bar.close()
        _record_stats(writer, prior_stats, time.perf_counter() - start, tokens_before, batch_size, model, final=True,
                      phase_seconds=phase_seconds)
        writer.close(complete=True)
        if ctx.world_size > 1:
            ctx.barrier()
            if ctx.rank == 0:
                merge_rank_parts(out, ctx.world_size)
            ctx.barrier()
        if ctx.rank == 0:
            save_tokenizer(out, tokenizer)
        return Trace.open(out)


def save_tokenizer(out: Path, tokenizer) -> Path | None:
    """Write the tokenizer's ``tokenizers`` JSON into the run (:data:`~routelens.formats.TOKENIZER_FILE`), once.

    Token strings in the analysis come from this copy (or a ``--tokenizer`` the user names), never
    from the model folder the manifest names. A tokenizer without a fast backend (sentencepiece
    only) is not copied: its run reports tokens by id unless ``--tokenizer`` is given. Written after
    the trace is complete, so an interrupted capture leaves nothing but its shards.
    """
    path = Path(out) / TOKENIZER_FILE
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if path.is_file() or backend is None or not hasattr(backend, "save"):
        return None
    return atomic_write(path, lambda tmp: backend.save(tmp))


def _routing_bytes_per_token(header: dict[str, Any]) -> int:
    """Host bytes one token's routing takes over all layers (int16 ids, float16 weights and logits)."""
    per_layer = 4 * int(header["top_k"])
    if header.get("has_logits"):
        return sum(per_layer + 2 * int(e) for e in header.get("num_experts_per_layer") or
                   [header["num_experts"]] * len(header["layers"]))
    return per_layer * len(header["layers"])


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


def _write_shard(writer: TraceWriter, windows: Windows, layers: list[str], out: Path, buffer: ShardBuffer) -> None:
    """Check and write one shard from its buffer (runs on the writer thread; NaN/inf is refused before anything is written).

    Raises:
        RoutelensError: NaN/inf routing weights.
        TraceError: the shard or manifest could not be written (a full disk, a file-size limit, a
            read-only folder): one line that says the earlier shards are intact and how to finish.
    """
    seq_len = windows.seq_len
    index = buffer.window_index
    routed = buffer.routing()
    _check_finite(routed.topk_weights, layers, index)
    try:
        writer.write_shard(
            token_ids=windows.token_ids[index].reshape(-1),
            seq_ids=np.repeat(index.astype(np.int32), seq_len),
            positions=np.tile(np.arange(seq_len, dtype=np.int32), index.size),
            topk_ids=routed.topk_ids,
            topk_weights=routed.topk_weights,
            router_logits=routed.logits,
            num_seqs=int(index.size),
        )
    except RoutelensError as exc:
        # writer.shards lists the shards written before this one (only this thread appends to it)
        kept = f"the {len(writer.shards)} shards written before are intact" if writer.shards else "no shard was written"
        raise TraceError(f"{exc}; {kept}: free some space, then finish the run with "
                         f"routelens capture ... --out {out} --resume") from None


def _check_finite(topk_weights: list[np.ndarray], layers: list[str], index: np.ndarray) -> None:
    for name, weights in zip(layers, topk_weights):
        if not all_finite(weights):
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
                  batch_size: int, model, final: bool, phase_seconds: dict[str, float] | None = None) -> None:
    """Wall time summed over sessions; tokens/s of this session alone (a resume's earlier shards took earlier
    time); this session's loading and text-packing seconds (``phase_seconds``) when given."""
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
        **{key: round(float(value), 3) for key, value in (phase_seconds or {}).items()},
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
    device_map: str | dict | None = None,
    max_memory: dict[int | str, str] | None = None,
    trust_remote_code: bool = False,
    save_logits: bool = False,
    resume: bool = False,
    progress: bool = True,
    shard_tokens: int | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> Trace:
    """Load ``model`` (hub id, folder, or None for the bundled demo), pack the text, capture.

    Without ``text`` or ``dataset`` the bundled corpus is used, its first ``BUNDLED_MAX_TOKENS``
    tokens unless ``max_tokens`` says otherwise. The text is tokenized in a background thread
    while the weights load (the tokenizer releases the GIL), so packing costs the capture nothing
    beyond what loading takes; the manifest's ``stats`` record ``load_s`` and ``text_wait_s`` (the
    seconds the capture still waited for the text after loading).

    The output folder is checked and locked before the model is loaded, so a wrong ``--out`` (or a
    second capture into the same one) fails fast. ``max_memory`` (per-device limits,
    :func:`routelens.capture.load.parse_max_memory`) goes with ``device_map``. See :func:`capture`
    for the other arguments and what is raised; :class:`~routelens.errors.RunBusyError` when another
    process writes ``out``.
    """
    from .adapters import find_router_sites
    from .load import (check_model_reference, demo_model_path, load_config, load_tokenizer, load_weights,
                       model_reference)
    from .text import resolve_source

    import torch

    wants_cuda = device is None or str(device).startswith("cuda")
    ctx = init_distributed(use_cuda=wants_cuda and torch.cuda.is_available())
    packing: _Packing | None = None
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
            started = time.perf_counter()
            local_only = check_model_reference(name)  # a wrong model fails before anything starts
            config = load_config(name, trust_remote_code=trust_remote_code, local_only=local_only)
            check_routing_config(config, name)  # a top-k above E would fail mid-forward
            tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code, local_files_only=local_only)
            packing = _Packing(source, tokenizer, seq_len, max_tokens)
            with _hf_progress_bars(progress and ctx.rank == 0):
                loaded = load_weights(name, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                                      trust_remote_code=trust_remote_code, config=config, local_only=local_only)
            routing = find_router_sites(loaded)  # before waiting for the text: a dense model fails fast
            _check_seq_len(loaded.config, seq_len)
            loaded_at = time.perf_counter()
            windows = packing.result()
            phases = {"load_s": loaded_at - started, "text_wait_s": time.perf_counter() - loaded_at}
            return capture(
                loaded, tokenizer, windows, out, routing=routing, model_id=model_reference(name),
                batch_size=batch_size, save_logits=save_logits, resume=resume, progress=progress,
                shard_tokens=shard_tokens, dist_context=ctx, on_shard=on_shard, phase_seconds=phases,
            )
    finally:
        if packing is not None:
            packing.stop()
        ctx.close()


class _Packing:
    """:func:`~routelens.capture.text.pack_windows` in a background thread; :meth:`result` waits for it.

    A daemon thread with a stop flag: when loading fails, :meth:`stop` makes it quit at its next
    batch of documents instead of tokenizing a large corpus for nothing.
    """

    def __init__(self, source, tokenizer, seq_len: int, max_tokens: int | None):
        from .text import pack_windows

        self._stop = threading.Event()
        self._outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                self._outcome["windows"] = pack_windows(source, tokenizer, seq_len=seq_len, max_tokens=max_tokens,
                                                        stop=self._stop)
            except BaseException as exc:  # re-raised in the caller's thread by result()
                self._outcome["error"] = exc

        self._thread = threading.Thread(target=run, name="routelens-pack", daemon=True)
        self._thread.start()

    def result(self) -> Windows:
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["windows"]

    def stop(self) -> None:
        self._stop.set()


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
