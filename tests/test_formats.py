"""The file-format registry: every format round-trips through its writer and reader, and every bad file
(truncated, foreign, of another version, lacking a key, NaN) is refused with a one-line error of the
format's own class."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routelens.errors import PlanError, ResultFileError, RoutelensError, TraceError
from routelens.formats import ANALYSIS, BENCH, CALIBRATION, FORMATS, PLAN, SCHEDULE, TRACE, TRADEOFF, FileFormat

# A value of each required key's type, so a body passes the check.
_SAMPLE = {list: [], dict: {}, int: 3, str: "contiguous", (int, float): 1.5}
_JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8)
                     | st.floats(allow_nan=False, allow_infinity=False),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                     max_leaves=6)
_BODIES = st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in ("format", "version")), _JSON,
                          max_size=5)
_ANY_FORMAT = st.sampled_from(list(FORMATS.values()))
# Correctness only: no per-example deadline or generation-speed check (the suite runs on busy 2-core machines;
# timing belongs in benchmarks/). The tmp_path fixture is shared by the examples, which each overwrite one file.
_UNTIMED = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}


def _valid_body(fmt: FileFormat, extra: dict) -> dict:
    return {**extra, **{key: _SAMPLE[kind] for key, kind in fmt.required.items()}}


def test_the_registry_holds_seven_formats_with_distinct_names_and_files():
    assert set(FORMATS) == {"routelens-trace", "routelens-plan", "routelens-analysis", "routelens-reroute-eval",
                            "routelens-bench", "routelens-calibration", "routelens-schedule"}
    assert (TRACE.error, PLAN.error, ANALYSIS.error) == (TraceError, PlanError, ResultFileError)
    named = [(f.folder, f.pattern()) for f in FORMATS.values() if f.file]
    assert len(named) == len(set(named))


@settings(max_examples=60, **_UNTIMED)
@given(fmt=_ANY_FORMAT, extra=_BODIES)
def test_what_a_format_writes_its_reader_reads_back(tmp_path, fmt, extra):
    body = _valid_body(fmt, extra)
    path = fmt.write(tmp_path / "file.json", {**body, "format": "stale", "version": -1})
    assert fmt.read(path) == {"format": fmt.name, "version": fmt.version, **body}
    assert list(json.loads(path.read_text()))[:2] == ["format", "version"]  # the header comes first
    assert fmt.sniff(path) and all(not other.sniff(path) for other in FORMATS.values() if other is not fmt)


@settings(max_examples=80, **_UNTIMED)
@given(fmt=_ANY_FORMAT, data=st.data())
def test_every_bad_file_is_one_line_of_the_formats_error(tmp_path, fmt, data):
    good = {**fmt.header(), **_valid_body(fmt, {})}
    text = json.dumps(good)
    bad = data.draw(st.one_of(
        st.integers(0, len(text) - 1).map(lambda cut: text[:cut]),  # half-written
        st.sampled_from([n for n in FORMATS if n != fmt.name]).map(lambda n: json.dumps({**good, "format": n})),
        st.integers().filter(lambda v: v != fmt.version).map(lambda v: json.dumps({**good, "version": v})),
        _JSON.map(json.dumps),  # any JSON value at all
        *([st.sampled_from(sorted(fmt.required)).map(lambda k: json.dumps({key: v for key, v in good.items() if key != k})),
           st.sampled_from(sorted(fmt.required)).map(lambda k: json.dumps({**good, k: "x" if fmt.required[k] is not str else 1}))]
          if fmt.required else []),
    ))
    path = tmp_path / "bad.json"
    path.write_text(bad)
    with pytest.raises(fmt.error) as info:
        fmt.read(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=list(FORMATS))
def test_a_missing_file_is_a_one_line_error_of_the_formats_class(tmp_path, fmt):
    with pytest.raises(fmt.error, match="not found"):
        fmt.read(tmp_path / "none.json")


def test_nan_and_booleans_do_not_pass_for_numbers(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text('{"format": "routelens-calibration", "version": 1, "latency_us": NaN, "bandwidth_GBps": 1}')
    with pytest.raises(ResultFileError, match="latency_us.*finite"):
        CALIBRATION.read(path)
    path.write_text(json.dumps({**BENCH.header(), "plans": [], "num_gpus": True, "baseline": "contiguous"}))
    with pytest.raises(ResultFileError, match="num_gpus"):
        BENCH.read(path)


def test_file_names_come_from_the_files_own_fields():
    report = {"backend": "gloo", "num_gpus": 4, "hidden_size": 128, "tokens_per_rank": 4096}
    assert BENCH.file_name(report) == "bench-gloo-g4-h128-t4096.json"
    assert BENCH.matches(BENCH.file_name(report)) and not BENCH.matches("calibration-gloo-g4.json")
    assert CALIBRATION.matches(CALIBRATION.file_name(report)) and not CALIBRATION.matches(BENCH.file_name(report))
    assert BENCH.path_in("runs/demo", report) == Path("runs/demo/bench/bench-gloo-g4-h128-t4096.json")
    assert ANALYSIS.path_in("runs/demo") == Path("runs/demo/analysis/analysis.json")
    assert TRACE.path_in("runs/demo") == Path("runs/demo/manifest.json")
    assert SCHEDULE.path_in("runs/demo", {"label": "g8-r8"}) == Path("runs/demo/schedules/schedule-g8-r8.json")
    with pytest.raises(ValueError, match="tokens_per_rank"):
        BENCH.file_name({"backend": "gloo", "num_gpus": 4, "hidden_size": 128})
    with pytest.raises(ValueError):
        PLAN.file_name()


def test_a_write_that_cannot_be_json_leaves_the_old_file(tmp_path):
    path = TRADEOFF.write(tmp_path / "tradeoff.json", {"rows": [{"perplexity": 2.0}]})
    with pytest.raises(ValueError):
        TRADEOFF.write(path, {"rows": [{"perplexity": math.nan}]})
    assert TRADEOFF.read(path)["rows"] == [{"perplexity": 2.0}]
    assert [p.name for p in tmp_path.iterdir()] == ["tradeoff.json"]


def test_format_errors_are_routelens_errors():
    assert all(issubclass(f.error, RoutelensError) for f in FORMATS.values())
