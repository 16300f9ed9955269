"""Load a Hugging Face MoE checkpoint (hub id or local folder) and its tokenizer for capture.

Same words as transformers: ``from_pretrained(name_or_path)``, ``dtype=``, ``device_map="auto"``,
``max_memory=``, ``trust_remote_code`` (off unless the user asks). Weights load straight onto the
device they run on (``device_map={"": device}``): a checkpoint larger than host memory captures on
one GPU, and the host never holds a copy of the model. Every way a load can fail that a user can cause
(a missing or unreadable path, a folder without a model, corrupt or incomplete weights, an
unreachable hub) becomes one :class:`RoutelensError` line naming the path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..bundled import data_dir as bundled_data_dir
from ..errors import InputError, RoutelensError
from .header import check_routing_config

DTYPES = ("float32", "bfloat16", "float16", "auto")

# "org/name" or "name" as the hub spells repository ids; anything else is a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


# ---------------------------------------------------------------------------- bundled data
def demo_model_path() -> Path:
    """``data/demo-moe``, the bundled trained Qwen3-MoE demo checkpoint (inside the package in a wheel).

    Raises:
        RoutelensError: the checkpoint is not there (a checkout or wheel without ``data/``).
    """
    path = bundled_data_dir() / "demo-moe"
    if not (path / "config.json").is_file():
        raise RoutelensError(
            f"the bundled demo checkpoint is missing ({path}): pass a model (hub id or checkpoint folder) to capture"
        )
    return path


def demo_corpus_path() -> Path:
    """``data/corpus/train.txt``, the bundled default text (Python standard-library source)."""
    path = bundled_data_dir() / "corpus" / "train.txt"
    if not path.is_file():
        raise RoutelensError(f"the bundled corpus is missing ({path}): pass --text FILE or --dataset NAME")
    return path


# ---------------------------------------------------------------------------- devices and dtypes
def resolve_device(device: str | None = None):
    """``torch.device`` to capture on: ``device`` if given, else CUDA when present, else CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"unknown --device '{device}' (use cpu, cuda or cuda:N)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device} asked for CUDA, but this machine has no CUDA device")
    return resolved


def resolve_dtype(dtype: str | None, device) -> Any:
    """Map a ``--dtype`` word to what ``from_pretrained(dtype=...)`` takes.

    ``None`` means float32 on CPU (half-precision matmuls are slow on most CPUs) and ``"auto"``
    (the checkpoint's own dtype) on GPUs.
    """
    import torch

    if dtype is None:
        return "auto" if getattr(device, "type", str(device)) != "cpu" else torch.float32
    if dtype not in DTYPES:
        raise InputError(f"unknown --dtype '{dtype}' (choose from {', '.join(DTYPES)})")
    return "auto" if dtype == "auto" else getattr(torch, dtype)


_MEMORY = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B|B)?$", re.IGNORECASE)


def parse_max_memory(text: str | None) -> dict[int | str, str] | None:
    """``--max-memory 0=70GiB,1=70GiB,cpu=100GiB`` → ``{0: "70GiB", 1: "70GiB", "cpu": "100GiB"}``.

    The dict ``from_pretrained(max_memory=...)`` takes with a device map: keys are GPU indices or
    ``cpu``; sizes are numbers with an optional unit (``B``, ``KB``, ``MiB``, ``GiB``, ...).

    Raises:
        InputError: an entry that is not ``DEVICE=SIZE``, an unknown device or a malformed size.

    Example:
        >>> parse_max_memory("0=70GiB,cpu=100GiB")
        {0: '70GiB', 'cpu': '100GiB'}
    """
    if text is None:
        return None
    limits: dict[int | str, str] = {}
    for entry in text.split(","):
        device, sep, size = (part.strip() for part in entry.partition("="))
        if not sep or not device or not size:
            raise InputError(f"--max-memory entry '{entry.strip()}' is not DEVICE=SIZE (e.g. 0=70GiB,cpu=100GiB)")
        if not _MEMORY.match(size):
            raise InputError(f"--max-memory size '{size}' for {device} is not a number with a unit such as GiB")
        key: int | str = int(device) if device.isdigit() else device.lower()
        if isinstance(key, str) and key not in ("cpu", "disk", "mps"):
            raise InputError(f"--max-memory device '{device}' is not a GPU index or cpu")
        limits[key] = size.replace(" ", "")
    return limits


def is_local_reference(name_or_path: str) -> bool:
    """True when ``name_or_path`` can only mean a local folder (exists, or is not a hub id)."""
    return Path(name_or_path).expanduser().exists() or not _HUB_ID.match(name_or_path)


def model_reference(name_or_path: str) -> str:
    """How a model is named in a trace: the absolute folder for local checkpoints, else the hub id."""
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser().resolve())
    return name_or_path


