"""The JSONata test suite (jsonata-js v2.2.2 ``test/test-suite``, vendored in ``jsonata-suite/``) run
against ``flownb.rules`` and against jsonatapy directly.

    python -m tests.rules.jsonata_suite            # the table published in docs/rules.md
    python -m tests.rules.jsonata_suite --failures # every failing case, per engine, and why
    python -m tests.rules.jsonata_suite --update   # rewrite jsonata_suite_known.json

A case passes as in jsonata-js's own runner (``test/run-test-suite.js``): ``result`` is compared by
deep equality (object key order ignored, numbers by value, booleans are not numbers),
``undefinedResult`` wants JSONata undefined, ``code`` wants an error with that code when compiling or
evaluating, ``error`` an error with its ``code`` (and its ``message`` in the error text). Not compared:
``token`` (no engine here reports the token) and the other fields of ``error`` (``value``,
``functionName``). Cases with ``timelimit`` and ``depth`` rely on the jsonata-js runner's
instrumentation (``__evaluate_entry`` hooks raising ``U1001``): flownb.rules runs them with its own
deadline and depth guard (``Expression.raw(timeout=timelimit, max_depth=depth)``; an
``EvaluationTimeout`` or ``D1011`` stands for ``U1001``), jsonatapy with its ``timeout`` and
``max_stack_depth`` (``D1012``/``D1011`` stand for ``U1001``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

SUITE = Path(__file__).parent / "jsonata-suite"
KNOWN = Path(__file__).parent / "jsonata_suite_known.json"
COMMAND = "python -m tests.rules.jsonata_suite"
_CODE = re.compile(r"\b([STDU]\d{4})\b")
_NO_INPUT = object()  # the case's input is JSONata undefined ("dataset": null)


@dataclass
class Case:
    id: str  # group/file.json or group/file.json#index
    expr: str
    data: Any
    bindings: dict
    kind: str  # result | undefined | code | error
    expected: Any = None
    code: str | None = None
    message: str | None = None
    timelimit: int | None = None
    depth: int | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def guarded(self) -> bool:
        return self.timelimit is not None and self.depth is not None


@dataclass
class Outcome:
    status: str  # pass | fail | skip
    detail: str = ""
    engine: str = ""  # flownb only: compiled | jsonatapy | "" (compile error)

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@lru_cache(maxsize=1)
def _datasets() -> dict:
    return {p.stem: json.loads(p.read_text()) for p in (SUITE / "datasets").glob("*.json")}


def load_cases() -> list[Case]:
    datasets = _datasets()
    cases = []
    for gdir in sorted((SUITE / "groups").iterdir()):
        for path in sorted(gdir.glob("*.json")):
            spec = json.loads(path.read_text())
            items = spec if isinstance(spec, list) else [spec]
            for i, c in enumerate(items):
                cid = f"{gdir.name}/{path.name}" + (f"#{i}" if isinstance(spec, list) else "")
                expr = c["expr"] if "expr" in c else (gdir / c["expr-file"]).read_text()
                if "data" in c:
                    data = c["data"]
                elif c.get("dataset") is None:
                    data = _NO_INPUT
                else:
                    data = datasets[c["dataset"]]
                case = Case(cid, expr, data, c.get("bindings") or {}, "", raw=c,
                            timelimit=c.get("timelimit"), depth=c.get("depth"))
                if "undefinedResult" in c:
                    case.kind = "undefined"
                elif "result" in c:
                    case.kind, case.expected = "result", c["result"]
                elif "error" in c:
                    case.kind, case.code = "error", c["error"].get("code")
                    case.message = c["error"].get("message")
                elif "code" in c:
                    case.kind, case.code = "code", c["code"]
                else:  # pragma: no cover - the suite has none
                    raise ValueError(f"{cid}: nothing to test")
                cases.append(case)
    return cases


# -- comparison ------------------------------------------------------------------------------------

def same(x: Any, y: Any) -> bool:
    """chai's deep equality on JSON values: numbers by value, booleans apart from numbers."""
    tx, ty = type(x), type(y)
    if tx is bool or ty is bool or x is None or y is None:
        return tx is ty and x == y
    if tx in (int, float) and ty in (int, float):
        return x == y
    if tx is list and ty is list:
        return len(x) == len(y) and all(same(a, b) for a, b in zip(x, y, strict=True))
    if tx is dict and ty is dict:
        return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    return tx is ty and x == y


def _short(v: Any) -> str:
    try:
        s = orjson.dumps(v).decode()
    except TypeError:
        s = repr(v)
    return s if len(s) <= 120 else s[:117] + "..."


