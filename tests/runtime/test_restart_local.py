"""SIGKILL-and-restart of a real ``flownb run`` with each built-in polling trigger and both JSONata
engines: every row arrives at an idempotent sink, nothing is replayed beyond one in-flight batch,
and the restarted process is healthy (scenario: ``restart_kit``)."""

from __future__ import annotations

import pytest
import restart_kit as kit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SOURCES = ["csv", "sqlite", pytest.param("postgres", marks=[pytest.mark.integration, pytest.mark.postgres]),
           pytest.param("http", marks=pytest.mark.integration), "python"]
ENGINES = ["compiled", "jsonatapy"]
#: a crash repeats at most the uncommitted batch of each step (docs/local.md): the csv.write log
#: sees at most its own batch (500) again
LOCAL_BATCH = 500


def _command(tmp_path):
    return ["run", "{spec}", "--state-dir", str(tmp_path / "state")]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("kind", SOURCES)
def test_kill_9_and_restart_delivers_every_row(kind, engine, tmp_path):
    if kind == "postgres" and (why := kit.pg_available()):
        pytest.skip(why)
    source = kit.make_source(kind, tmp_path)
    try:
        flow = kit.build_flow(kit.unique_name(f"rs-{kind}-{engine}"), source.trigger(), engine, tmp_path)
        figures = kit.run_kill_restart(source=source, flow=flow, tmp=tmp_path, command=_command(tmp_path),
                                       dup_bound=LOCAL_BATCH,
                                       pending=kit.local_pending(tmp_path / "state", flow.name))
        print(kind, engine, figures)
    finally:
        source.close()


@pytest.mark.parametrize(("engine", "catchup"), [("compiled", True), ("jsonatapy", True), ("compiled", False)])
def test_kill_9_and_restart_schedule_fires(engine, catchup, tmp_path):
    flow = kit.schedule_flow(kit.unique_name(f"rs-schedule-{engine}"), engine, tmp_path, catchup=catchup)
    figures = kit.run_schedule_kill_restart(flow=flow, tmp=tmp_path, command=_command(tmp_path), catchup=catchup)
    print("schedule", engine, catchup, figures)


def test_csv_write_after_a_torn_last_line_starts_a_new_line(tmp_path):
    """A writer killed mid-line (or a hand-written file) leaves a last line without its newline: the
    restarted csv.write must not glue its first row onto it (that row would be lost in the fragment)."""
    from flownb.components.base import Context
    from flownb.components.files import CsvWrite
    from flownb.message import Message

    out = tmp_path / "log.csv"
    out.write_text("id,label\n1,r1\n2,r")   # the kill tore row 2; its batch is redelivered
    cfg = CsvWrite.Config(path=str(out))
    writer = CsvWrite(cfg, Context(flow="f", step="log", config=cfg))
    writer.setup()
    writer.process_batch([Message(body={"id": 2, "label": "r2"}), Message(body={"id": 3, "label": "r3"})],
                         writer.ctx)
    assert out.read_text().splitlines() == ["id,label", "1,r1", "2,r", "2,r2", "3,r3"]
