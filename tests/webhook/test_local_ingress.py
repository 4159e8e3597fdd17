"""The embedded runtime's ingress without the HTTP server: FirstQueue (what the Jupyter extension
appends through) writes the rows LocalRuntime.submit_many writes, next to a runtime holding the lock."""

from __future__ import annotations

import asyncio
import threading
import time

from flownb.errors import MessageError, QueueFull
from flownb.flow import Flow, step
from flownb.runtime.ingress import Backpressure
from flownb.runtime.local import LocalRuntime
from flownb.runtime.local.ingress import FirstQueue, LocalIngest


def _flow(tmp, name: str = "fq") -> Flow:
    return Flow(name=name, trigger=step("hook", "webhook", token_env="T"),
                steps=[step("sink", "csv.write", path=str(tmp / "out.csv"), columns=["n"], fsync=False)])


def test_first_queue_contract_matches_submit_many(tmp_path):
    fq = FirstQueue(_flow(tmp_path), tmp_path / "state", max_queue=2)
    try:
        out = fq.submit_many([({"n": 1}, {"h": 1}), ([1], None), ({"n": float("nan")}, None),
                              ({"n": 2}, None), ({"n": 3}, None)])
        assert [type(r).__name__ for r in out] == ["Message", "MessageError", "MessageError", "Message",
                                                   "QueueFull"]
        assert isinstance(out[1], MessageError) and isinstance(out[4], QueueFull)
        assert out[0].headers == {"h": "1"} and out[0].step == "hook" and out[0].flow == "fq"
        assert fq.store.depth("sink") == 2
    finally:
        fq.close()


def test_first_queue_refuses_what_the_runtime_refuses_a_body_over_max_message_bytes(tmp_path):
    flow = Flow(name="fq", trigger=step("hook", "webhook", token_env="T"), max_message_bytes="2KiB",
                steps=[step("sink", "csv.write", path=str(tmp_path / "out.csv"), columns=["n"], fsync=False)])
    items = [({"n": 1}, None), ({"n": "x" * 4096}, None)]
    fq = FirstQueue(flow, tmp_path / "fq")
    rt = LocalRuntime(flow, tmp_path / "rt")
    try:
        for out in (fq.submit_many(items), rt.submit_many(items)):
            assert [type(r).__name__ for r in out] == ["Message", "MessageTooLarge"]
        assert fq.store.depth("sink") == rt.store.depth("sink") == 1
    finally:
        fq.close()
        rt.close()


def test_appended_while_the_runtime_runs_is_processed_once(tmp_path):
    flow = _flow(tmp_path)
    rt = LocalRuntime(flow, tmp_path / "state")  # holds the flow's lock, as a kernel does
    stop = threading.Event()
    runner = threading.Thread(target=rt.run, kwargs={"stop_event": stop})
    runner.start()
    fq = FirstQueue(flow, tmp_path / "state")
    ingest = LocalIngest(fq)

    async def go():
        await ingest.start()
        try:
            accepted = [await ingest.submit({"n": i}, {}, reply=True) for i in range(5)]
            assert all(a.reply is None for a in accepted)  # no final-output listener: answered 202
            return [a.id for a in accepted]
        finally:
            await ingest.close()

    try:
        ids = asyncio.run(go())
        assert len(set(ids)) == 5
        deadline = time.monotonic() + 20
        out = tmp_path / "out.csv"
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 6):
            time.sleep(0.05)
        assert sorted(out.read_text().splitlines()[1:]) == [str(i) for i in range(5)]
    finally:
        stop.set()
        runner.join(30)
        rt.close()
        fq.close()


def test_full_first_queue_is_backpressure(tmp_path):
    fq = FirstQueue(_flow(tmp_path), tmp_path / "state", max_queue=1)
    ingest = LocalIngest(fq)

    async def go():
        await ingest.start()
        try:
            await ingest.submit({"n": 1}, {}, reply=False)
            try:
                await ingest.submit({"n": 2}, {}, reply=False)
            except Backpressure as exc:
                return str(exc)
            return None
        finally:
            await ingest.close()

    try:
        assert "holds 1 messages (limit 1)" in asyncio.run(go())
    finally:
        fq.close()
