"""Cross-layer flow: Where do tokens go from one layer's experts to the next?"""

from __future__ import annotations

from rlapp import ui

info, trace = ui.current_trace()
ui.header("Cross-layer flow", "Where do tokens go from one layer's experts to the next?")
ui.missing("co-activation analysis", f"routelens analyze {info.path}")
