"""Fixtures for the built-in connector tests: flows run through the shared StepRunner/TriggerRunner."""

from __future__ import annotations

import uuid

import pytest

from flownb import Flow, RetryPolicy, step
from flownb.components.base import polling_trigger
from flownb.runtime.core import StepRunner, TriggerRunner


@polling_trigger("test.noop")
def _noop(state, ctx):  # a trigger for flows whose action is under test
    return []


def make_flow(trigger=("test.noop", {}), steps=(), parameters=None) -> Flow:
    comp, cfg = trigger
    return Flow(name="t-" + uuid.uuid4().hex[:8], parameters=parameters or {},
                trigger=step("src", comp, **cfg),
                steps=[step(f"s{i}", c, **k) for i, (c, k) in enumerate(steps)])


@pytest.fixture
def step_runner():
    """``step_runner("sql.upsert", {...})`` → an open StepRunner for a one-action flow; closed after."""
    opened = []

    def make(component: str, config: dict, *, retry: dict | None = None, parameters=None) -> StepRunner:
        flow = make_flow(steps=[(component, config)], parameters=parameters)
        if retry:
            s = flow.steps[0].model_copy(update={"retry": RetryPolicy(**retry)})
            flow = flow.model_copy(update={"steps": [s]}).revalidated()
        runner = StepRunner(flow.resolved(), "s0").open()
        opened.append(runner)
        return runner

    yield make
    for r in opened:
        r.close()


@pytest.fixture
def trigger_runner():
    """``trigger_runner("sql.poll", {...})`` → an open TriggerRunner; closed after."""
    opened = []

    def make(component: str, config: dict, parameters=None) -> TriggerRunner:
        runner = TriggerRunner(make_flow((component, config), parameters=parameters).resolved()).open()
        opened.append(runner)
        return runner

    yield make
    for r in opened:
        r.close()


@pytest.fixture
def flow_factory():
    """``flow_factory(trigger=(key, config), steps=[(key, config), ...])`` → a Flow."""
    return make_flow
