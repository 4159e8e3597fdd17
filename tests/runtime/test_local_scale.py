"""A source of any size on one machine: ``flownb run --until-idle`` on a CSV holds about one batch
at a time (its peak RSS does not grow with the file), the first queue stays within
``FLOWNB_MAX_QUEUE`` plus one poll, the state database gives its space back once the queues are
empty, and a ``kill -9`` in the middle of a poll resumes from the committed offset: the sink gets
every row exactly once and the source is not read again from its start."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from restart_kit import sink_count

from flownb import Flow, step
from flownb.runtime.local import LocalRuntime

pytestmark = pytest.mark.slow


def make_csv(path: Path, n: int) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["id", "email", "qty", "price", "note"])
        for i in range(1, n + 1):
            w.writerow([i, f"User{i}@Example.COM", 1 + i % 5, f"{2.5 + i % 7:.2f}", "x" * 40])
    t = time.time() - 60  # settled: not being written any more
    os.utime(path, (t, t))
    return path


def file_flow(src: Path, tmp: Path, *, sink: str = "csv", log: bool = False) -> Flow:
    steps = [step("shape", "mapping", fields={"id": "id", "email": "$lowercase(email)", "total": "qty * price"}),
             step("big", "filter", condition="total >= 0")]
    if log:  # every delivery, duplicates included (a crash repeats at most a batch)
        steps.append(step("log", "csv.write", path=str(tmp / "deliveries.csv"), columns=["id"]))
    if sink == "csv":
        steps.append(step("out", "csv.write", path=str(tmp / "out.csv"), columns=["id", "email", "total"]))
    else:
        steps.append(step("save", "sql.upsert", url=f"sqlite:///{tmp / 'sink.db'}", table="rows", key=["id"],
                          create=True))
    return Flow(name="scale", trigger=step("src", "csv.poll", path=str(src), cursor="id", key="id",
                                           interval="1h"), steps=steps)


#: ``flownb run`` in a fresh interpreter that writes its peak RSS (VmHWM, KiB) to argv[1] as it ends:
#: ``ru_maxrss`` of a child would include this test process's own high-water mark (Linux carries it
#: over fork and exec)
LAUNCH = """import sys
out = sys.argv.pop(1)
try:
    from flownb.cli import main
    code = main(sys.argv[1:])
finally:
    if out:
        with open("/proc/self/status") as fh:
            hwm = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
        with open(out, "w") as fh:
            fh.write(hwm)
sys.exit(code)
"""


def flownb_run(spec: Path, state: Path, hwm: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LAUNCH, str(hwm or ""), "run", str(spec), "--until-idle",
                             "--state-dir", str(state)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def run_measured(tmp: Path, n: int) -> tuple[float, int, int]:
    """Peak RSS (MiB) of a ``flownb run --until-idle`` child on ``n`` rows, rows written, state size."""
    tmp.mkdir()
    src = make_csv(tmp / "src.csv", n)
    spec = file_flow(src, tmp).save(tmp / "flow.yaml")
    proc = flownb_run(spec, tmp / "state", tmp / "peak-rss")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    with open(tmp / "out.csv", "rb") as fh:
        written = sum(1 for _ in fh) - 1
    size = sum(p.stat().st_size for p in (tmp / "state").glob("scale.db*"))
    return int((tmp / "peak-rss").read_text()) / 1024, written, size


def test_peak_memory_does_not_grow_with_the_source_and_the_state_db_gives_space_back(tmp_path):
    small_rss, small_rows, _ = run_measured(tmp_path / "small", 20_000)
    big_rss, big_rows, big_db = run_measured(tmp_path / "big", 200_000)
    assert (small_rows, big_rows) == (20_000, 200_000)
    # ten times the rows, about the same memory (before streaming: 90 MB → 529 MB for 10k → 100k)
    assert big_rss < small_rss * 1.15, (small_rss, big_rss)
    assert big_rss < 200, big_rss
    # 200,000 rows went through the queues (~60 MB of messages); empty queues leave a small file
    assert big_db < 8 * 2**20, big_db


#: the queues a poll feeds, with fused stages (a poll runs through shape, big and log — csv.write,
#: which has effects, ends the stage — in memory, and its outputs are queued for 'out') and without
FED = {True: ["shape", "big", "log", "out"], False: ["shape"]}


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "no-fuse"])
def test_the_queues_a_poll_feeds_stay_within_max_queue_plus_one_poll(tmp_path, fuse):
    src = make_csv(tmp_path / "src.csv", 30_000)
    flow = file_flow(src, tmp_path, log=True)
    depths: list[int] = []
    with LocalRuntime(flow, tmp_path / "state", max_queue=3_000, fuse=fuse) as rt:
        summary = rt.run(until_idle=True, progress=lambda _step, _n: depths.append(rt.store.depth_of(FED[fuse])))
        assert summary.steps["out"].outputs == 30_000 and not summary.pending
        assert max(depths) <= 3_000 + 1_000, max(depths)   # max_queue + one poll (batch_size 1,000)
        assert max(depths) >= 2_000  # the limit, not the source's size, is what held it back
        assert rt.store.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        assert rt.store.conn.execute("PRAGMA freelist_count").fetchone()[0] < 256  # given back


def test_a_long_running_flownb_run_is_held_back_the_same_way(tmp_path):
    """Without --until-idle (run until stopped), a source with a backlog is polled batch by batch,
    and again only while the first queue has room."""
    import threading
    src = make_csv(tmp_path / "src.csv", 20_000)
    depths: list[int] = []
    stop = threading.Event()
    with LocalRuntime(file_flow(src, tmp_path, log=True), tmp_path / "state", max_queue=3_000) as rt:
        def progress(_step, _n):
            depths.append(rt.store.depth_of(FED[True]))
            if rt.stats["out"].outputs >= 20_000:
                stop.set()
        worker = threading.Thread(target=rt.run, kwargs={"stop_event": stop, "progress": progress})
        worker.start()
        worker.join(120)
        stop.set()
        assert not worker.is_alive()
        assert rt.stats["out"].outputs == 20_000
        # each batch is processed before the next poll here (before streaming: all 20,000 at once)
        assert max(depths) <= 3_000 + 1_000, max(depths)


def test_sql_poll_is_held_back_the_same_way(tmp_path):
    """sql.poll's full batch asks to poll again at once, like csv.poll mid-pass: the same bound."""
    con = sqlite3.connect(tmp_path / "src.db")
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, email TEXT, qty INTEGER, price REAL)")
    con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)",
                    [(i, f"User{i}@X.COM", 1 + i % 5, 2.5) for i in range(1, 20_001)])
    con.commit()
    con.close()
    flow = file_flow(tmp_path / "unused.csv", tmp_path, log=True)
    flow = Flow(name="scale", trigger=step("src", "sql.poll", url=f"sqlite:///{tmp_path / 'src.db'}",
                                           table="orders", cursor="id", key="id", interval="1h"),
                steps=flow.steps)
    depths: list[int] = []
    with LocalRuntime(flow, tmp_path / "state", max_queue=3_000) as rt:
        summary = rt.run(until_idle=True, progress=lambda _step, _n: depths.append(rt.store.depth_of(FED[True])))
        assert summary.steps["out"].outputs == 20_000
        assert 2_000 <= max(depths) <= 3_000 + 1_000, max(depths)


