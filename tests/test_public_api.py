"""``flownb.__all__`` is exactly the documented public API, and every name resolves."""

from __future__ import annotations

import subprocess
import sys

import flownb

DOCUMENTED = {
    "__version__",
    # model and spec
    "Flow", "Step", "RetryPolicy", "step", "load", "save", "Message",
    # components
    "Action", "PollingTrigger", "WebhookTrigger", "Context", "action", "polling_trigger", "register",
    "python_step", "python_poll",
    # durations
    "Duration", "parse_duration", "format_duration",
    # errors
    "FlownbError", "SpecError", "ConfigError", "ParameterError", "ExpressionError", "UnknownComponentError",
    "MessageError", "StepError", "Retry", "RetryableError", "FatalError", "BrokerError", "DeployError",
    # notebook and runtime (lazy)
    "Mapping", "MappingEditor", "FlowBuilder", "Monitor", "TestResult", "LocalRuntime",
    # the notebook as production's debugger (lazy; docs/debugging.md)
    "dead_letters", "replay", "DeadLetterWorkbench",
    # the flight recorder (lazy; docs/debugging.md)
    "trace",
}


def test_all_is_exactly_the_documented_set():
    assert len(flownb.__all__) == len(set(flownb.__all__)), "duplicates in __all__"
    assert set(flownb.__all__) == DOCUMENTED


def test_every_name_resolves():
    missing = []
    for name in flownb.__all__:
        try:
            getattr(flownb, name)
        except (AttributeError, ImportError) as exc:
            missing.append(f"{name}: {exc}")
    assert not missing, missing


def test_unknown_attribute_is_an_attribute_error():
    try:
        flownb.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_is_lean():
    """Importing flownb (and the local runtime) pulls in neither pandas nor ipywidgets nor papermill."""
    code = ("import sys, flownb, flownb.runtime.local, flownb.runtime.core; "
            "bad = [m for m in ('pandas', 'ipywidgets', 'papermill') if m in sys.modules]; "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"imported at module level: {r.stdout} {r.stderr}"
