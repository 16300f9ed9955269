"""Layer explorer: Which experts work together in a layer?"""

from __future__ import annotations

from rlapp import ui

info, trace = ui.current_trace()
ui.header("Layer explorer", "Which experts work together in a layer?")
ui.missing("co-activation analysis", f"routelens analyze {info.path}")
