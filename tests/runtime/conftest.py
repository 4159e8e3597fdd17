"""Shared fixtures of the runtime tests: the ``lt.*`` test components and flow builders."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import runtimes  # noqa: E402,F401  (registers lt.*)

from flownb import Flow, step  # noqa: E402


def make_flow(*steps, trigger=("lt.count", {}), name: str | None = None, parameters=None) -> Flow:
    """``make_flow(("double", "lt.double", {}), ("sink", "lt.sink", {"path": …}, {"retry": …}))``."""
    comp, cfg = trigger
    built = []
    for s in steps:
        sname, scomp, scfg, *extra = s
        built.append(step(sname, scomp, **(extra[0] if extra else {}), **scfg))
    return Flow(name=name or f"lt-{uuid.uuid4().hex[:8]}", parameters=parameters or {},
                trigger=step("src", comp, **cfg), steps=built)


@pytest.fixture
def flow_factory():
    return make_flow