def judge(case: Case, ok: bool, value: Any = None, code: str | None = None, message: str = "",
          undefined: bool = False, engine: str = "") -> Outcome:
    """``ok``: evaluation gave ``value`` (or undefined); else the error ``code`` / ``message``."""
    if not ok:
        if case.kind in ("code", "error"):
            if code == case.code and (case.message is None or case.message in message):
                return Outcome("pass", engine=engine)
            return Outcome("fail", f"error {code} {message[:100]!r}; expected {case.code}"
                           + (f" {case.message!r}" if case.message else ""), engine)
        return Outcome("fail", f"error {code} {message[:120]!r}", engine)
    got = "undefined" if undefined else _short(value)
    if case.kind == "undefined":
        return Outcome("pass" if undefined else "fail", f"got {got}; expected undefined", engine)
    if case.kind == "result":
        if not undefined and same(value, case.expected):
            return Outcome("pass", engine=engine)
        return Outcome("fail", f"got {got}; expected {_short(case.expected)}", engine)
    return Outcome("fail", f"got {got}; expected error {case.code}", engine)


# -- engines ---------------------------------------------------------------------------------------

def run_jsonatapy(case: Case) -> Outcome:
    """The case on jsonatapy itself (``evaluate_json_or_none``: undefined told from null; a
    ``timelimit``/``depth`` case with jsonatapy's own ``timeout`` and ``max_stack_depth``)."""
    import jsonatapy

    kw = {"timeout": case.timelimit, "max_stack_depth": case.depth} if case.guarded else {}
    try:
        expr = jsonatapy.compile(case.expr)
    except ValueError as exc:
        m = _CODE.search(str(exc))
        return judge(case, False, code=m.group(1) if m else None, message=str(exc))
    payload = None if case.data is _NO_INPUT else orjson.dumps(case.data).decode()
    try:
        out = expr.evaluate_json_or_none(payload, case.bindings or None, **kw)
    except ValueError as exc:
        m = _CODE.search(str(exc))
        code = m.group(1) if m else None
        if case.guarded and code in ("D1011", "D1012"):
            code = "U1001"  # jsonatapy's stack-depth / timeout guard for the runner's
        return judge(case, False, code=code, message=str(exc))
    if out is None:
        return judge(case, True, undefined=True)
    return judge(case, True, orjson.loads(out))


def run_flownb(case: Case) -> Outcome:
    """The case through ``flownb.rules.compile(expr)`` and ``Expression.raw`` (a ``timelimit``/
    ``depth`` case with ``timeout`` and ``max_depth``)."""
    from flownb.errors import EvaluationTimeout, ExpressionError
    from flownb.rules import UNDEFINED, EvaluationError, compile

    kw = {"timeout": case.timelimit / 1000, "max_depth": case.depth} if case.guarded else {}
    try:
        expr = compile(case.expr)
    except ExpressionError as exc:
        code = getattr(exc, "code", None)
        if code is None:
            m = _CODE.search(str(exc))
            code = m.group(1) if m else None
        return judge(case, False, code=code, message=str(exc))
    data = UNDEFINED if case.data is _NO_INPUT else case.data
    try:
        v = expr.raw(data, case.bindings or None, **kw)
    except EvaluationTimeout as exc:  # the runner's U1001
        return judge(case, False, code="U1001", message=str(exc), engine=expr.engine)
    except EvaluationError as exc:
        code = "U1001" if case.guarded and exc.code == "D1011" else exc.code
        return judge(case, False, code=code, message=str(exc), engine=expr.engine)
    return judge(case, True, v, undefined=v is UNDEFINED, engine=expr.engine)


EXTRA_INPUTS = [None, [], {}, [1, 2, {"a": 1}], {"a": [1, [2, 3]], "b": {"c": None}}, "text", 3.5]


