"""The flow and records that the workbench tests run on both runtimes (docs/debugging.md).

``price`` maps ``total: $number(amount) * 2``: a record whose amount is ``"n/a"`` dies there with
an EvaluationError (not retryable: attempt 1). :func:`fixed` is the same flow with the corrected
rule; ``sink`` is the idempotent ``lt.sink`` (tests/runtime/runtimes.py)."""

from __future__ import annotations

import uuid

import flownb

BUGGY = "$number(amount) * 2"
FIXED = '$number($replace(amount, "n/a", "0")) * 2'


def make(sink_path, rule: str = BUGGY, name: str | None = None) -> flownb.Flow:
    return flownb.Flow(
        name=name or f"wb-{uuid.uuid4().hex[:8]}",
        trigger=flownb.step("src", "lt.count", total=0),
        steps=[flownb.step("price", "mapping", fields={"n": "n", "total": rule, "customer": "customer",
                                                        "note": "note"}),
               flownb.step("sink", "lt.sink", path=str(sink_path))])


def fixed(flow: flownb.Flow) -> flownb.Flow:
    data = flow.model_dump(mode="python")
    data["steps"][0]["config"]["fields"]["total"] = FIXED
    return flownb.Flow.model_validate(data)


def records(n: int = 12) -> list[dict]:
    """Every third record (n = 0, 3, 6 …) has amount "n/a"; ``customer.tier`` is a JSON null."""
    return [{"n": i, "amount": "n/a" if i % 3 == 0 else str(i * 10),
             "customer": {"email": f"c{i}@example.com", "tier": None}, "note": f"row {i}"}
            for i in range(n)]


POISON = [i for i in range(12) if i % 3 == 0]
