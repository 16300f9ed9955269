"""Placement: Where should the experts live?"""

from __future__ import annotations

from rlapp import ui

info, trace = ui.current_trace()
ui.header("Placement", "Where should the experts live?")
ui.missing("placement plans", f"routelens place {info.path}")
