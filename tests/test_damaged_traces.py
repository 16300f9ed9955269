"""Every command that reads a trace, on damaged traces: it works or exits 2 with one line, never a traceback,
never a read outside the run folder (FIFOs there would be noticed), never a change to the trace.

Damages (tests/damage.py): manifest fields of any JSON value or missing, shard entries likewise,
E or k lies, tensors of the wrong dtype or shape or missing, expert ids out of range in one layer,
NaN weights, truncated shards, shard paths that leave the run (``..``, absolute, links to FIFOs
outside, a linked ``shards/`` folder), a linked or FIFO manifest. Commands run in this process
(``routelens.cli.main``) to stay fast; ``bench`` starts torchrun and is checked once.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routelens.cli import main

_spec = importlib.util.spec_from_file_location("damage", Path(__file__).with_name("damage.py"))
damage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(damage)

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "info": lambda run, out, env: ["info", str(run)],
    "check": lambda run, out, env: ["check", str(run)],
    "analyze": lambda run, out, env: ["analyze", str(run), "--no-progress"],
    "place": lambda run, out, env: ["place", str(run), "--gpus", "2", "--method", "greedy", "--out",
                                    str(out / "plan.json"), "--no-progress"],
    "plan-eval": lambda run, out, env: ["plan-eval", str(run), str(env["plan"]), "--baselines", "contiguous",
                                        "--no-progress"],
    "reroute": lambda run, out, env: ["reroute", str(run), "--policy", "capacity-drop", "--gpus", "2",
                                      "--out", str(out / "rerouted"), "--no-progress"],
    "compare": lambda run, out, env: ["compare", str(run), str(env["peer"]), "--no-progress"],
}
_counter = itertools.count()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The sound template, a sound peer run (analysed) for compare, a plan for plan-eval, FIFOs outside."""
    root = tmp_path_factory.mktemp("damaged")
    template = damage.build_template(root / "template")
    peer = damage.fresh_copy(template, root / "peer")
    assert main(["analyze", str(peer), "--no-progress"]) == 0
    assert main(["place", str(peer), "--gpus", "2", "--method", "greedy", "--out", str(root / "plan.json"),
                 "--no-progress"]) == 0
    return {"root": root, "template": template, "peer": peer, "plan": root / "plan.json",
            "outside": damage.make_outside(root / "outside")}


def run_everything(env, apply, label: str, capsys, commands=COMMANDS) -> dict[str, tuple[int, str]]:
    """Damage a fresh copy with ``apply``, run every command on it; check the rules; return rc and stderr per command."""
    n = next(_counter)
    run = damage.fresh_copy(env["template"], env["root"] / f"case{n}" / "run")
    apply(run)
    before = damage.tree_hash(run)
    results = {}
    capsys.readouterr()
    with damage.FifoWatch(env["outside"], run, run / "shards") as watch:
        for name, argv in commands.items():
            out = env["root"] / f"case{n}" / f"out-{name}"
            out.mkdir(parents=True)
            code = main(argv(run, out, env))  # an exception other than a user error fails the test right here
            captured = capsys.readouterr()
            assert code in (0, 2), (label, name, code, captured.err[-500:])
            if code == 2:
                lines = captured.err.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("routelens: error: "), (label, name, lines)
            results[name] = (code, captured.err.strip())
        damage.wait_quiet()
    assert not watch.opened, (label, "read outside the run folder or a FIFO", watch.opened)
    assert damage.tree_hash(run) == before, (label, "the trace was changed")
    return results


@pytest.mark.parametrize("case", ["ids out of range in layer 1 of shard 0", "E understated", "shards is a number",
                                  "path ../../../../etc/passwd", "shard link to a FIFO outside"])
def test_the_testers_cases_fail_every_command_with_one_line(env, capsys, case):
    applies = {
        "ids out of range in layer 1 of shard 0": lambda run: damage.ids_out_of_range(run, shard=0, layer=1),
        "E understated": lambda run: damage.edit_manifest(run, lambda m: m.__setitem__("num_experts", 4)),
        "shards is a number": lambda run: damage.edit_manifest(run, lambda m: m.__setitem__("shards", 5)),
        "path ../../../../etc/passwd": damage.outside_damages(env["outside"])["etc passwd path"],
        "shard link to a FIFO outside": damage.outside_damages(env["outside"])["shard link to a FIFO outside"],
    }
    expected = {
        "ids out of range in layer 1 of shard 0": "shard shards/r0-000000.safetensors, layer 1 (model.layers.1.mlp.gate): "
                                                  "expert id 8 outside [-1, 8)",
        "E understated": "shard shards/r0-000000.safetensors, layer 0 (model.layers.0.mlp.gate): expert id",
        "shards is a number": "'shards' must be a list",
        "path ../../../../etc/passwd": "shard path '../../../../etc/passwd' leaves the run's shards/ folder",
        "shard link to a FIFO outside": "outside the run folder",
    }
    results = run_everything(env, applies[case], case, capsys)
    for name, (code, err) in results.items():
        assert code == 2, (name, err)
        if case == "E understated" and name in ("plan-eval", "compare"):
            continue  # they refuse the run earlier: the plan, or the peer, is for 8 experts
        assert expected[case] in err, (name, err)


@settings(max_examples=int(os.environ.get("ROUTELENS_DAMAGE_EXAMPLES", "25")), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_damage_is_a_working_command_or_one_line_never_a_traceback(env, capsys, data):
    label, apply = data.draw(damage.damages(env["outside"]), label="damage")
    results = run_everything(env, apply, label, capsys)
    if results["check"][0] == 0:  # check says sound: then the commands that need nothing more work on it
        # (reroute needs router logits, plan-eval and compare a plan or a peer of the same E)
        assert all(results[name][0] == 0 for name in ("info", "analyze", "place")), (label, results)


def test_bench_on_a_damaged_trace_exits_2_with_one_line(env, tmp_path):
    run = damage.fresh_copy(env["template"], tmp_path / "run")
    damage.ids_out_of_range(run, shard=0, layer=0)
    env_vars = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-m", "routelens.cli", "bench", str(run), "contiguous",
                           "--gpus", "2", "--backend", "gloo", "--repeats", "1", "--warmup", "0", "--hidden-size", "16"],
                          capture_output=True, text=True, env=env_vars, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "layer 0 (model.layers.0.mlp.gate): expert id 8 outside [-1, 8)" in lines[0], lines
