"""Expressions of both engines are evaluated from any thread and from several at once.

jsonatapy's compiled objects are pyo3 "unsendable": before the per-thread cache, evaluating a
fallback expression from a thread other than the compiling one raised ``PanicException`` (a
BaseException that ends a worker thread)."""

from __future__ import annotations

import gc
import sys
import threading

import pytest

from flownb.rules import UNDEFINED, EvaluationError, compile
from flownb.rules import expression as expression_module

PANIC_REPRO = 'value < 0 ? $error("negative value") : value * 2'

EXPRESSIONS = [
    # compiled engine
    "$sum(items.(qty * price))", "customer.email", "$uppercase(customer.name) & '!'",
    "items[qty > 1].price", "{'n': $count(items), 'first': items[0].qty}", "value * 2",
    "missing.field", "customer.name + 1",
    # jsonatapy engine
    PANIC_REPRO, "$map(items, function($i) { $i.qty * $i.price })", "items^(>price).qty",
    "($t := value * 3; $t + 1)", "$join(items.$string(qty), '-') ~> $uppercase()", "[1..3]",
    "items{'q' & $string(qty): price}", "$sum(items.qty) % 3",
]


@pytest.fixture
def no_unraisable(monkeypatch):
    """Fails the test if a jsonatapy object was dropped on another thread (an unraisable error)."""
    seen: list = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: seen.append(info.exc_value))
    yield
    gc.collect()
    assert not seen, seen


def _records(seed: int) -> list[dict]:
    out = []
    for i in range(12):
        v = (i * 7 + seed) % 11 - 3
        out.append({"value": v, "customer": {"email": f"u{i}@x.io", "name": f"ann{seed}"},
                    "items": [{"qty": (i + k) % 4, "price": 1.5 * k + seed} for k in range(1 + i % 3)]})
    return out


def _outcome(expr, data):
    try:
        return ("ok", expr.raw(data))
    except EvaluationError as exc:
        return ("error", exc.code)


def test_engines_of_the_corpus():
    engines = {compile(e).engine for e in EXPRESSIONS}
    assert engines == {"compiled", "jsonatapy"}
    assert compile(PANIC_REPRO).engine == "jsonatapy"


def test_panic_repro_an_expression_evaluated_from_another_thread(no_unraisable):
    e = compile(PANIC_REPRO)
    assert e.engine == "jsonatapy"
    assert e.evaluate({"value": 3}) == 6
    out: list = []

    def run():
        try:
            out.append(e.evaluate({"value": 4}))
            e.evaluate({"value": -1})
        except BaseException as exc:  # noqa: BLE001 - PanicException is a BaseException
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert out[0] == 8
    assert isinstance(out[1], EvaluationError) and out[1].code == "D3137", out
    assert "negative value" in str(out[1])
    out.clear()  # the error (and its traceback) raised on the ended thread is freed here


def test_expressions_compiled_on_one_thread_evaluated_concurrently_from_four(no_unraisable):
    # compiled (and first evaluated) on a thread that then exits
    exprs: list = []
    t = threading.Thread(target=lambda: exprs.extend(compile(e) for e in EXPRESSIONS))
    t.start()
    t.join()
    datasets = {seed: _records(seed) for seed in range(4)}
    expected = {seed: [[_outcome(e, d) for e in exprs] for d in rows] for seed, rows in datasets.items()}
    assert any(o[0] == "error" for rows in expected.values() for row in rows for o in row)
    start = threading.Barrier(4)
    failures: list = []
    iterations = 25

    def worker(seed: int) -> None:
        try:
            start.wait()
            rows = datasets[seed]
            for _ in range(iterations):
                for d, want in zip(rows, expected[seed], strict=True):
                    got = [_outcome(e, d) for e in exprs]
                    if got != want:
                        failures.append((seed, d, got, want))
                        return
        except BaseException as exc:  # noqa: BLE001 - a panic must fail the test, not the thread
            failures.append((seed, repr(exc)))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads)
    assert not failures, failures[:3]


def test_compile_from_many_threads_and_bindings_on_each(no_unraisable):
    results: dict = {}

    def worker(i: int) -> None:
        try:
            e = compile(f"$x * {i} + value")  # a variable: the jsonatapy engine
            results[i] = [e.evaluate({"value": v}, bindings={"x": 10}) for v in range(50)]
        except BaseException as exc:  # noqa: BLE001
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results == {i: [10 * i + v for v in range(50)] for i in range(4)}


def test_jsonatapy_objects_are_never_dropped_on_another_thread(no_unraisable):
    """Dropping a jsonatapy object on another thread is an (unraisable) error: the per-thread
    cache drops each one on its own thread, when the thread ends."""
    errors: list = []
    src = "$map([1, 2], function($v) { $v + 100 })"

    def run():
        assert compile(src).evaluate(None) == [101, 102]
        try:
            compile("$error('x' & value)").evaluate({"value": 1})
        except EvaluationError as exc:
            errors.append(exc)  # outlives the thread, with its traceback
        try:
            compile("$map(")
        except Exception as exc:  # noqa: BLE001 - the syntax error, kept too
            errors.append(exc)

    for _ in range(3):
        t = threading.Thread(target=run)
        t.start()
        t.join()
    expression_module.compile.cache_clear()
    gc.collect()
    assert compile(src).evaluate(None) == [101, 102]
    assert len(errors) == 6
    errors.clear()


def test_per_thread_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(expression_module, "_PER_THREAD", 8)
    out: list = []

    def run():
        for i in range(30):
            out.append(compile(f"[1..{i + 1}] ~> $count()").evaluate(None))
        out.append(len(expression_module._THREAD.cache))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert out[:30] == list(range(1, 31)) and out[30] <= 8


@pytest.mark.parametrize("expr", [PANIC_REPRO, "value * 2"])
def test_bindings_and_no_input_on_both_engines(expr):
    e = compile(expr)
    assert e.raw(UNDEFINED) is UNDEFINED
    assert e.evaluate({"value": 2}, bindings={"unused": 1}) == 4
