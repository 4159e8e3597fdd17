"""``flow.test(sample)``: the local engine on an in-memory database with a virtual clock.

Dry by default: an action with outside effects (``effects = True``: ``http.request``,
``sql.upsert``, ``csv.write``, any connector that declares it) is not run; its
:meth:`~flownb.components.base.Action.dry_run` records what it would send (the request, the row,
the line) in ``result.effects[step]`` and the message goes on unchanged. ``live=True`` runs them
for real (a test server, a scratch database)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

from ...components.base import Action, Context
from ...errors import SpecError, did_you_mean
from ...flow import Flow
from ..core import DeadLetter
from .runtime import LocalRuntime, VirtualClock

__all__ = ["TestResult", "test_flow"]

#: above this many rows, a notebook shows a progress bar by default
PROGRESS_THRESHOLD = 1000
#: the runtime's per-message narration during a test (a line per dead letter, per retry) would fill
#: a notebook cell with stderr boxes: the result shows the same in its tabs, so only errors are logged
_LOG = logging.getLogger("flownb.flow_test")
_LOG.setLevel(logging.ERROR)


@dataclass
class TestResult:
    """Each step's outputs (``outputs[step]``: list of bodies), dead letters, timings and counts."""

    __test__ = False  # not a pytest test class

    flow: str
    outputs: dict[str, list[dict]]
    dead_letters: list[DeadLetter] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, dict] = field(default_factory=dict)
    #: dry runs: what each action with outside effects would have sent, per step, in order
    effects: dict[str, list[dict]] = field(default_factory=dict)
    live: bool = False
    #: per route step, each message it routed: the body and ``_branch``, the branch(es) it took
    #: (``"a, b"`` in ``mode: all``; ``"(unmatched)"``: filtered), in the order they were routed
    routes: dict[str, list[dict]] = field(default_factory=dict)
    #: the bodies that left the flow, in order (None: not recorded)
    final: list[dict] | None = None

    def branches(self, step: str | None = None):
        """The rows a route step routed, with the branch each took (``_branch``), as a DataFrame;
        ``step`` may be left out when the flow has one route step."""
        import pandas as pd
        if step is None:
            if len(self.routes) != 1:
                raise SpecError(f"flow '{self.flow}' has {len(self.routes)} route steps; name one: "
                                f"result.branches('step') ({', '.join(self.routes) or 'none'})")
            step = next(iter(self.routes))
        if step not in self.routes:
            names = list(self.routes)
            raise SpecError(f"no route step '{step}'{did_you_mean(step, names)} route steps: "
                            f"{', '.join(names) or 'none'}")
        return pd.DataFrame.from_records(self.routes[step]) if self.routes[step] else pd.DataFrame()

    def frame(self, step: str):
        """The outputs of ``step`` as a pandas DataFrame (one row per message)."""
        import pandas as pd
        if step not in self.outputs:
            names = list(self.outputs)
            raise SpecError(f"no step '{step}'{did_you_mean(step, names)} steps: {', '.join(names)}")
        return pd.DataFrame.from_records(self.outputs[step]) if self.outputs[step] else pd.DataFrame()

    @property
    def last(self) -> list[dict]:
        """The outputs of the last step: the bodies that left the flow (a flow that ends with a route
        step: the outputs of each of its branches)."""
        return list(self.final) if self.final is not None else list(self.outputs.values())[-1]

    def summary(self) -> str:
        lines = [f"TestResult of flow '{self.flow}'"]
        for name, c in self.counts.items():
            lines.append(f"  {name}: in {c['in']}, out {c['out']}, retried {c['retried']}, dead {c['dead']}, "
                         f"{self.timings.get(name, 0.0) * 1000:.1f} ms")
            if "branches" in c:  # a route step: messages per branch, and the unmatched ones (filtered)
                taken = ", ".join(f"{b} {n}" for b, n in c["branches"].items()) or "none"
                lines.append(f"    branches: {taken}; unmatched {c['unmatched']}")
        lines.append(f"  dead letters: {len(self.dead_letters)}")
        if self.effects:
            would = ", ".join(f"{step} {len(e)}" for step, e in self.effects.items())
            lines.append(f"  dry run: not sent ({would}); see .effects, or flow.test(..., live=True)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_mimebundle_(self, include=None, exclude=None):
        try:
            from ...display import test_result_mimebundle
        except ImportError:
            return {"text/plain": self.summary()}
        return test_result_mimebundle(self)


class _DryRun(Action):
    """An action with outside effects, run dry: records what it would send, passes its input on."""

    def __init__(self, real: Action, record: list[dict]):
        self.real, self.record = real, record
        self.config, self.ctx = real.config, real.ctx

    def setup(self) -> None:  # no connection to anything real
        pass

    def close(self) -> None:
        pass

    def process_batch(self, messages, ctx: Context) -> list:
        out: list = []
        for m in messages:
            try:
                self.record.append(self.real.dry_run(m, ctx))
                out.append(self.real.dry_output(m))
            except Exception as exc:  # the same error the live run would dead-letter with
                out.append(exc)
        return out


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def _progress_bar(total: int, progress: bool | None):
    if progress is False or (progress is None and not (total > PROGRESS_THRESHOLD and _in_notebook())):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="flow.test", unit="msg")


