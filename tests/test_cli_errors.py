"""Every user mistake around capture is one line ``routelens: error: ...``, exit code 2, nothing overwritten."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from routelens.capture.tiny import build_byte_tokenizer, build_tiny_moe
from routelens.cli import main


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from more threads, and a busy CI machine loses a lot to oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# A Mixture-of-Experts model shipped as remote code, with a router no adapter knows (class and
# attribute names unlike any transformers family): capture must say it found no router.
ODD_CONFIG = '''
from transformers import PretrainedConfig

class OddMoeConfig(PretrainedConfig):
    model_type = "odd_moe"

    def __init__(self, vocab_size=300, hidden_size=16, num_switch_experts=4, **kwargs):
        self.vocab_size, self.hidden_size, self.num_switch_experts = vocab_size, hidden_size, num_switch_experts
        super().__init__(**kwargs)
'''
ODD_MODEL = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput
from .configuration_odd import OddMoeConfig

class OddMoeForCausalLM(PreTrainedModel):
    config_class = OddMoeConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.switch = nn.Linear(config.hidden_size, config.num_switch_experts, bias=False)
        self.ffns = nn.ModuleList(nn.Linear(config.hidden_size, config.hidden_size) for _ in range(config.num_switch_experts))
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, **kwargs):
        h = self.embed(input_ids)
        best = self.switch(h).argmax(-1, keepdim=True)
        h = h + torch.stack([f(h) for f in self.ffns], -1).gather(-1, best.unsqueeze(-2).expand(*h.shape, 1)).squeeze(-1)
        return CausalLMOutput(logits=self.head(h))
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Checkpoint folders: a tiny MoE, a dense model, a NaN router, corrupt weights, an unknown remote-code MoE."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM, Qwen3Config

    root = tmp_path_factory.mktemp("models")
    moe = build_tiny_moe(root / "moe")
    dense = root / "dense"
    AutoModelForCausalLM.from_config(Qwen3Config(
        vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8)).save_pretrained(dense)
    build_byte_tokenizer().save_pretrained(dense)

    nan = root / "nan-router"
    shutil.copytree(moe, nan)
    weights = load_file(str(nan / "model.safetensors"))
    weights["model.layers.0.mlp.gate.weight"].fill_(float("nan"))
    save_file(weights, str(nan / "model.safetensors"), metadata={"format": "pt"})

    corrupt = root / "corrupt"
    shutil.copytree(moe, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])

    odd = root / "odd-moe"
    odd.mkdir()
    (odd / "configuration_odd.py").write_text(textwrap.dedent(ODD_CONFIG))
    (odd / "modeling_odd.py").write_text(textwrap.dedent(ODD_MODEL))
    (odd / "config.json").write_text(
        '{"model_type": "odd_moe", "architectures": ["OddMoeForCausalLM"], "vocab_size": 300, "hidden_size": 16,'
        ' "num_switch_experts": 4, "auto_map": {"AutoConfig": "configuration_odd.OddMoeConfig",'
        ' "AutoModelForCausalLM": "modeling_odd.OddMoeForCausalLM"}}'
    )
    build_byte_tokenizer().save_pretrained(odd)
    shapes = {"embed.weight": (300, 16), "switch.weight": (4, 16), "head.weight": (300, 16), "head.bias": (300,)}
    shapes.update({f"ffns.{i}.{n}": (16, 16) if n == "weight" else (16,) for i in range(4) for n in ("weight", "bias")})
    save_file({k: torch.randn(v) for k, v in shapes.items()}, str(odd / "model.safetensors"), metadata={"format": "pt"})

    text = root / "corpus.txt"
    text.write_text("def route(tokens, experts):\n    return experts[:2]\n" * 200)
    return {"moe": moe, "dense": dense, "nan": nan, "corrupt": corrupt, "odd": odd, "text": text}


def fails(capsys, argv: list[str], message: str) -> str:
    """Run ``routelens argv``: it must exit 2 with one stderr line containing ``message``."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("routelens: error: "), err
    assert message in err[0], err[0]
    return err[0]


def capture_args(model, out, text) -> list[str]:
    return ["capture", str(model), "--out", str(out), "--text", str(text), "--seq-len", "32", "--no-progress"]


