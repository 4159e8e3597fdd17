"""The embedded local runtime (the default): a flow in one process, steps joined by SQLite queues.

Public API: :class:`LocalRuntime`, :class:`LocalDeadLetters`, :func:`test_flow` (behind
``flow.test``), :class:`TestResult`, :func:`run_cli` (behind ``flownb run``). See
:mod:`.store` for the queue schema and the durability trade-off of ``synchronous=NORMAL``.
"""

from __future__ import annotations

from ...errors import QueueFull
from .cli import print_summary, run_cli
from .dlq import LocalDeadLetters
from .flow_test import TestResult, test_flow
from .runtime import LocalRuntime, RunSummary, StepStats, VirtualClock
from .store import QueueStore

__all__ = ["LocalRuntime", "LocalDeadLetters", "TestResult", "test_flow", "run_cli", "print_summary",
           "RunSummary", "StepStats", "VirtualClock", "QueueStore", "QueueFull"]
