"""Page furniture: the run picker, the current run, and the messages pages show instead of tracebacks."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from routelens.errors import RoutelensError
from routelens.trace import Trace

from . import data
from .runs import RunInfo

RUN_KEY = "run"


def run_picker(runs_dir: Path) -> RunInfo | None:
    """Sidebar: RUNS_DIR and a select box of its runs; the choice lives in the URL (``?run=``)."""
    runs = data.runs_below(str(runs_dir.resolve()))
    st.sidebar.caption(f"Runs found below `{runs_dir}`")
    if not runs:
        st.session_state.pop("run_info", None)
        return None
    names = [r.name for r in runs]
    by_name = {r.name: r for r in runs}
    readable = [r.name for r in runs if not r.problem]
    default = (readable or names)[0]
    # Bound to ?run=NAME so a link opens the same run; kept for the session across page switches.
    name = st.sidebar.selectbox("Run", names, index=names.index(default), key=RUN_KEY,
                                bind="query-params", persist_state="session")
    if name not in by_name:  # a run deleted since the last rerun
        name = default
    st.sidebar.caption(by_name[name].detail)
    st.session_state["run_info"] = by_name[name]
    st.session_state["runs_dir"] = str(runs_dir)
    return by_name[name]


def current_run() -> RunInfo:
    """The run picked in the sidebar; stops the page with a message when there is none."""
    info: RunInfo | None = st.session_state.get("run_info")
    if info is None:
        runs_dir = st.session_state.get("runs_dir_arg", "runs")
        st.info(f"No runs found below `{runs_dir}`. Record one with:")
        st.code(f"routelens capture --out {Path(runs_dir) / 'demo'}", language="bash")
        st.stop()
    if info.problem:
        st.error(f"Run `{info.name}` cannot be read: {info.problem}")
        st.caption("A capture still writing its first shard, or killed mid-write, looks like this; so does a damaged "
                   f"or hand-edited manifest. `routelens check {info.path}` says what is wrong; finish an interrupted "
                   "capture with `routelens capture ... --resume`, or delete the folder.")
        st.stop()
    return info


def current_trace() -> tuple[RunInfo, Trace]:
    """The picked run and its opened Trace; stops the page with a one-line message on a bad run."""
    info = current_run()
    try:
        trace = data.open_trace(info.path)
    except RoutelensError as exc:
        st.error(f"Run `{info.name}` cannot be opened: {exc}")
        st.stop()
    if not trace.manifest.get("complete", False):
        st.warning("This capture is incomplete: numbers cover the shards written so far. "
                   "Finish it with `routelens capture ... --resume`.")
    return info, trace


def guarded(call, *args, what: str = "data"):
    """Call a loader; on a RoutelensError show its one-line message and stop the page."""
    try:
        return call(*args)
    except RoutelensError as exc:
        st.error(f"Could not read the {what}: {exc}")
        st.stop()


def attempt(call, *args, what: str = "data"):
    """Call a loader; on a RoutelensError show its one-line message and return None (the page goes on)."""
    try:
        return call(*args)
    except RoutelensError as exc:
        st.error(f"Could not compute the {what}: {exc}")
        return None


def missing(what: str, command: str, why: str = "") -> None:
    """Say that this run lacks ``what`` and which command makes it."""
    st.info(f"This run has no {what} yet{(' — ' + why) if why else ''}. Make it with:")
    st.code(command, language="bash")


def header(title: str, question: str) -> None:
    """A page title and the question the page answers."""
    st.title(title)
    st.caption(question)


def fmt_int(value) -> str:
    return "–" if value is None else f"{int(value):,}"


def fmt_float(value, digits: int = 2, suffix: str = "") -> str:
    return "–" if value is None else f"{float(value):,.{digits}f}{suffix}"


def counts_only_notice(trace: Trace, what: str) -> None:
    """Say why ``what`` is absent for a run that holds expert counts only (imported SGLang stat records)."""
    st.info(f"{what} needs per-token routing: this run holds expert counts only "
            f"({trace.source_label or 'counts'}), which tell how busy each expert was, not which experts a token "
            "chose together. The overview's load views and `routelens place --method eplb|greedy` work on it; "
            "import per-token records (SGLang `--expert-distribution-recorder-mode per_token`, vLLM "
            "`--enable-return-routed-experts`) for the co-activation pages.")


def require_analysis(info: RunInfo):
    """The run's co-activation analysis; without one, say which command makes it and stop the page."""
    trace = data.open_trace(info.path)
    if trace.counts_only:
        counts_only_notice(trace, "This page")
        st.stop()
    if not data.has_analysis(info.path):
        missing("co-activation analysis", f"routelens analyze {info.path}")
        st.stop()
    try:
        return data.analysis(info.path, data.analysis_stamp(info.path))
    except RoutelensError as exc:
        st.warning(f"The analysis cannot be used: {exc}")
        st.code(f"routelens analyze {info.path}", language="bash")
        st.stop()


def optional_analysis(info: RunInfo):
    """The run's analysis, or None (absent: silently; unusable: with a warning saying how to remake it)."""
    if not data.has_analysis(info.path):
        return None
    try:
        return data.analysis(info.path, data.analysis_stamp(info.path))
    except RoutelensError as exc:
        st.warning(f"The analysis cannot be used, showing what the trace alone tells: {exc}")
        return None


def layer_slider(analysis, key: str = "layer", label: str = "MoE layer") -> int:
    """A slider over the analysed layers (trace indices), bound to ``?layer=``; returns the trace index."""
    layers = list(analysis.layers)
    if len(layers) == 1:
        st.caption(f"Layer {layers[0]} (the only analysed layer)")
        return layers[0]
    return st.select_slider(label, options=layers, key=key, bind="query-params", persist_state="session")
