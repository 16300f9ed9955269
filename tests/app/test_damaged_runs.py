"""Every dashboard page with damaged runs next to a sound one: a one-line notice for the damaged run only,
never an exception, never a read outside the run folder (FIFOs there are watched), and "Runs compared"
still lists every run."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from routelens.cli import main

_spec = importlib.util.spec_from_file_location("damage", Path(__file__).resolve().parents[1] / "damage.py")
damage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(damage)

APP_MAIN = Path(__file__).resolve().parents[2] / "app" / "main.py"
PAGES = ["views/overview.py", "views/layers.py", "views/expert.py", "views/flow.py", "views/reroute.py",
         "views/placement.py", "views/compare.py", "views/runner.py"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """RUNS_DIR with a sound analysed run ``good`` and one damaged run per kind (all analysed while sound)."""
    root = tmp_path_factory.mktemp("damaged-runs")
    outside = damage.make_outside(root.parent / f"{root.name}-outside")
    runs_dir = root / "runs"
    good = damage.build_template(runs_dir / "good")
    assert main(["analyze", str(good), "--no-progress"]) == 0  # the damaged copies carry this analysis along
    outside_cases = damage.outside_damages(outside)
    cases = {
        "bad-ids": lambda run: damage.ids_out_of_range(run, shard=1, layer=1),
        "bad-shards-type": lambda run: damage.edit_manifest(run, lambda m: m.__setitem__("shards", 5)),
        "bad-e": lambda run: damage.edit_manifest(run, lambda m: m.__setitem__("num_experts", 4)),
        "bad-link": outside_cases["shard link to a FIFO outside"],
        "bad-manifest-link": outside_cases["manifest linked to a FIFO outside"],
        # without its analysis: a stored analysis stays current (the manifest is unchanged) and the Overview
        # would draw it without reading the damaged shard
        "bad-truncated": lambda run: ((run / "shards" / damage.SHARD_NAMES[0]).write_bytes(b"\x00" * 40),
                                      shutil.rmtree(run / "analysis")),
    }
    for name, apply in cases.items():
        apply(damage.fresh_copy(good, runs_dir / name))
    return {"dir": runs_dir, "outside": outside, "damaged": sorted(cases)}


@pytest.fixture
def app(runs, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ROUTELENS_RUNS_DIR", str(runs["dir"]))
    return AppTest.from_file(str(APP_MAIN), default_timeout=60)


def notices(at) -> list[str]:
    return [e.value for e in at.error] + [w.value for w in at.warning]


def test_every_page_shows_a_one_line_notice_for_a_run_whose_ids_do_not_fit(app, runs):
    with damage.FifoWatch(runs["outside"]) as watch:
        at = app.run()
        at.selectbox(key="run").set_value("bad-ids").run()
        for page in PAGES:
            if page != "views/overview.py":
                at.switch_page(page).run()
            assert not at.exception, (page, at.exception)
            for message in notices(at):
                assert "\n" not in message.strip(), (page, message)
            if page == "views/overview.py":
                assert any("layer 1 (model.layers.1.mlp.gate): expert id 8 outside [-1, 8)" in m
                           for m in notices(at)), notices(at)
        damage.wait_quiet()
    assert not watch.opened


@pytest.mark.parametrize("name", ["bad-shards-type", "bad-e", "bad-link", "bad-manifest-link", "bad-truncated"])
def test_a_damaged_run_shows_one_line_and_runs_compared_lists_all_the_others(app, runs, name):
    with damage.FifoWatch(runs["outside"]) as watch:
        at = app.run()
        at.selectbox(key="run").set_value(name).run()
        assert not at.exception, at.exception
        assert notices(at) and all("\n" not in m.strip() for m in notices(at)), notices(at)
        at.switch_page("views/compare.py").run()
        assert not at.exception, at.exception
        table = at.dataframe[0].value
        assert sorted(table["run"]) == sorted(["good"] + runs["damaged"])
        status = dict(zip(table["run"], table["status"]))
        assert status["good"] == "analysed"
        damage.wait_quiet()
    assert not watch.opened


def test_the_sound_run_still_works_next_to_damaged_ones(app, runs):
    at = app.run()
    at.selectbox(key="run").set_value("good").run()
    assert not at.exception and not at.error
    assert [m.label for m in at.metric][:3] == ["MoE layers", "Experts / layer", "Top-k"]
    at.switch_page("views/compare.py").run()
    status = dict(zip(at.dataframe[0].value["run"], at.dataframe[0].value["status"]))
    for name in ("bad-shards-type", "bad-link", "bad-manifest-link"):  # refused from the manifest alone
        assert status[name] not in ("analysed", "no analysis"), (name, status[name])
