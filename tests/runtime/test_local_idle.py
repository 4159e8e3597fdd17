"""An idle embedded runtime writes nothing: claiming from an empty queue takes no write lock (the
webhook ingress and the poller share that lock), while a claim that finds rows is committed before
its step runs (poison counting)."""

from __future__ import annotations

import flownb
from flownb.runtime.local import LocalRuntime


def test_idle_passes_take_no_write_lock_and_a_claim_commits_once(tmp_path):
    nothing = "def p(s, c):\n    return []\n"
    f = flownb.Flow(name="idle", trigger=flownb.step("src", "python.poll", source=nothing, function="p",
                                                     interval="1h"),
                    steps=[flownb.step("a", "mapping", fields={"x": "x"}),
                           flownb.step("b", "mapping", fields={"x": "x"})])
    writes: list[str] = []

    def trace(sql: str) -> None:
        if sql.startswith("BEGIN IMMEDIATE"):
            writes.append(sql)
    with LocalRuntime(f, tmp_path) as rt:
        rt.store.conn.set_trace_callback(trace)
        for _ in range(20):
            assert rt.drain_pass() == 0
        assert writes == []
        rt.feed([{"x": 1}])
        writes.clear()
        assert rt.process_step("a") == 1
        assert len(writes) == 2  # the claim, then the batch's commit
