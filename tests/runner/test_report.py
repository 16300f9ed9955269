"""The bench report's plain-text table: plan names readable and unambiguous."""

from __future__ import annotations

from routelens.runner.report import short_labels


def test_plan_files_are_named_by_their_shortest_distinguishing_suffix():
    labels = ["contiguous", "runs/demo/plans/routelens-4gpu.json", "runs/demo/plans/eplb-4gpu.json",
              "runs/a/plans/r.json", "runs/b/plans/r.json"]
    assert short_labels(labels) == {
        "contiguous": "contiguous",
        "runs/demo/plans/routelens-4gpu.json": "routelens-4gpu.json",
        "runs/demo/plans/eplb-4gpu.json": "eplb-4gpu.json",
        "runs/a/plans/r.json": "a/plans/r.json",
        "runs/b/plans/r.json": "b/plans/r.json",
    }


def test_a_label_that_is_a_suffix_of_another_stays_whole():
    assert short_labels(["plans/r.json", "old/plans/r.json"]) == {"plans/r.json": "plans/r.json",
                                                                   "old/plans/r.json": "old/plans/r.json"}
    # two spellings of one file would read the same when shortened: both are shown as given
    assert short_labels(["./p.json", "p.json"]) == {"./p.json": "./p.json", "p.json": "p.json"}