def test_dense_model_is_not_moe(models, tmp_path, capsys):
    line = fails(capsys, capture_args(models["dense"], tmp_path / "run", models["text"]),
                 "has no Mixture-of-Experts router")
    assert "qwen3" in line
    assert not (tmp_path / "run").exists()


def test_missing_file_and_non_model_paths_are_named(models, tmp_path, capsys):
    text = models["text"]
    fails(capsys, capture_args(tmp_path / "nowhere", tmp_path / "run", text), f"model folder not found: {tmp_path / 'nowhere'}")
    fails(capsys, capture_args(text, tmp_path / "run", text), f"model path {text} is a file")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.txt").write_text("not a model")
    fails(capsys, capture_args(tmp_path / "notes", tmp_path / "run", text), "is not a model folder (no config.json)")
    fails(capsys, capture_args(models["corrupt"], tmp_path / "run", text),
          f"cannot load model weights from {models['corrupt']}")
    fails(capsys, capture_args(models["moe"], tmp_path / "run", tmp_path / "missing.txt"), "text file not found")
    assert not (tmp_path / "run").exists()


def test_nan_routing_weights_are_refused(models, tmp_path, capsys):
    fails(capsys, capture_args(models["nan"], tmp_path / "run", models["text"]), "NaN or inf")
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_output_folder_holding_another_run_or_other_files_is_not_overwritten(models, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(capture_args(models["moe"], out, models["text"])) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    fails(capsys, capture_args(models["moe"], out, models["text"]), "already holds a run: pass --resume")
    fails(capsys, capture_args(models["moe"], out, models["text"]) + ["--resume", "--seq-len", "16"],
          "seq_len was 32, now 16")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    fails(capsys, capture_args(models["moe"], other, models["text"]), "is not empty and holds no routelens trace")
    assert sorted(p.name for p in other.iterdir()) == ["cat.jpg"]


def test_info_on_a_corrupt_shard_or_a_non_trace(models, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(capture_args(models["moe"], out, models["text"])) == 0
    shard = next((out / "shards").iterdir())
    shard.write_bytes(b"\x00" * 64)
    fails(capsys, ["info", str(out)], f"shard shards/{shard.name}, layer 0 (model.layers.0.mlp.gate): corrupt or unreadable")
    fails(capsys, ["info", str(tmp_path / "nothing")], "no trace folder at")


def test_remote_code_is_off_unless_asked(models, tmp_path, capsys):
    fails(capsys, capture_args(models["odd"], tmp_path / "run", models["text"]),
          "ships its own modeling code: pass --trust-remote-code")


def test_unknown_moe_family_through_a_real_subprocess(models, tmp_path):
    """The installed ``routelens`` entry point: one stderr line, no traceback, exit code 2."""
    exe = Path(sys.executable).with_name("routelens")
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "routelens.cli"]
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "hf-modules"), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    run = subprocess.run(
        command + capture_args(models["odd"], tmp_path / "run", models["text"]) + ["--trust-remote-code"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("routelens: error: ") and "Traceback" not in run.stderr, run.stderr
    assert "model type 'odd_moe'" in lines[0] and "no Mixture-of-Experts router" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_config_choosing_more_experts_than_it_has_is_one_line(models, tmp_path, capsys):
    import json

    bad = tmp_path / "bad-k"
    shutil.copytree(models["moe"], bad)
    config = json.loads((bad / "config.json").read_text())
    experts = config["num_local_experts"]
    config["num_experts_per_tok"] = experts + 4
    (bad / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    fails(capsys, capture_args(bad, tmp_path / "run", models["text"]),
          f"chooses num_experts_per_tok={experts + 4} of num_experts={experts} experts")


def test_a_hub_id_that_cannot_be_fetched_is_one_line_without_retries(models, tmp_path, capfd, monkeypatch):
    """Offline here (the hub is unreachable), or online with no such model: one line either way, at once."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    started = time.perf_counter()
    assert main(capture_args("routelens-tests/no-such-moe-3f9a1c", tmp_path / "run", models["text"])) == 2
    assert time.perf_counter() - started < 30  # transformers' own retries would take about 25 s
    err = capfd.readouterr().err.strip().splitlines()  # fd level: the hub library logs through its own handlers
    assert len(err) == 1 and err[0].startswith("routelens: error: cannot load model 'routelens-tests/no-such-moe-3f9a1c'"), err
    assert "Retrying" not in err[0]
