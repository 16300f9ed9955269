"""Runner results: What does a plan really cost over the network?"""

from __future__ import annotations

from rlapp import ui

info, trace = ui.current_trace()
ui.header("Runner results", "What does a plan really cost over the network?")
ui.missing("runner results", f"routelens bench {info.path}")
