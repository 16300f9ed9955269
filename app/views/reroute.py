"""Re-routing: How much fan-out does each re-routing policy save, and what does it cost in quality?"""

from __future__ import annotations

from rlapp import ui

info, trace = ui.current_trace()
ui.header("Re-routing", "How much fan-out does each re-routing policy save, and what does it cost in quality?")
ui.missing("re-routing trade-off curves", f"routelens reroute-eval {info.path}")