def in_memory(flow: Flow, *, live: bool, **kw: Any) -> tuple[LocalRuntime, dict[str, list[dict]]]:
    """The runtime of a test run (``flow.test``, ``flow.retest``): in memory, on a virtual clock,
    quiet per message, and dry unless ``live`` — the second value collects, per step, what its
    actions with outside effects would have sent."""
    rt = LocalRuntime(flow, None, memory=True, clock=VirtualClock(), logger=_LOG, **kw)
    effects: dict[str, list[dict]] = {}
    if not live:
        error_runners = rt.errors.flow.runners if rt.errors is not None else []
        for runner in [*rt.runners.values(), *error_runners]:
            if getattr(runner.component, "effects", False):
                runner.component = _DryRun(runner.component, effects.setdefault(runner.step.name, []))
    return rt, effects


def test_flow(flow: Flow, sample: Any = None, progress: bool | None = None, *,
              batch_size: int = 500, live: bool = False) -> TestResult:
    """Run ``flow`` on ``sample`` (DataFrame, list of dicts or one dict, made records by
    :func:`flownb.records.to_records` and fed as the trigger's output; None: poll the trigger
    once) in memory. Retries happen on a virtual clock, without waiting. Actions with outside
    effects run dry unless ``live`` (the module's docstring)."""
    if sample is not None:  # a raw pandas read of a csv.poll/sql.poll source: say how it differs
        from ...rules.preview import raw_sample_note
        note = raw_sample_note(flow, sample)
        if note is not None:
            warnings.warn(note, UserWarning, stacklevel=3)
    rt, effects = in_memory(flow, live=live, record=True, batch_size=batch_size)
    try:
        if sample is None:
            if rt.trigger.kind != "poll":
                raise SpecError(f"trigger '{flow.trigger.name}' ({flow.trigger.component}) cannot be polled; "
                                f"pass a sample: flow.test([{{...}}, ...]) or a DataFrame")
            rt.poll_once(raise_errors=True)
        else:
            rt.feed(sample)  # flownb.records.to_records: the preview's conversion (docs/records.md)
        n = rt.stats[flow.trigger.name].outputs
        bar = _progress_bar(n * max(len(rt.steps), 1), progress)
        rt.drain(progress=(lambda _step, k: bar.update(k)) if bar is not None else None)
        rt.notify_errors(force=True)  # what the on_error actions receive (dry unless live)
        if bar is not None:
            bar.close()
        return TestResult(flow=flow.name, outputs=rt.recorded or {}, dead_letters=rt.dead_letters(),
                          timings={k: v.seconds for k, v in rt.stats.items()},
                          counts={k: v.to_dict() for k, v in rt.stats.items()},
                          effects=effects, live=live, routes=rt.routes or {},
                          final=rt.final if rt.steps else None)  # a trigger-only flow: the trigger's
    finally:
        rt.close()