# ---------------------------------------------------------------------------- loading
def load_model(
    name_or_path: str | os.PathLike,
    dtype: str | None = None,
    device: str | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    max_memory: dict[int | str, str] | None = None,
):
    """Load an MoE checkpoint and its tokenizer, ready for inference (``model.eval()``).

    Args:
        name_or_path: a hub id (``Qwen/Qwen3-30B-A3B``) or a local checkpoint folder.
        dtype: ``float32`` | ``bfloat16`` | ``float16`` | ``auto`` (checkpoint dtype); None: see
            :func:`resolve_dtype`.
        device: where the whole model goes (``cpu``, ``cuda``, ``cuda:1``); ignored with ``device_map``.
        device_map: passed to ``from_pretrained`` (``"auto"`` spreads the layers over all GPUs and CPU
            memory with accelerate); inputs then go to the device of the input embeddings.
        trust_remote_code: run modeling code shipped with the checkpoint (off unless asked).
        max_memory: per-device limits for ``device_map`` (:func:`parse_max_memory`).

    Returns:
        ``(model, tokenizer)``. ``AutoModelForCausalLM`` for decoder-only models,
        ``AutoModelForSeq2SeqLM`` for encoder-decoder MoE (Switch Transformers).

    Raises:
        RoutelensError: a missing/unreadable path, a folder without a model, corrupt or incomplete
            weights, an unreachable hub, an unknown architecture (one line naming the path).
    """
    name = str(name_or_path)
    local_only = check_model_reference(name)  # the quick checks first: path, hub, config
    config = load_config(name, trust_remote_code=trust_remote_code, local_only=local_only)
    check_routing_config(config, name)  # before the tokenizer and weights: a top-k above E would fail mid-forward
    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code, local_files_only=local_only)
    model = load_weights(name, dtype=dtype, device=device, device_map=device_map, trust_remote_code=trust_remote_code,
                         max_memory=max_memory, config=config, local_only=local_only)
    return model, tokenizer


def check_model_reference(name_or_path: str | os.PathLike) -> bool:
    """Check that ``name_or_path`` names a model: a readable checkpoint folder, or a hub id the hub knows.

    Returns:
        True when the model must load from the Hugging Face cache only (the hub is unreachable but
        the cache holds it, :func:`hub_local_only`); False for a local folder or a reachable hub.

    Raises:
        RoutelensError: a missing or unreadable folder, a folder without config.json, a hub id the hub
            does not know, or an unreachable hub without a cached copy (one line naming the path).
    """
    name = str(name_or_path)
    _check_reference(name)
    return hub_local_only(name) if not Path(name).expanduser().exists() else False


def load_config(name_or_path: str | os.PathLike, trust_remote_code: bool = False, local_only: bool = False):
    """The model's transformers config only (``config.json``; no weights, no tokenizer).

    Args:
        local_only: read it from the Hugging Face cache only (:func:`check_model_reference`).

    Raises:
        RoutelensError: a missing folder, a folder without config.json, an unreachable hub, code that
            needs ``trust_remote_code`` (one line naming the path).
    """
    name = str(name_or_path)
    _check_reference(name)
    return _load_config(name, trust_remote_code, local_only)


def load_weights(
    name_or_path: str | os.PathLike,
    dtype: str | None = None,
    device: str | None = None,
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    max_memory: dict[int | str, str] | None = None,
    config=None,
    local_only: bool | None = None,
):
    """The model of :func:`load_model` without its tokenizer (same arguments and errors).

    Without ``device_map`` every weight is read from the checkpoint straight onto ``device``
    (``device_map={"": device}``), never staged in host memory; on the CPU it is read as usual.

    Args:
        config: the checkpoint's config when the caller already has it (:func:`load_config`, then
            :func:`~routelens.capture.header.check_routing_config`); None: read and checked here.
        local_only: from :func:`check_model_reference` (None: checked here).

    Raises:
        InputError: ``max_memory`` without ``device_map``.
        RoutelensError: as :func:`load_model`.
    """
    name = str(name_or_path)
    if max_memory is not None and device_map is None:
        raise InputError("--max-memory limits a --device-map: pass --device-map auto with it")
    if local_only is None:
        local_only = check_model_reference(name)
    if config is None:
        config = load_config(name, trust_remote_code, local_only=local_only)
        check_routing_config(config, name)  # before the weights: a top-k above E would fail mid-forward
    target = resolve_device(device) if device_map is None else None
    torch_dtype = resolve_dtype(dtype, target if target is not None else resolve_device(None))
    if target is not None and target.type != "cpu":
        device_map = {"": target}
    model = _load_weights(name, config, torch_dtype, device_map, trust_remote_code, max_memory, local_only)
    model.eval()
    return model


