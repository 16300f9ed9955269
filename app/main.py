"""routelens dashboard: ``routelens app RUNS_DIR`` (or ``streamlit run app/main.py -- RUNS_DIR``).

The entry script: page setup, the run picker in the sidebar, and the page navigation. Each page in
``views/`` answers one question about the run picked here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR) not in sys.path:  # the pages import the app's helpers (rlapp) by name
    sys.path.insert(0, str(APP_DIR))

from rlapp import ui  # noqa: E402
from rlapp.warmup import warm_imports  # noqa: E402
from rlapp.runs import runs_dir_from_argv  # noqa: E402

st.set_page_config(page_title="routelens", page_icon=":material/hub:", layout="wide")

PAGES = {
    "Routing": [
        st.Page(APP_DIR / "views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
        st.Page(APP_DIR / "views/layers.py", title="Layer explorer", icon=":material/layers:"),
        st.Page(APP_DIR / "views/expert.py", title="Expert", icon=":material/person_search:"),
        st.Page(APP_DIR / "views/flow.py", title="Cross-layer flow", icon=":material/account_tree:"),
    ],
    "Systems": [
        st.Page(APP_DIR / "views/reroute.py", title="Re-routing", icon=":material/alt_route:"),
        st.Page(APP_DIR / "views/placement.py", title="Placement", icon=":material/grid_view:"),
        st.Page(APP_DIR / "views/schedule.py", title="Placement over time", icon=":material/update:"),
        st.Page(APP_DIR / "views/compare.py", title="Runs compared", icon=":material/compare_arrows:"),
        st.Page(APP_DIR / "views/runner.py", title="Runner results", icon=":material/speed:"),
    ],
}

navigation = st.navigation(PAGES)
runs_dir = runs_dir_from_argv(__file__)
st.session_state["runs_dir_arg"] = str(runs_dir)
st.logo(str(APP_DIR / "assets" / "logo.svg"), size="large")
ui.run_picker(runs_dir)
try:
    navigation.run()
finally:
    warm_imports()  # after the first page is drawn: torch & co. load while the user reads it
