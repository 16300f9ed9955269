"""One writer per run folder, between real processes: the second writer fails at once naming the first."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from routelens.cli import main
from routelens.lock import LOCK_FILE, run_lock
from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import Trace, write_trace

REPO = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent("""
    import sys
    from routelens.lock import run_lock
    with run_lock(sys.argv[1], "routelens capture"):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes our stdin (or kills us)
""")


def hold(folder: Path) -> subprocess.Popen:
    """Another process that holds ``folder``'s lock until its stdin closes."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("routelens: error: "), err
    return err[0]


def test_a_second_writer_fails_naming_the_first_and_can_write_once_it_is_gone(tmp_path, capsys):
    a = synthetic_trace_arrays(num_tokens=256, num_layers=2, num_experts=8, top_k=2, with_logits=True)
    source = write_trace(tmp_path / "source", a["header"], a["token_ids"], a["seq_ids"], a["positions"],
                         a["topk_ids"], a["topk_weights"], a["router_logits"])
    out = tmp_path / "rerouted"
    reroute = ["reroute", str(source.path), "--policy", "capacity-drop", "--gpus", "2", "--out", str(out), "--no-progress"]
    analyze = ["analyze", str(source.path), "--no-progress"]
    place = ["place", str(source.path), "--gpus", "2", "--method", "greedy", "--out", str(source.path / "plans" / "p.json"),
             "--no-progress"]
    holders = [hold(out), hold(source.path)]
    try:
        assert main(reroute) == 2
        line = one_error_line(capsys)
        assert f"{out} is being written by `routelens capture` (pid {holders[0].pid}, since " in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written next to the other writer
        for argv in (analyze, place):
            assert main(argv) == 2
            assert f"is being written by `routelens capture` (pid {holders[1].pid}" in one_error_line(capsys)
        assert not (source.path / "analysis").exists() and not (source.path / "plans").exists()
        assert main(["info", str(source.path)]) == 0  # readers take no lock
    finally:
        for holder in holders:
            holder.kill()  # killed, not closed: the kernel releases its lock
            holder.wait()
    for argv in (reroute, analyze, place):
        assert main(argv) == 0
    assert Trace.open(out).num_tokens == 256
    assert not (out / LOCK_FILE).exists() and not (source.path / LOCK_FILE).exists()


def test_a_capture_into_a_folder_another_process_writes_fails_before_loading_its_model(tmp_path, capsys):
    from routelens.capture.tiny import build_tiny_moe

    model = build_tiny_moe(tmp_path / "tiny")
    out = tmp_path / "run"
    holder = hold(out)
    capsys.readouterr()  # save_pretrained's progress bars
    try:
        assert main(["capture", str(model), "--out", str(out), "--seq-len", "32", "--max-tokens", "64",
                     "--device", "cpu", "--no-progress"]) == 2
        assert f"`routelens capture` (pid {holder.pid}" in one_error_line(capsys)
    finally:
        holder.stdin.close()  # a clean exit releases the lock too
        holder.wait()
    assert not out.exists()  # the holder created the folder and, leaving it empty, removed it


def test_the_lock_is_reentrant_in_one_process_and_refuses_a_link(tmp_path):
    run = tmp_path / "run"
    with run_lock(run, "outer"):
        with run_lock(run, "inner"):
            assert (run / LOCK_FILE).is_file()
        assert (run / LOCK_FILE).is_file()  # still held by the outer block
    assert not run.exists()
    run.mkdir()
    (run / LOCK_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Exception, match="symbolic link"):
        with run_lock(run, "x"):
            pass
    assert not (tmp_path / "elsewhere").exists()