def load_tokenizer(name_or_path: str | os.PathLike, trust_remote_code: bool = False, local_files_only: bool = False):
    """``AutoTokenizer.from_pretrained`` with a one-line error when the checkpoint has no tokenizer."""
    from transformers import AutoTokenizer

    name = str(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, local_files_only=local_files_only)
    except Exception as exc:  # transformers raises OSError/ValueError/TypeError for broken tokenizers
        raise RoutelensError(f"cannot load the tokenizer of {name}: {_first_line(exc)}") from exc


def _check_reference(name: str) -> None:
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise RoutelensError(f"model path {name} is a file; pass the checkpoint folder that holds config.json")
        if not os.access(path, os.R_OK | os.X_OK):
            raise RoutelensError(f"cannot read model folder {name}: permission denied")
        config = path / "config.json"
        if not config.is_file():
            raise RoutelensError(f"{name} is not a model folder (no config.json)")
        if not os.access(config, os.R_OK):
            raise RoutelensError(f"cannot read {config}: permission denied")
        return
    if is_local_reference(name):
        raise RoutelensError(f"model folder not found: {name}")


def hub_local_only(name: str) -> bool:
    """Ask the Hugging Face hub about ``name`` once, without retries: load from the local cache only?

    transformers retries an unreachable hub five times with growing pauses (half a minute of
    warnings) before it fails; one ``model_info`` request tells at once whether the hub answers.

    Returns:
        False when the hub knows ``name`` (load as usual); True when the hub is unreachable (or
        ``HF_HUB_OFFLINE`` is set) but the cache holds the model (load from the cache, offline).

    Raises:
        RoutelensError: the hub does not know ``name``, or cannot be reached and the cache lacks it.
    """
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError

    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if constants.HF_HUB_OFFLINE:
        return True  # transformers then never touches the network, and says itself what the cache lacks
    try:
        HfApi().model_info(name, timeout=10)
        return False
    except RepositoryNotFoundError:
        raise RoutelensError(f"cannot load model '{name}': not a local folder, and the Hugging Face hub has no "
                             "such model (or it is private: log in with `hf auth login`)") from None
    except Exception as exc:  # no network, DNS, proxy, timeout, a hub error page
        if cached:
            return True
        raise RoutelensError(f"cannot load model '{name}': not a local folder, not in the Hugging Face cache, and "
                             f"the hub cannot be reached ({_first_line(exc)}): pass a checkpoint folder, or connect "
                             "and try again") from None


def _load_config(name: str, trust_remote_code: bool, local_only: bool = False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code, local_files_only=local_only)
    except Exception as exc:
        message = _first_line(exc)
        if "custom code" in str(exc) or "trust_remote_code" in str(exc):
            raise RoutelensError(
                f"{name} ships its own modeling code: pass --trust-remote-code to run it (only if you trust it)"
            ) from exc
        if "does not recognize this architecture" in str(exc):
            message += " (a newer transformers may know it)"
        if not Path(name).expanduser().exists():
            raise RoutelensError(
                f"cannot load model '{name}': not a local folder, and the Hugging Face hub lookup failed: {message}"
            ) from exc
        raise RoutelensError(f"cannot read the model config in {name}: {message}") from exc


def _load_weights(name: str, config, torch_dtype, device_map, trust_remote_code: bool,
                  max_memory: dict[int | str, str] | None = None, local_only: bool = False):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    classes = [AutoModelForSeq2SeqLM] if getattr(config, "is_encoder_decoder", False) else [AutoModelForCausalLM, AutoModelForSeq2SeqLM]
    kwargs: dict[str, Any] = {"config": config, "dtype": torch_dtype, "trust_remote_code": trust_remote_code,
                              "local_files_only": local_only}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if max_memory is not None:
        kwargs["max_memory"] = max_memory
    unsupported = None
    for auto_class in classes:
        try:
            model, info = auto_class.from_pretrained(name, output_loading_info=True, **kwargs)
        except ValueError as exc:
            if "Unrecognized configuration class" in str(exc):
                unsupported = exc
                continue  # try the next auto class
            raise RoutelensError(f"cannot load model weights from {name}: {_first_line(exc)}") from exc
        except Exception as exc:  # corrupt safetensors, missing weight files, out of memory...
            raise RoutelensError(f"cannot load model weights from {name}: {_first_line(exc)}") from exc
        missing = list(info.get("missing_keys") or [])
        if missing:
            raise RoutelensError(
                f"model weights in {name} lack {len(missing)} tensors (e.g. {sorted(missing)[0]}): "
                "the checkpoint is incomplete or belongs to another architecture"
            )
        return model
    raise RoutelensError(
        f"cannot load {name}: {type(config).__name__} is neither a causal LM nor a seq2seq LM ({_first_line(unsupported)})"
    )


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return text.splitlines()[0] if text else type(exc).__name__