def test_a_state_db_of_an_older_release_is_switched_to_incremental_vacuum_once(tmp_path):
    src = make_csv(tmp_path / "src.csv", 3_000)
    flow = file_flow(src, tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "scale.db")  # made as releases before auto-vacuum made it, with rows
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE junk (x BLOB)")
    db.executemany("INSERT INTO junk VALUES (?)", [(b"x" * 4000,)] * 2000)
    db.execute("DROP TABLE junk")
    db.commit()
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    db.close()
    before = (state / "scale.db").stat().st_size
    with LocalRuntime(flow, state) as rt:
        assert rt.store.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert rt.run(until_idle=True).steps["out"].outputs == 3_000
    assert (state / "scale.db").stat().st_size < before / 4, before


def test_kill_9_mid_poll_resumes_from_the_committed_offset(tmp_path):
    n = 60_000
    src = make_csv(tmp_path / "src.csv", n)
    spec = file_flow(src, tmp_path, sink="sql", log=True).save(tmp_path / "flow.yaml")
    state = tmp_path / "state"
    first = flownb_run(spec, state)
    deadline = time.monotonic() + 120
    at_kill = 0
    while time.monotonic() < deadline and first.poll() is None:
        at_kill = sink_count(tmp_path)
        if at_kill >= 8_000:
            os.kill(first.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    first.wait(10)
    assert first.returncode == -signal.SIGKILL, first.stdout.read().decode(errors="replace")[-3000:]
    cursor = trigger_state(state)
    assert 0 < at_kill < n and "pass" in cursor, (at_kill, cursor)  # killed mid-poll
    offset = cursor["pass"]["offset"]
    assert 0 < offset < src.stat().st_size

    second = flownb_run(spec, state)
    out = second.communicate(timeout=300)[0]
    assert second.returncode == 0, out.decode(errors="replace")[-3000:]
    con = sqlite3.connect(tmp_path / "sink.db")
    rows = dict(con.execute("select id, email from rows"))
    con.close()
    assert len(rows) == n and rows[1] == "user1@example.com" and rows[n] == f"user{n}@example.com"
    with open(tmp_path / "deliveries.csv", newline="") as fh:
        delivered = [int(r["id"]) for r in csv.DictReader(fh)]
    # every row at least once; again only what was in flight at the kill (the uncommitted batch of
    # each step and the rows queued after the offset), never the source from its start
    assert set(delivered) == set(range(1, n + 1))
    assert len(delivered) - n <= 2 * 500, len(delivered) - n
    final = trigger_state(state)
    assert "pass" not in final and final["cursor"] == n


def trigger_state(state: Path) -> dict:
    import json
    con = sqlite3.connect(state / "scale.db", timeout=5)
    try:
        return json.loads(con.execute("select state from trigger_state").fetchone()[0])
    finally:
        con.close()
