"""Evaluation deadlines: an expression that never ends is dead-lettered with EvaluationTimeout, in
flow.test, on LocalRuntime and in a real ``flownb run``; a serving ``flownb run`` busy with one stops
on SIGTERM. Real processes, real engines, no mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from flownb import Flow
from flownb.errors import EvaluationTimeout, FatalError
from flownb.rules import EvaluationError, Mapping, _deadline, compile

from .capped import run_capped

FLOWNB = str(Path(sys.executable).parent / "flownb")

#: expressions that never end (jsonatapy: recursive lambdas, a huge $map) and one whose work grows
#: as the input's length to the fifth power (compiled engine: nested predicates over the root)
RECURSE = "($f := function($n){ $f($n+1) }; $f(0))"
SPIN = "($f := function($n){ $n > -1 ? $f($n) : 0 }; $f(1))"
HUGE_MAP = "$count($map([1..10000000], function($v){ $v * 2 }))"
NESTED = "$count(a[$count($$.a[$count($$.a[$count($$.a[$count($$.a) > 0]) > 0]) > 0]) > 0])"
FOREVER = [RECURSE, SPIN, HUGE_MAP, NESTED]
BODY = {"a": list(range(400)), "keep": 1}

#: The time bounds in this file are the feature, not speed claims: a deadline promises that an
#: evaluation is *stopped*, so each bound is the configured timeout plus what the stop may overrun it
#: by — the watchdog's look (every 0.25 s) or jsonatapy's next look at its clock, the interrupt
#: reaching the thread, on a loaded 2-core CI machine. Without a deadline none of them ever returns.
OVERRUN = 4.5
#: building a 10,000,000-item range is one step jsonatapy cannot interrupt (docs/rules.md, Deadlines)
RANGE_STEP = 10.0


def test_the_never_ending_expressions_use_the_engines_they_are_meant_to():
    assert [compile(s).engine for s in FOREVER] == ["jsonatapy"] * 3 + ["compiled"]


def test_evaluation_timeout_is_a_fatal_error_with_a_clear_message():
    e = EvaluationTimeout(10.0, step="x", field="y", expression=RECURSE)
    assert isinstance(e, FatalError) and not e.retryable and e.code == "D1012"
    assert str(e) == ("evaluation exceeded 10 s (step 'x', field 'y'); simplify the expression or "
                      "raise the step's timeout")


@pytest.mark.parametrize("src", FOREVER)
def test_raw_with_a_timeout_stops_either_engine(src):
    timeout = 0.5
    t = time.monotonic()
    with pytest.raises(EvaluationTimeout, match=r"evaluation exceeded 0.5 s") as info:
        compile(src).raw(BODY, timeout=timeout)
    # the contract: stopped at its deadline (the 1e7-item range is built in one step before
    # jsonatapy looks at its clock again)
    assert time.monotonic() - t < timeout + OVERRUN + (RANGE_STEP if src == HUGE_MAP else 0)
    assert info.value.expression == src


def test_a_deadline_does_not_change_results_or_errors():
    assert compile("a[0] + keep").raw(BODY, timeout=5) == 1
    assert compile("$map(a[[0..2]], function($v){ $v * 2 })").raw(BODY, timeout=5) == [0, 2, 4]
    with pytest.raises(EvaluationError, match="T2001"):
        compile('"x" - 1').raw({}, timeout=5)


def test_the_interrupt_never_escapes_a_guarded_region():
    """Thousands of regions whose deadline falls at any point of their work, on four threads: each
    ends with its result or Expired, and nothing raises afterwards."""
    def work():
        s = 0
        for i in range(3000):
            s += i
        return s

    def hammer(counts):
        for i in range(1500):
            try:
                assert _deadline.run(0.0005 + (i % 7) * 0.0002, work) == 4498500
                counts[0] += 1
            except _deadline.Expired:
                counts[1] += 1
        x = 0
        for i in range(200_000):  # an interrupt that escaped would be raised in here
            x += i
        counts[2] = x
    counts = [[0, 0, 0] for _ in range(4)]
    threads = [threading.Thread(target=hammer, args=(c,)) for c in counts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(c[0] + c[1] == 1500 and c[2] == 19999900000 for c in counts), counts


def test_nested_regions_report_the_deadline_that_passed():
    def spin():
        while True:
            pass
    with pytest.raises(_deadline.Expired):
        _deadline.run(5, lambda: _deadline.run(0.2, spin))
    # the outer deadline passes inside the inner region: the outer region reports it
    t = time.monotonic()
    with pytest.raises(_deadline.Expired):
        _deadline.run(0.2, lambda: _deadline.run(30, spin))
    assert time.monotonic() - t < 0.2 + OVERRUN  # the contract: the outer (0.2 s), not the inner 30 s


def test_preview_shows_the_timeout_in_the_row_cell():
    m = Mapping(fields={"keep": "keep", "loop": RECURSE, "slow": NESTED})
    t = time.monotonic()
    df = m.preview([BODY, {"keep": 2, "a": [1]}], timeout=0.5)
    assert time.monotonic() - t < 20
    assert list(df["keep"]) == [1, 2]
    err0, err1 = df["_error"]
    assert "field 'loop': evaluation exceeded 0.5 s; simplify the expression or raise the timeout" in err0
    assert "field 'slow': evaluation exceeded 0.5 s" in err0
    assert err1 == "field 'loop': evaluation exceeded 0.5 s; simplify the expression or raise the timeout"
    assert df["slow"][1] == 1 and m.failing_rows() == 2


def test_preview_of_a_whole_object_expression_times_out_per_row():
    m = Mapping(expression='keep = 1 ? {"x": ' + SPIN + '} : {"x": keep}')
    df = m.preview([{"keep": 1}, {"keep": 2}], timeout=0.5)
    assert df["_error"][0].startswith("evaluation exceeded 0.5 s") and m.failing_rows() == 1
    assert df["x"][1] == 2


def _flow(src: str, timeout: str | None = "1s", component: str = "mapping") -> Flow:
    config = {"mapping": {"fields": {"keep": "keep", "y": src}}, "filter": {"condition": src},
              "split": {"path": src}}[component]
    if timeout is not None:
        config["timeout"] = timeout
    trigger = {"name": "in", "component": "python.poll",
               "config": {"source": "def poll(state, ctx):\n    return []\n", "function": "poll"}}
    return Flow.model_validate({"flownb": 1, "name": "forever", "trigger": trigger,
                                "steps": [{"name": "x", "component": component, "config": config}]})


@pytest.mark.parametrize("src", [RECURSE, SPIN, NESTED])
def test_flow_test_dead_letters_a_never_ending_expression(src):
    t = time.monotonic()
    result = _flow(src).test([BODY])
    assert time.monotonic() - t < 20
    (dead,) = result.dead_letters
    assert dead.error.type == "EvaluationTimeout" and not dead.error.retryable
    assert dead.error.message == ("evaluation exceeded 1 s (step 'x', field 'y'); simplify the expression "
                                  "or raise the step's timeout")


@pytest.mark.parametrize("component,field", [("filter", "condition"), ("split", "path")])
def test_filter_and_split_have_the_deadline_too(component, field):
    (dead,) = _flow(SPIN, component=component).test([BODY]).dead_letters
    assert dead.error.message.startswith(f"evaluation exceeded 1 s (step 'x', field '{field}')")


def test_the_default_timeout_is_10_seconds():
    from flownb.components.mapping import FilterConfig, MappingConfig, SplitConfig
    assert MappingConfig(fields={"a": "a"}).timeout == FilterConfig(condition="a").timeout == 10.0
    assert SplitConfig(path="a", timeout="250ms").timeout == 0.25


def test_local_runtime_dead_letters_and_goes_on(tmp_path):
    from flownb.runtime.local import LocalRuntime
    flow = _flow(SPIN)
    with LocalRuntime(flow, tmp_path / "state") as rt:
        rt.feed([{"keep": 1}, BODY, {"keep": 3}])
        t = time.monotonic()
        rt.drain()
        assert time.monotonic() - t < 30
        dead = rt.dead_letters()
    assert len(dead) == 3  # every message runs the never-ending field, each is stopped in ~1 s
    assert all(d.error.type == "EvaluationTimeout" and "field 'y'" in d.error.message for d in dead)


def _spec(tmp: Path, src: str, timeout: str, interval: str = "1h") -> Path:
    poll = textwrap.dedent('''
        def poll(state, ctx):
            n = state.get("n", 0)
            state["n"] = n + 1
            return [{"keep": n, "a": list(range(400))}]
    ''')
    flow = {"flownb": 1, "name": "forever",
            "trigger": {"name": "numbers", "component": "python.poll",
                        "config": {"source": poll, "function": "poll", "interval": interval}},
            "steps": [{"name": "x", "component": "mapping",
                       "config": {"fields": {"keep": "keep", "y": src}, "timeout": timeout}}]}
    path = tmp / "flow.yaml"
    path.write_text(yaml.safe_dump(flow, sort_keys=False))
    return path


@pytest.mark.parametrize("src", [RECURSE, NESTED])
def test_flownb_run_until_idle_dead_letters(tmp_path, src):
    state = tmp_path / "state"
    spec = _spec(tmp_path, src, "1s")
    r = subprocess.run([FLOWNB, "run", str(spec), "--state-dir", str(state), "--until-idle"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr  # the run dead-lettered a message: not a silent exit 0
    assert "1 dead letter(s) stored" in r.stdout
    r = subprocess.run([FLOWNB, "dlq", "list", str(spec), "--state-dir", str(state)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "EvaluationTimeout" in r.stdout and "evaluation exceeded 1 s" in r.stdout


@pytest.mark.parametrize("src", [SPIN, NESTED])
def test_serving_flownb_run_stops_on_sigterm_while_evaluating(tmp_path, src):
    """A poll due every second, each message running for ever (the runtime polls between batches,
    so a batch holds one message and the step is always evaluating): SIGTERM arrives
    mid-evaluation and the process exits (gracefully: the current batch is dead-lettered) within a
    few seconds."""
    state = tmp_path / "state"
    spec = _spec(tmp_path, src, "2s", interval="1s")
    proc = subprocess.Popen([FLOWNB, "run", str(spec), "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "FLOWNB_STOP_GRACE": "60"})
    try:
        time.sleep(6)  # started, polled, evaluating
        assert proc.poll() is None, proc.communicate()
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    # the contract (docs/rules.md): SIGTERM is handled at the latest when the step's timeout (2 s)
    # stops the evaluation; then the batch is dead-lettered, the summary printed and the process exits
    assert took < 2 + OVERRUN + 1.5, (took, err)
    assert "dead letter(s) stored" in out


def test_each_gives_one_result_per_item_in_order():
    """A batch under one region renewed per item: slow items give expired(), the others their
    value or their exception, in order, none skipped or repeated — whatever moment the interrupt
    lands at."""
    def fn(x):
        if x % 50 == 7:
            while True:
                pass
        if x % 50 == 9:
            raise ValueError(x)
        s = 0
        for i in range(500):
            s += i
        return x
    items = list(range(300))
    out = _deadline.each(0.05, fn, items, lambda: "late")
    assert len(out) == 300
    for x, v in zip(items, out, strict=True):
        if x % 50 == 7:
            assert v == "late"
        elif x % 50 == 9:
            assert isinstance(v, ValueError) and v.args == (x,)
        else:
            assert v == x


def test_a_batch_dead_letters_only_the_never_ending_messages():
    flow = _flow('keep = 2 ? ' + SPIN + ' : keep * 10')
    result = flow.test([{"keep": k} for k in range(5)])
    assert [b["y"] for b in result.outputs["x"]] == [0, 10, 30, 40]
    (dead,) = result.dead_letters
    assert dead.message.body == {"keep": 2} and dead.error.type == "EvaluationTimeout"
    assert "field 'y'" in dead.error.message


@pytest.mark.parametrize("src", ["[1..1000000000]", "$count([1..1e9])", "[0..10000000]"])
def test_a_range_beyond_ten_million_items_is_an_error_not_an_out_of_memory(src):
    """As in jsonata-js (D2014); the compiled engine leaves ranges to jsonatapy. An error, not an
    out-of-memory: evaluated in a child process whose address space leaves 48 MiB to spare, too
    little for the range's items (``[0..9999999]`` as a value does not fit there:
    tests/rules/test_expression_hostile.py)."""
    assert compile(src).engine == "jsonatapy"
    out = run_capped(f"""
try:
    compile({src!r}).raw({{}}, timeout=10)
except EvaluationError as exc:
    print("error", exc.code)
""", spare_mib=48)
    assert out.returncode == 0 and out.stdout.split() == ["error", "D2014"], (out.returncode, out.stderr[-2000:])


def test_each_goes_on_watching_after_jsonatapy_timed_out():
    """A batch whose first message times out in jsonatapy and whose second never ends in compiled
    code: both are stopped, the third is evaluated."""
    exprs = [compile(SPIN), compile(NESTED), compile("keep")]
    t = time.monotonic()
    out = _deadline.each(0.5, lambda e: e.raw(BODY), exprs, lambda: "late")
    assert out == ["late", "late", 1] and time.monotonic() - t < 10
