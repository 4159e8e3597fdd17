"""flownb.testing.HttpTarget: a real HTTP server for users' flow tests (outages, records)."""

from __future__ import annotations

import time

import httpx
import pytest

import flownb
from flownb.testing import HttpTarget

pytestmark = pytest.mark.integration


def test_a_flow_pushes_through_the_first_failures_to_the_target():
    sample = [{"n": i, "email": f"u{i}@x.io"} for i in range(5)]
    with HttpTarget(fail_first=3, status=503, retry_after=0) as crm:
        flow = flownb.Flow(name="push", trigger=flownb.step("src", "schedule", cron="* * * * *"), steps=[
            flownb.step("push", "http.request", method="POST", url=f"{crm.url}/contacts", output="input",
                        retry={"max_attempts": 5, "initial": "10ms"})])
        result = flow.test(sample, live=True)
    assert result.dead_letters == []
    assert crm.refused == 3
    assert sorted(r.json["n"] for r in crm.received) == list(range(5))
    assert {r.path for r in crm.received} == {"/contacts"} and {r.method for r in crm.received} == {"POST"}
    assert all(len(r.headers["idempotency-key"]) == 32 for r in crm.received)
    assert sorted(b["n"] for b in result.outputs["push"]) == list(range(5))


def test_an_outage_in_seconds_then_the_answer():
    with HttpTarget(outage=0.4, status=502, retry_after=1.5, answer={"ok": True}, answer_status=201) as t:
        r = httpx.post(f"{t.url}/a?x=1", json={"n": 1})
        assert r.status_code == 502 and r.headers["retry-after"] == "1.5"
        time.sleep(0.5)
        r = httpx.put(f"{t.url}/b?x=2", json={"n": 2})
        assert r.status_code == 201 and r.json() == {"ok": True}
    assert t.refused == 1
    assert [(x.method, x.path, x.query, x.json) for x in t.received] == [("PUT", "/b", {"x": "2"}, {"n": 2})]


def test_echo_by_default_and_url_needs_a_running_target():
    t = HttpTarget()
    with pytest.raises(RuntimeError, match="not running"):
        _ = t.url
    with t:
        assert httpx.post(t.url, json={"a": [1, "é"]}).json() == {"a": [1, "é"]}
    with pytest.raises(ValueError):
        HttpTarget(fail_first=-1)
