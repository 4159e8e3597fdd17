"""sql.poll and sql.upsert against SQLite, the real PostgreSQL and the real MariaDB."""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa

from flownb.errors import ConfigError, FatalError, RetryableError
from flownb.message import Message

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MY_URL = "mysql+pymysql://root@127.0.0.1:3306/test"


def _reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(params=[
    "sqlite",
    pytest.param("postgres", marks=[pytest.mark.integration, pytest.mark.postgres]),
    pytest.param("mariadb", marks=[pytest.mark.integration, pytest.mark.mysql]),
])
def db(request, tmp_path):
    """(url, unique table name, engine); the table is dropped afterwards."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    elif request.param == "postgres":
        url = PG_URL
    else:
        if not _reachable(3306):  # only a server that is not there skips (a failure under CI: ci_guard);
            pytest.skip("MariaDB is not running on 127.0.0.1:3306 (scripts/services starts it)")
        url = MY_URL  # a server that is there but refuses us (driver, user, database) fails the test
    table = "t_" + uuid.uuid4().hex[:12]
    engine = sa.create_engine(url)
    yield url, table, engine
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()


def _orders(engine, table):
    md = sa.MetaData()
    t = sa.Table(table, md,
                 sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("updated_at", sa.DateTime),
                 sa.Column("amount", sa.Numeric(10, 2)),
                 sa.Column("name", sa.String(50)))
    md.create_all(engine)
    return t


def _insert(engine, t, rows):
    with engine.begin() as conn:
        conn.execute(t.insert(), rows)


T0 = dt.datetime(2024, 1, 1, 12, 0, 0)


def _row(i, minutes, amount="1.50"):
    return {"id": i, "updated_at": T0 + dt.timedelta(minutes=minutes), "amount": Decimal(amount),
            "name": f"n{i}"}


# -- sql.poll ---------------------------------------------------------------------------------------

def test_poll_equal_cursor_values_across_batches_neither_lost_nor_repeated(db, trigger_runner):
    url, table, engine = db
    t = _orders(engine, table)
    # 7 rows share one timestamp; batch_size 3 cuts through that group
    _insert(engine, t, [_row(i, 0 if i <= 7 else i) for i in range(1, 11)])
    runner = trigger_runner("sql.poll", {"url": url, "table": table, "cursor": "updated_at", "key": "id",
                                         "batch_size": 3, "interval": "1m"})
    state, seen = {}, []
    for _ in range(10):
        msgs, payloads, state = runner.poll(state)
        seen += [m.body["id"] for m in msgs]
        if not msgs:
            break
    assert seen == list(range(1, 11))
    assert runner.next_delay(state) == 60.0
    # a row arriving later with the same (old) cursor value but a higher key is still seen
    _insert(engine, t, [_row(11, 10)])
    msgs, _, state = runner.poll(state)
    assert [m.body["id"] for m in msgs] == [11]
    assert runner.poll(state)[0] == []


def test_poll_values_are_json_friendly_and_state_round_trips(db, trigger_runner):
    url, table, engine = db
    t = _orders(engine, table)
    _insert(engine, t, [_row(1, 0, "2.00"), _row(2, 5, "3.25")])
    runner = trigger_runner("sql.poll", {"url": url, "table": table, "cursor": "updated_at", "key": "id"})
    msgs, payloads, state = runner.poll({})
    assert msgs[0].body == {"id": 1, "updated_at": "2024-01-01T12:00:00", "amount": 2, "name": "n1"}
    assert msgs[1].body["amount"] == 3.25
    assert state == {"cursor": "2024-01-01T12:05:00", "cursor_type": "datetime", "key": 2, "key_type": "json"}
    assert payloads[0].startswith(b"{")
    # a fresh runner (a restart) continues from the saved state
    runner2 = trigger_runner("sql.poll", {"url": url, "table": table, "cursor": "updated_at", "key": "id"})
    _insert(engine, t, [_row(3, 10)])
    msgs, _, state = runner2.poll(state)
    assert [m.body["id"] for m in msgs] == [3]


def test_poll_without_key_never_splits_an_equal_cursor_group(db, trigger_runner):
    url, table, engine = db
    t = _orders(engine, table)
    _insert(engine, t, [_row(1, 1), _row(2, 2), _row(3, 2), _row(4, 2), _row(5, 3), _row(6, 3)])
    runner = trigger_runner("sql.poll", {"url": url, "table": table, "cursor": "updated_at",
                                         "batch_size": 2})
    state, batches = {}, []
    for _ in range(6):
        msgs, _, state = runner.poll(state)
        if not msgs:
            break
        batches.append(sorted(m.body["id"] for m in msgs))
    assert sum(batches, []) == [1, 2, 3, 4, 5, 6]
    assert [2, 3, 4] in batches  # the group with minute 2 came whole


def test_poll_query_mode_and_start(db, trigger_runner):
    url, table, engine = db
    t = _orders(engine, table)
    _insert(engine, t, [_row(i, i) for i in range(1, 6)])
    runner = trigger_runner("sql.poll", {"url": url, "query": f"SELECT id, name FROM {table} WHERE id <> 3",
                                         "cursor": "id", "start": 1, "batch_size": 2})
    state, seen = {}, []
    for _ in range(5):
        msgs, _, state = runner.poll(state)
        if not msgs:
            break
        seen += [m.body for m in msgs]
    assert seen == [{"id": 2, "name": "n2"}, {"id": 4, "name": "n4"}, {"id": 5, "name": "n5"}]
    assert state["cursor"] == 5


def test_poll_missing_table_is_fatal_and_outage_is_retryable(trigger_runner, tmp_path):
    import sqlite3
    with pytest.raises(ConfigError, match=r"the SQLite database '.*x.db' does not exist"):  # at setup()
        trigger_runner("sql.poll", {"url": f"sqlite:///{tmp_path / 'x.db'}", "table": "nope", "cursor": "id"})
    assert not (tmp_path / "x.db").exists()  # a reader creates no empty database
    sqlite3.connect(tmp_path / "x.db").close()
    runner = trigger_runner("sql.poll", {"url": f"sqlite:///{tmp_path / 'x.db'}", "table": "nope",
                                         "cursor": "id"})
    with pytest.raises(FatalError, match=r"sql.poll 'src': table 'nope' does not exist in sqlite:///.*x.db"):
        runner.poll({})
    down = trigger_runner("sql.poll", {"url": "postgresql+psycopg://postgres@127.0.0.1:1/test",
                                       "table": "t", "cursor": "id"})
    with pytest.raises(RetryableError, match="database unavailable"):
        down.poll({})


def test_poll_config_errors(flow_factory):
    with pytest.raises(ConfigError, match="exactly one of 'table' or 'query'"):
        flow_factory(("sql.poll", {"url": "sqlite://", "cursor": "id"})).validate_components()
    with pytest.raises(ConfigError, match="not a plain table"):
        flow_factory(("sql.poll", {"url": "sqlite://", "table": "a; drop", "cursor": "id"})).validate_components()
    with pytest.raises(ConfigError, match="not a SQLAlchemy URL"):
        flow_factory(("sql.poll", {"url": "nonsense", "table": "a", "cursor": "id"})).validate_components()
    with pytest.raises(ConfigError, match="url_env"):
        flow_factory(("sql.poll", {"table": "a", "cursor": "id"})).validate_components()


def test_poll_url_from_env(trigger_runner, tmp_path, monkeypatch):
    path = tmp_path / "e.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    t = _orders(engine, "o")
    _insert(engine, t, [_row(1, 1)])
    monkeypatch.setenv("FLOWNB_TEST_DB", f"sqlite:///{path}")
    runner = trigger_runner("sql.poll", {"url_env": "FLOWNB_TEST_DB", "table": "o", "cursor": "id"})
    assert [m.body["id"] for m in runner.poll({})[0]] == [1]


# -- sql.upsert -------------------------------------------------------------------------------------

def _msgs(*bodies):
    return [Message(body=b, flow="f", step="src") for b in bodies]


def _all(engine, table):
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY id"))]


def test_upsert_create_then_idempotent_update(db, step_runner):
    url, table, engine = db
    runner = step_runner("sql.upsert", {"url": url, "table": table, "key": ["id"], "create": True})
    batch = _msgs({"id": 1, "name": "a", "total": 1.5, "tags": ["x"]}, {"id": 2, "name": "b", "total": 2.0,
                                                                         "tags": []})
    outcomes = runner.run_batch(batch)
    assert all(o.ok for o in outcomes)
    assert [o.outputs[0].body for o in outcomes] == [m.body for m in batch]
    # replay the same batch, plus an update of id 1 and an insert of id 3: no duplicates
    outcomes = runner.run_batch(_msgs({"id": 1, "name": "a", "total": 1.5, "tags": ["x"]},
                                      {"id": 1, "name": "A2", "total": 9.0},
                                      {"id": 3, "name": "c", "total": 3.0, "tags": None}))
    assert all(o.ok for o in outcomes)
    rows = _all(engine, table)
    assert [(r["id"], r["name"], r["total"]) for r in rows] == [(1, "A2", 9.0), (2, "b", 2.0), (3, "c", 3.0)]


def test_upsert_composite_key_and_bad_rows_dead_letter_alone(db, step_runner):
    url, table, engine = db
    md = sa.MetaData()
    sa.Table(table, md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
             sa.Column("region", sa.String(20), primary_key=True),
             sa.Column("qty", sa.Integer, nullable=False),
             sa.Column("seen", sa.DateTime))
    md.create_all(engine)
    runner = step_runner("sql.upsert", {"url": url, "table": table, "key": ["id", "region"]})
    outcomes = runner.run_batch(_msgs(
        {"id": 1, "region": "eu", "qty": 1, "seen": "2024-05-01T10:00:00"},
        {"id": 1, "region": "us", "qty": 2},
        {"id": 2, "region": "eu", "qty": 3, "colour": "red"},     # unknown column
        {"region": "eu", "qty": 4},                               # no key
        {"id": 3, "region": "eu", "qty": None},                   # NOT NULL violated
    ))
    assert [o.ok for o in outcomes] == [True, True, False, False, False]
    assert all(o.dead for o in outcomes[2:])
    assert "colour" in outcomes[2].error.message and "on_extra" in outcomes[2].error.message
    assert "key field" in outcomes[3].error.message
    assert outcomes[4].error.type == "FatalError"
    runner.run_batch(_msgs({"id": 1, "region": "eu", "qty": 10}))
    with engine.connect() as conn:
        got = sorted(tuple(r) for r in conn.execute(sa.select(md.tables[table])))
    assert got == [(1, "eu", 10, dt.datetime(2024, 5, 1, 10, 0)), (1, "us", 2, None)]


@pytest.mark.parametrize("batches", [[5], [1, 4], [1, 1, 1, 1, 1], [2, 3]],
                         ids=lambda b: "+".join(map(str, b)))
def test_upsert_create_does_not_depend_on_batching(db, step_runner, batches):
    """The same messages give the same table and the same dead letters however they are batched
    (LocalRuntime takes up to 500 at once, a RabbitMQ worker what one socket read delivered): the
    table is created from the first message with a key, not from the first batch."""
    url, table, engine = db
    runner = step_runner("sql.upsert", {"url": url, "table": table, "key": ["id"], "create": True})
    bodies = [{"name": "keyless", "score": 9.5},              # cannot create the table: no key
              {"id": 1, "name": "a", "score": None},
              {"id": 2, "name": "b", "score": 1.5, "note": "x"},  # 'note' is not a column of the table
              {"id": 1, "score": 2.5},
              {"note": "keyless too"}]
    outcomes, i = [], 0
    for n in batches:
        outcomes += runner.run_batch(_msgs(*bodies[i:i + n]))
        i += n
    assert [o.ok for o in outcomes] == [False, True, False, True, False]
    assert "key field(s) ['id'] missing" in outcomes[0].error.message
    assert "['note'] are not columns" in outcomes[2].error.message
    assert "key field(s) ['id'] missing" in outcomes[4].error.message
    assert sorted(c["name"] for c in sa.inspect(engine).get_columns(table)) == ["id", "name", "score"]
    # a null in the creating message gives a TEXT column (no type to go by), whatever the batching
    assert [(r["id"], r["name"], r["score"]) for r in _all(engine, table)] == [(1, "a", "2.5")]


def test_upsert_missing_table_without_create_is_fatal(db, step_runner):
    url, table, engine = db
    runner = step_runner("sql.upsert", {"url": url, "table": table, "key": ["id"]})
    out = runner.run(_msgs({"id": 1})[0])
    assert out.dead and "create: true" in out.error.message


def test_upsert_outage_is_retryable_for_the_whole_batch(step_runner):
    runner = step_runner("sql.upsert", {"url": "postgresql+psycopg://postgres@127.0.0.1:1/test",
                                        "table": "t", "key": ["id"]}, retry={"max_attempts": 3})
    outcomes = runner.run_batch(_msgs({"id": 1}, {"id": 2}))
    assert all(o.retry_after is not None and o.error.retryable for o in outcomes)


def test_upsert_rejects_unsupported_dialect(flow_factory):
    with pytest.raises(ConfigError, match="supports sqlite"):
        flow_factory(steps=[("sql.upsert", {"url": "oracle://u@h/db", "table": "t", "key": ["id"]})]
                     ).validate_components()


@pytest.mark.integration
@pytest.mark.postgres
def test_upsert_and_poll_recover_after_server_side_disconnect(step_runner, trigger_runner):
    app = "flownb_" + uuid.uuid4().hex[:10]
    table = "t_" + uuid.uuid4().hex[:12]
    url = f"{PG_URL}?application_name={app}"
    admin = sa.create_engine(PG_URL)
    try:
        writer = step_runner("sql.upsert", {"url": url, "table": table, "key": ["id"], "create": True})
        poller = trigger_runner("sql.poll", {"url": url, "table": table, "cursor": "id"})
        assert all(o.ok for o in writer.run_batch(_msgs({"id": 1, "v": "a"}, {"id": 2, "v": "b"})))
        _, _, state = poller.poll({})
        with admin.begin() as conn:  # the server drops our pooled connections (restart, failover)
            killed = conn.execute(sa.text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                          "WHERE application_name = :a"), {"a": app}).scalar()
        assert killed >= 1
        assert all(o.ok for o in writer.run_batch(_msgs({"id": 3, "v": "c"})))
        msgs, _, state = poller.poll(state)
        assert [m.body for m in msgs] == [{"id": 3, "v": "c"}]
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        admin.dispose()


# -- which database errors are transient: table-driven, against the real databases ------------------

def _hold_lock(url: str, table: str):
    """A second connection holding a write lock on ``table`` (a row lock / the SQLite write lock)."""
    eng = sa.create_engine(url)
    conn = eng.connect()
    if url.startswith("sqlite"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        conn.exec_driver_sql(f"INSERT INTO {table} (id, v) VALUES (99, 'held')")
    else:
        trans = conn.begin()
        conn.execute(sa.text(f"UPDATE {table} SET v='held' WHERE id=1"))
        conn._held = trans
    return eng, conn


def _release(held) -> None:
    eng, conn = held
    try:
        conn.rollback() if not hasattr(conn, "_held") else conn._held.rollback()
    finally:
        conn.close()
        eng.dispose()


def _locked_write(url, table, engine):
    held = _hold_lock(url, table)
    try:
        if url.startswith("sqlite"):
            quick = sa.create_engine(url, connect_args={"timeout": 0.1})
        elif url.startswith("postgresql"):
            quick = sa.create_engine(url, connect_args={"options": "-c lock_timeout=200"})
        else:
            quick = sa.create_engine(url, connect_args={"init_command": "SET innodb_lock_wait_timeout=1"})
        try:
            with quick.begin() as c:
                c.execute(sa.text(f"UPDATE {table} SET v='mine' WHERE id=1"))
        finally:
            quick.dispose()
    finally:
        _release(held)


def _statement_timeout(url, table, engine):
    if url.startswith("postgresql"):
        sql = "SET LOCAL statement_timeout = 100; SELECT pg_sleep(2)"
    elif url.startswith("mysql"):
        sql = "SELECT /*+ MAX_EXECUTION_TIME(100) */ SLEEP(2) FROM " + table  # MySQL; MariaDB below
        sql = "SET STATEMENT max_statement_time=0.1 FOR SELECT SLEEP(2) FROM " + table
    else:  # SQLite has no statement_timeout setting: a timeout is a progress handler that interrupts
        with engine.begin() as c:
            raw = c.connection.dbapi_connection
            raw.set_progress_handler(lambda: 1, 1000)  # SQLITE_INTERRUPT, as a timeout would
            try:
                c.exec_driver_sql("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r "
                                  "LIMIT 10000000) SELECT count(*) FROM r")
            finally:
                raw.set_progress_handler(None, 0)
        return
    with engine.begin() as c:
        c.exec_driver_sql(sql)


def _sql(statement: str):
    def run(url, table, engine):
        with engine.begin() as c:
            c.exec_driver_sql(statement.format(t=table))
    return run


#: (case, provoke(url, table, engine), transient?) — the table has (id INTEGER PRIMARY KEY, v TEXT) with id 1
DB_ERRORS = [
    ("duplicate column name", _sql("CREATE TABLE {t}_dup (id INTEGER, ID INTEGER)"), False),
    ("duplicate column (same case)", _sql("CREATE TABLE {t}_dup (a INTEGER, a INTEGER)"), False),
    ("add a column that exists", _sql("ALTER TABLE {t} ADD COLUMN v TEXT"), False),
    ("no such table", _sql("SELECT * FROM {t}_missing"), False),
    ("no such column", _sql("SELECT nope FROM {t}"), False),
    ("syntax error", _sql("SELEC 1 FROM {t}"), False),
    ("table exists", _sql("CREATE TABLE {t} (id INTEGER)"), False),
    ("duplicate key", _sql("INSERT INTO {t} (id, v) VALUES (1, 'again')"), False),
    ("NULL into the key", _sql("INSERT INTO {t} (id, v) VALUES (NULL, NULL)"), None),  # SQLite: a rowid
    ("write waiting for a lock", _locked_write, True),
    ("statement timeout", _statement_timeout, True),
]


@pytest.mark.parametrize("case,provoke,transient", DB_ERRORS, ids=[c[0] for c in DB_ERRORS])
def test_db_errors_are_classified_by_what_they_are(db, case, provoke, transient):
    """The bug: SQLite's "duplicate column name" is an OperationalError like "database is locked", and
    was retried for 15 s; a schema error is not transient. Each case is provoked for real."""
    from sqlalchemy.exc import SQLAlchemyError

    from flownb.components.sql import map_db_error

    url, table, engine = db
    with engine.begin() as c:
        c.exec_driver_sql(f"CREATE TABLE {table} (id INTEGER NOT NULL PRIMARY KEY, v VARCHAR(20))")
        c.exec_driver_sql(f"INSERT INTO {table} (id, v) VALUES (1, 'a')")
    try:
        try:
            provoke(url, table, engine)
        except SQLAlchemyError as exc:
            err = map_db_error(exc, "test")
        else:
            assert transient is None, f"{case}: no error on {url.split(':')[0]}"
            return
        assert err.retryable is bool(transient), f"{case} on {url.split(':')[0]}: {err}"
        assert isinstance(err, RetryableError if transient else FatalError)
    finally:
        with engine.begin() as c:
            c.exec_driver_sql(f"DROP TABLE IF EXISTS {table}_dup")


def test_outage_is_transient():
    from sqlalchemy.exc import SQLAlchemyError

    from flownb.components.sql import map_db_error
    for url in ("postgresql+psycopg://postgres@127.0.0.1:1/test", "mysql+pymysql://root@127.0.0.1:1/test"):
        eng = sa.create_engine(url)
        with pytest.raises(SQLAlchemyError) as info:
            eng.connect()
        assert map_db_error(info.value, "test").retryable, url
        eng.dispose()


def test_upsert_create_with_id_and_ID_is_fatal_at_once(db, step_runner):
    """A body with ``id`` and ``ID`` into sql.upsert with create: true: SQLite and MariaDB refuse the
    table (duplicate column name) — dead-lettered at the first attempt, not retried for 15 s.
    PostgreSQL keeps "ID" apart from id (quoted identifiers), so there the row is written."""
    url, table, _engine = db
    runner = step_runner("sql.upsert", {"url": url, "table": table, "key": ["id"], "create": True},
                         retry={"max_attempts": 5})
    out = runner.run(_msgs({"id": 1, "ID": 2, "name": "x"})[0])
    if url.startswith("postgresql"):
        assert out.error is None, out.error
        return
    # fatal at once: dead-lettered at its first attempt, classified not retryable (no back-off)
    assert out.dead and out.retry_after is None, out.error
    assert out.error.attempt == 1 and not out.error.retryable, out.error
    assert "duplicate column" in out.error.message.lower()


@pytest.mark.integration
@pytest.mark.postgres
def test_poll_converts_uuid_bytes_timedelta_and_time_zones_on_postgres(trigger_runner):
    """docs/components.md: timedelta → seconds, UUID → string, bytes → base64 string, aware datetimes
    keep their offset, Decimal → int when integral else float — with PostgreSQL's native types."""
    table = "t_" + uuid.uuid4().hex[:12]
    engine = sa.create_engine(PG_URL)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {table} (id int PRIMARY KEY, u uuid, b bytea, d interval, "
                                 f"ts timestamptz, day date, amount numeric(10,2), whole numeric(10,2))"))
            conn.execute(sa.text(f"INSERT INTO {table} VALUES (1, :u, :b, interval '1 day 2 hours 0.5 seconds', "
                                 f"'2024-05-01T10:00:00+02:00', '2024-05-01', 2.50, 7.00)"),
                         {"u": ident, "b": b"\x00\xffbin"})
            conn.execute(sa.text("SET TIME ZONE 'UTC'"))
        runner = trigger_runner("sql.poll", {"url": PG_URL, "table": table, "cursor": "u", "key": "id"})
        msgs, _payloads, state = runner.poll({})
        [body] = [m.body for m in msgs]
        assert body == {"id": 1, "u": "12345678-1234-5678-1234-567812345678", "b": "AP9iaW4=",
                        "d": 93600.5, "ts": body["ts"], "day": "2024-05-01", "amount": 2.5, "whole": 7}
        assert dt.datetime.fromisoformat(body["ts"]) == dt.datetime(2024, 5, 1, 8, tzinfo=dt.UTC)
        assert dt.datetime.fromisoformat(body["ts"]).utcoffset() is not None  # the offset is kept
        assert (state["cursor"], state["cursor_type"]) == ("12345678-1234-5678-1234-567812345678", "uuid")
        assert runner.poll(state)[0] == []  # the uuid cursor compares like with like
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()
