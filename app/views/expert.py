"""Expert: Who does this expert work with, and for which tokens?"""

from __future__ import annotations

from rlapp import ui

info, trace = ui.current_trace()
ui.header("Expert", "Who does this expert work with, and for which tokens?")
ui.missing("co-activation analysis", f"routelens analyze {info.path}")