def cross_check(cases: list[Case] | None = None) -> list[tuple]:
    """Every suite expression the compiled engine takes, on every dataset (and a few more inputs),
    against jsonatapy: the differences as (expression, input index, ours, jsonatapy's). Errors
    agree on their code (T0410/T0411 are one kind, as in test_conformance)."""
    import jsonatapy

    from flownb.rules import UNDEFINED, EvaluationError, compile

    def norm(code):
        return "T0410" if code == "T0411" else code

    cases = load_cases() if cases is None else cases
    inputs = list(_datasets().values()) + EXTRA_INPUTS
    payloads = [orjson.dumps(d).decode() for d in inputs]
    out = []
    for text in sorted({c.expr for c in cases if not c.guarded}):
        try:
            expr = compile(text)
            ref = jsonatapy.compile(text)
        except Exception:  # noqa: BLE001 - compile errors are the suite's business
            continue
        if expr.engine != "compiled":
            continue
        for i, (data, payload) in enumerate(zip(inputs, payloads, strict=True)):
            try:
                r = ref.evaluate_json_or_none(payload)
                theirs = ("ok", UNDEFINED if r is None else orjson.loads(r))
            except ValueError as exc:
                m = _CODE.search(str(exc))
                theirs = ("error", norm(m.group(1) if m else None))
            try:
                ours = ("ok", expr.raw(data))
            except EvaluationError as exc:
                ours = ("error", norm(exc.code))
            if ours[0] == theirs[0] == "ok":
                a, b = ours[1], theirs[1]
                ok = a is b if UNDEFINED in (a, b) else same(a, b)
            else:
                ok = ours == theirs
            if not ok:
                out.append((text, i, ours, theirs))
    return out


@dataclass
class Report:
    cases: list[Case]
    jsonatapy: list[Outcome]
    flownb: list[Outcome]
    guarded: set  # ids of the timelimit/depth cases

    def ids(self, outcomes: list[Outcome], status: str = "pass") -> set[str]:
        return {c.id for c, o in zip(self.cases, outcomes, strict=True) if o.status == status}

    def counts(self) -> dict:
        compiled = [o for o in self.flownb if o.engine == "compiled"]
        return {
            "cases": len(self.cases),
            "skipped": sum(o.status == "skip" for o in self.jsonatapy),
            "jsonatapy_pass": sum(o.passed for o in self.jsonatapy),
            "flownb_pass": sum(o.passed for o in self.flownb),
            "flownb_compiled": len(compiled),
            "flownb_compiled_pass": sum(o.passed for o in compiled),
            "guarded": len(self.guarded),
            "guarded_jsonatapy_pass": len(self.ids(self.jsonatapy) & self.guarded),
            "guarded_flownb_pass": len(self.ids(self.flownb) & self.guarded),
        }


def run_all(cases: list[Case] | None = None) -> Report:
    cases = load_cases() if cases is None else cases
    ja = [run_jsonatapy(c) for c in cases]
    fl = [run_flownb(c) for c in cases]
    return Report(cases, ja, fl, {c.id for c in cases if c.guarded})


def table(report: Report) -> str:
    import jsonatapy

    n = report.counts()
    run = n["cases"] - n["skipped"]
    return "\n".join([
        f"| JSONata test suite (jsonata-js v2.2.2), {n['cases']} cases | passes |",
        "|---|---|",
        (f"| cases run (both engines; {n['guarded']} `timelimit`/`depth` cases with each engine's "
         f"deadline, {n['skipped']} skipped) | {run} |"),
        f"| jsonatapy {jsonatapy.__version__} alone | {n['jsonatapy_pass']} |",
        f"| flownb.rules (compiled engine + jsonatapy fallback) | {n['flownb_pass']} |",
        (f"| … of which evaluated by the compiled engine | {n['flownb_compiled_pass']} of "
         f"{n['flownb_compiled']} |"),
        ("| `timelimit`/`depth` cases: flownb.rules (`timeout`, `max_depth`) / jsonatapy (its "
         f"`timeout`, `max_stack_depth`) | {n['guarded_flownb_pass']} / "
         f"{n['guarded_jsonatapy_pass']} of {n['guarded']} |"),
        "",
        f"Regenerate: `{COMMAND}`",
    ])


def known(report: Report) -> dict:
    import jsonatapy

    def fails(outcomes):
        return {c.id: o.detail for c, o in zip(report.cases, outcomes, strict=True) if o.status == "fail"}

    return {"jsonatapy_version": jsonatapy.__version__, "jsonatapy_failures": fails(report.jsonatapy),
            "flownb_failures": fails(report.flownb)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    ap.add_argument("--failures", action="store_true", help="list failing cases per engine")
    ap.add_argument("--update", action="store_true", help=f"rewrite {KNOWN.name}")
    args = ap.parse_args(argv)
    report = run_all()
    if args.failures:
        for name, outcomes in (("jsonatapy", report.jsonatapy), ("flownb", report.flownb)):
            for c, o in zip(report.cases, outcomes, strict=True):
                if o.status == "fail":
                    print(f"{name:9} {o.engine:9} {c.id}: {c.expr[:80]!r}: {o.detail}")
        print()
    if args.update:
        KNOWN.write_text(json.dumps(known(report), indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
