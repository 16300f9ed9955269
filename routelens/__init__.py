"""routelens: see how Mixture-of-Experts models route tokens, and make expert parallelism faster.

The pipeline passes one object from stage to stage:
``Trace`` (capture) → analysis results (``routelens.graphs``) → ``Plan`` (``routelens.placement``)
→ run results (``routelens.runner``).
"""

from .errors import NotMoEError, PlanError, RoutelensError, TraceError
from .plan import Plan
from .trace import Trace, TraceWriter, write_trace

__all__ = ["Trace", "TraceWriter", "write_trace", "Plan", "RoutelensError", "NotMoEError", "TraceError", "PlanError"]
__version__ = "0.1.0"
