"""Run Python code in a child process with a hard memory cap (``RLIMIT_AS``, as ``ulimit -v``).

The cap is what the child has mapped once ``flownb.rules`` (with jsonatapy) is imported plus
``spare_mib``: what a hostile expression may still allocate. The child's code runs with
``compile``, ``EvaluationError``, ``EvaluationTimeout`` and ``ExpressionError`` imported; no core file is
written when it aborts. A process that runs out of memory in jsonatapy (Rust) aborts with "memory
allocation of N bytes failed"; one that does in Python raises ``MemoryError``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

PRELUDE = """
import resource
from flownb.rules import EvaluationError, compile
from flownb.errors import EvaluationTimeout, ExpressionError
compile("$count([1..2])").raw({})  # jsonatapy loaded and this thread's engine made
with open("/proc/self/status") as fh:
    mapped = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
cap = mapped + SPARE * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
"""


def run_capped(code: str, spare_mib: int, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) after :data:`PRELUDE` in a fresh interpreter; its output, text."""
    source = PRELUDE.replace("SPARE", str(int(spare_mib))) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=timeout)
