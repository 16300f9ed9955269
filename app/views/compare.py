"""Runs compared: How do runs differ?"""

from __future__ import annotations

from rlapp import ui

info, trace = ui.current_trace()
ui.header("Runs compared", "How do runs differ?")
ui.missing("other runs", "routelens capture --out runs/other")
