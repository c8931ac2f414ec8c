"""``mailsyncd check``: diagnoses a setup step by step, each failure with its cause and fix.

``model`` (steps, the JSON document, the human lines), ``diagnose`` (pure: claims, refusals and
errors to cause and fix), ``credential``, ``database``, ``network`` and ``runner`` (the steps
that do I/O).
"""

from daemon.check.model import STEP_IDS, Step, format_step, format_summary, write_json
from daemon.check.runner import DEFAULT_TIMEOUT, run_check

__all__ = [
    "DEFAULT_TIMEOUT",
    "STEP_IDS",
    "Step",
    "format_step",
    "format_summary",
    "run_check",
    "write_json",
]
