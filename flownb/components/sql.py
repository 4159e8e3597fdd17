"""``sql.poll`` and ``sql.upsert``: read new rows by a cursor column; write rows idempotently.

Both take a SQLAlchemy URL (``url``) or the name of an environment variable holding it (``url_env``,
for URLs with passwords). Drivers: SQLite is built in; PostgreSQL needs ``flownb[postgres]``
(psycopg, URL ``postgresql+psycopg://…``); MySQL/MariaDB needs ``flownb[mysql]`` (PyMySQL, URL
``mysql+pymysql://…``).

Values leaving the database are made JSON-friendly (see :func:`to_json_value`): ``Decimal`` → ``int``
when integral else ``float``; ``datetime``/``date``/``time`` → ISO 8601 strings (time-zone aware
values keep their offset); ``timedelta`` → seconds (float); ``UUID`` → str; ``bytes`` → base64 str.
The poll state keeps the cursor's exact type (``{"cursor": …, "cursor_type": "datetime"}``) so the
next query compares like with like.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import re
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import ConfigError, FatalError, RetryableError
from .base import Action, Context, PollConfig, PollingTrigger

__all__ = ["SqlPoll", "SqlUpsert", "SqlPollConfig", "SqlUpsertConfig", "to_json_value"]

log = logging.getLogger(__name__)

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
#: an OperationalError with one of these texts is a mistake in the SQL, not an outage
_PERMANENT_TEXT = re.compile(r"no such (table|column)|syntax error|has no column|unknown column|"
                             r"doesn't exist|does not exist|datatype mismatch|duplicate column", re.I)


# -- value conversions ----------------------------------------------------------------------------

def to_json_value(value: Any) -> Any:
    """A JSON-friendly form of a database value (documented in the module docstring)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return str(value)


def _encode_state(value: Any) -> tuple[Any, str]:
    """Cursor value → (JSON value, type tag), exact (Decimal kept as a string)."""
    if isinstance(value, dt.datetime):
        return value.isoformat(), "datetime"
    if isinstance(value, dt.date):
        return value.isoformat(), "date"
    if isinstance(value, Decimal):
        return str(value), "decimal"
    if isinstance(value, uuid.UUID):
        return str(value), "uuid"
    return to_json_value(value), "json"


def _decode_state(value: Any, tag: str | None) -> Any:
    if value is None:
        return None
    decoders: dict[str, Any] = {"datetime": dt.datetime.fromisoformat, "date": dt.date.fromisoformat,
                                "decimal": Decimal, "uuid": uuid.UUID}
    return decoders.get(tag or "json", lambda v: v)(value)


# -- shared config and engine handling --------------------------------------------------------------

class _UrlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(None, description="SQLAlchemy URL, e.g. sqlite:///shop.db or "
                                              "postgresql+psycopg://user@host/db (no passwords here: use url_env)")
    url_env: str | None = Field(None, description="name of an environment variable holding the URL "
                                                  "(use it when the URL contains a password)")

    @model_validator(mode="after")
    def _one_url(self):
        if bool(self.url) == bool(self.url_env):
            raise ValueError("give exactly one of 'url' (a SQLAlchemy URL) or 'url_env' (an environment "
                             "variable holding it)")
        return self


def _check_url(url: str | None, step) -> None:
    if not url:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError
    try:
        make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"'{url}' is not a SQLAlchemy URL ({exc}); write e.g. sqlite:///file.db or "
                          f"postgresql+psycopg://user@host:5432/db", step=step.name, field="config.url") from None


def _check_ident(name: str | None, step, field: str) -> None:
    if name is not None and not _IDENT.match(name):
        raise ConfigError(f"{name!r} is not a plain table/column name (letters, digits, _; optionally "
                          f"schema.name); use 'query' for anything else", step=step.name, field=f"config.{field}")


def _engine(config: _UrlConfig, ctx: Context, *, must_exist: bool = False):
    """The engine of the step's URL. ``must_exist``: a SQLite file that is not there is a
    ConfigError naming it (a reader must not create an empty database and then find no table)."""
    import sqlalchemy as sa
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError
    url = config.url or ctx.secret(config.url_env or "")  # the model checks one of them is given
    if must_exist and url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        path = Path(url[len("sqlite:///"):].split("?", 1)[0])
        if not path.exists():
            # a spec's relative URL arrives anchored to the spec's folder (Flow.resolved): shown from the
            # current directory when it lies below it, as a reader who ran from there wrote it
            full = path.resolve()
            shown = full.relative_to(Path.cwd()) if full.is_relative_to(Path.cwd()) else path
            raise ConfigError(f"the SQLite database '{shown}' does not exist (looked for {full}); "
                              f"create it, or fix the URL", step=ctx.step, field="config.url")
    try:
        return sa.create_engine(url, pool_pre_ping=True)
    except NoSuchModuleError as exc:
        raise ConfigError(f"no SQLAlchemy dialect/driver for this URL ({exc}); install the driver, e.g. "
                          f"pip install 'flownb[postgres]' or 'flownb[mysql]'", step=ctx.step) from None
    except (ArgumentError, ModuleNotFoundError) as exc:
        raise ConfigError(f"cannot use database URL: {exc}; install the driver it names or fix the URL",
                          step=ctx.step) from None


def map_db_error(exc: Exception, what: str) -> RetryableError | FatalError:
    """SQLAlchemy error → RetryableError (outage, lock, timeout) or FatalError (bad SQL or data).

    The driver's own code decides first (:func:`db_error_is_transient`): an ``OperationalError``
    covers both "database is locked" (transient) and a schema error such as "duplicate column name"
    (permanent: retrying it for its whole retry budget only delays the dead letter). Without a
    known code: a lost connection or an ``OperationalError`` whose text is not a mistake in the SQL
    is transient, anything else permanent."""
    from sqlalchemy import exc as sx
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:300]
    if isinstance(exc, sx.DBAPIError) and exc.connection_invalidated:
        return RetryableError(f"{what}: database connection lost ({text}); will retry")
    if isinstance(exc, (sx.DisconnectionError, sx.TimeoutError)):
        return RetryableError(f"{what}: database unavailable ({text}); will retry")
    transient = db_error_is_transient(getattr(exc, "orig", None))
    if transient is None:
        transient = isinstance(exc, sx.OperationalError) and not _PERMANENT_TEXT.search(text)
    if transient:
        return RetryableError(f"{what}: database unavailable ({text}); will retry")
    return FatalError(f"{what}: {type(getattr(exc, 'orig', exc)).__name__}: {text}")


#: SQLite primary result codes: BUSY, LOCKED, NOMEM, INTERRUPT, IOERR, FULL, CANTOPEN, PROTOCOL, SCHEMA
_SQLITE_TRANSIENT = {5, 6, 7, 9, 10, 13, 14, 15, 17}
#: ERROR (SQL error or missing database: no such table, duplicate column name, syntax), CORRUPT,
#: TOOBIG, CONSTRAINT, MISMATCH, MISUSE, AUTH, RANGE, NOTADB
_SQLITE_PERMANENT = {1, 11, 18, 19, 20, 21, 23, 25, 26}
#: PostgreSQL SQLSTATE classes / codes that pass: connection (08), transaction rollback
#: (40: serialization failure, deadlock), insufficient resources (53), operator intervention (57:
#: shutdown, query canceled by statement_timeout), system error (58), lock not available (55P03)
_PG_TRANSIENT_CLASSES = {"08", "40", "53", "57", "58"}
_PG_TRANSIENT = {"55P03", "55006"}
#: the rest of these classes is a mistake in the SQL, the schema or the data: data (22), integrity
#: (23), syntax/access rule (42: duplicate/undefined column or
#: table), feature not supported (0A), object state (55), program limit (54), cardinality (21)
_PG_PERMANENT_CLASSES = {"0A", "21", "22", "23", "42", "44", "54", "55"}
#: MySQL/MariaDB error numbers that pass: lock wait timeout, deadlock, too many connections, server
#: shutdown, query interrupted/killed, max_statement_time, out of memory, connection errors (2xxx)
_MYSQL_TRANSIENT = {1205, 1213, 1040, 1053, 1077, 1078, 1079, 1080, 1152, 1153, 1154, 1155, 1156, 1157,
                    1158, 1159, 1160, 1161, 1317, 1927, 1969, 3024, 1037, 1038, 1041, 1203, 1226, 4031}
#: ... and that do not: duplicate column (1060), unknown column (1054), no such table (1146), syntax
#: (1064, 1149), duplicate key (1062), NULL in NOT NULL (1048), data too long/out of range/incorrect
#: value (1406, 1264, 1366, 1292, 1265), column count (1136), bad names (1166, 1103, 1059), key and
#: row size (1071, 1118, 1170), duplicate key name (1061), multiple primary keys (1068), foreign
#: keys (1451, 1452, 1216, 1217), table exists (1050), unknown database (1049)
_MYSQL_PERMANENT = {1060, 1054, 1146, 1064, 1149, 1062, 1048, 1406, 1264, 1366, 1292, 1265, 1136, 1166,
                    1103, 1059, 1071, 1118, 1170, 1061, 1068, 1451, 1452, 1216, 1217, 1050, 1049, 1051,
                    1091, 1072, 1075, 1101, 1113, 1171, 1263, 3140, 4025}


def db_error_is_transient(orig: BaseException | None) -> bool | None:
    """What the driver's error code says of ``orig`` (the DBAPI exception): True (try again later),
    False (a mistake in the SQL, schema or data), None (no code known to flownb)."""
    if orig is None:
        return None
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):  # sqlite3 (Python ≥ 3.11): the primary code is the low byte
        primary = code & 0xFF
        if primary in _SQLITE_TRANSIENT:
            return True
        if primary in _SQLITE_PERMANENT:
            return False
        return None
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:  # psycopg / psycopg2
        if sqlstate in _PG_TRANSIENT or sqlstate[:2] in _PG_TRANSIENT_CLASSES:
            return True
        if sqlstate[:2] in _PG_PERMANENT_CLASSES:
            return False
        return None
    if type(orig).__module__.startswith(("pymysql", "MySQLdb", "mysql.connector", "mariadb")):
        args = getattr(orig, "args", ())
        errno = args[0] if args and isinstance(args[0], int) else getattr(orig, "errno", None)
        if isinstance(errno, int):
            if errno in _MYSQL_TRANSIENT or 2000 <= errno < 2100:  # 2xxx: client/connection errors
                return True
            if errno in _MYSQL_PERMANENT:
                return False
    return None


# -- sql.poll -------------------------------------------------------------------------------------

class SqlPollConfig(PollConfig, _UrlConfig):
    table: str | None = Field(None, description="table to read (or give 'query')")
    query: str | None = Field(None, description="a SELECT whose rows are read (instead of 'table'); it is "
                                                "wrapped as a subquery and filtered/ordered by the cursor")
    cursor: str = Field(description="column that grows for new or changed rows, e.g. updated_at or id")
    key: str | None = Field(None, description="unique column breaking ties between rows with equal cursor "
                                              "values (e.g. id); without it such rows may be missed when a "
                                              "batch ends among them later")
    batch_size: int = Field(1000, ge=1, description="rows per query; a full batch polls again at once")
    start: Any = Field(None, description="first run: only rows whose cursor is greater than this "
                                         "(default: all rows)")

    @model_validator(mode="after")
    def _table_or_query(self):
        if bool(self.table) == bool(self.query):
            raise ValueError("give exactly one of 'table' or 'query'")
        return self


class SqlPoll(PollingTrigger[SqlPollConfig]):
    """Poll a table or query for rows whose cursor column passed the saved cursor."""

    Config = SqlPollConfig
    #: a relative sqlite:///file.db URL is read from the spec file's folder (Flow.resolved)
    local_paths: ClassVar[tuple[str, ...]] = ("url",)
    samples: ClassVar[bool] = True  # a SELECT
    raw_sample_differences: ClassVar[str] = (
        "pandas.read_sql_table/read_sql read a DATETIME as a Timestamp ('2024-05-01T10:00:00.000' in "
        "the preview) where sql.poll sends '2024-05-01T10:00:00', a DATE as midnight "
        "('2024-05-02T00:00:00.000') where sql.poll sends '2024-05-02', and a NULL as None/NaN "
        "(missing in the preview: $exists gives false) where sql.poll sends null")

    @classmethod
    def check_config(cls, config, step) -> None:
        _check_url(config.url, step)
        _check_ident(config.table, step, "table")
        _check_ident(config.cursor, step, "cursor")
        _check_ident(config.key, step, "key")

    def setup(self) -> None:
        self.engine = _engine(self.config, self.ctx, must_exist=True)
        self._source = None
        self._backlog = False

    def close(self) -> None:
        self.engine.dispose()

    def next_delay(self, state: dict) -> float:
        return 0.0 if self._backlog else self.interval

    def _select(self):
        import sqlalchemy as sa
        if self._source is None:
            if self.config.table:
                schema, _, name = self.config.table.rpartition(".")
                try:
                    self._source = sa.Table(name, sa.MetaData(), schema=schema or None, autoload_with=self.engine)
                except sa.exc.NoSuchTableError:
                    where = self.engine.url.render_as_string(hide_password=True)
                    raise FatalError(f"sql.poll '{self.ctx.step}': table '{self.config.table}' does not exist in "
                                     f"{where}; create it or fix 'table'") from None
            else:
                self._source = sa.text(self.config.query).columns().subquery("flownb_q")
        src = self._source
        cols = src.c if self.config.table else None

        def col(name):
            if cols is not None:
                if name not in cols:
                    raise FatalError(f"table '{self.config.table}' has no column '{name}'; columns: "
                                     f"{', '.join(cols.keys())}")
                return cols[name]
            return sa.column(name)
        stmt = sa.select(src) if self.config.table else sa.select(sa.text("*")).select_from(src)
        return stmt, col

    def _query(self, state: dict):
        import sqlalchemy as sa
        stmt, col = self._select()
        cur, key = col(self.config.cursor), (col(self.config.key) if self.config.key else None)
        stmt = stmt.where(cur.is_not(None))
        if "cursor" in state:
            c = _decode_state(state["cursor"], state.get("cursor_type"))
            if key is not None and state.get("key") is not None:
                k = _decode_state(state["key"], state.get("key_type"))
                stmt = stmt.where(sa.or_(cur > c, sa.and_(cur == c, key > k)))
            else:
                stmt = stmt.where(cur > c)
        elif self.config.start is not None:
            stmt = stmt.where(cur > _to_db(self.config.start, cur.type))
        order = [cur] + ([key] if key is not None else [])
        return stmt.order_by(*order).limit(self.config.batch_size + (0 if key is not None else 1))

    def poll(self, state: dict, ctx: Context) -> Iterator[dict]:
        from sqlalchemy.exc import SQLAlchemyError
        try:
            with self.engine.connect() as conn:
                rows = [dict(r._mapping) for r in conn.execute(self._query(state))]
                rows = self._complete_group(conn, rows, state)
        except SQLAlchemyError as exc:
            raise map_db_error(exc, f"sql.poll '{ctx.step}'") from exc
        for row in rows:
            yield {k: to_json_value(v) for k, v in row.items()}
        if rows:
            last = rows[-1]
            state["cursor"], state["cursor_type"] = _encode_state(last[self.config.cursor])
            if self.config.key:
                state["key"], state["key_type"] = _encode_state(last[self.config.key])

    def _complete_group(self, conn, rows: list[dict], state: dict) -> list[dict]:
        """Without a key, never end a batch inside a group of equal cursor values."""
        n = self.config.batch_size
        if self.config.key:
            self._backlog = len(rows) >= n
            return rows
        self._backlog = len(rows) > n
        if len(rows) <= n:
            return rows
        last = rows[n - 1][self.config.cursor]
        head = [r for r in rows[:n] if r[self.config.cursor] != last]
        if head:
            return head
        # the whole batch shares one cursor value: take every row with that value
        stmt, col = self._select()
        cur = col(self.config.cursor)
        return [dict(r._mapping) for r in conn.execute(stmt.where(cur == last))]


# -- sql.upsert -----------------------------------------------------------------------------------

class SqlUpsertConfig(_UrlConfig):
    table: str = Field(description="table to write")
    key: list[str] = Field(min_length=1, description="key column(s): a row with the same key is updated, "
                                                     "so replays are harmless (needs a unique index/PK)")
    create: bool = Field(False, description="create the table from the first message (with its key) when "
                                            "it does not exist (key columns become the primary key)")
    on_extra: Literal["error", "ignore"] = Field("error", description="fields of the body that are not "
                                                 "columns of the table: dead-letter the message, or drop them")


class SqlUpsert(Action[SqlUpsertConfig]):
    """Insert or update rows by key: INSERT … ON CONFLICT DO UPDATE (SQLite, PostgreSQL) or
    ON DUPLICATE KEY UPDATE (MySQL, MariaDB). A batch is written in one transaction."""

    Config = SqlUpsertConfig
    local_paths: ClassVar[tuple[str, ...]] = ("url",)  # a relative sqlite:/// URL: the spec's folder
    DIALECTS: ClassVar[tuple[str, ...]] = ("sqlite", "postgresql", "mysql", "mariadb")
    effects = True

    def dry_run(self, message, ctx) -> dict:
        """The row it would insert or update, by key (no connection is opened: the table's
        columns are not checked)."""
        err = self._key_error(message.body)
        if err is not None:
            raise err
        return {"upsert": self.config.table, "key": {k: message.body[k] for k in self.config.key},
                "row": message.body}

    @classmethod
    def check_config(cls, config, step) -> None:
        _check_url(config.url, step)
        _check_ident(config.table, step, "table")
        for k in config.key:
            _check_ident(k, step, "key")
        if config.url:
            from sqlalchemy.engine import make_url
            name = make_url(config.url).get_backend_name()
            if name not in cls.DIALECTS:
                raise ConfigError(f"sql.upsert supports {', '.join(cls.DIALECTS)}, not '{name}'",
                                  step=step.name, field="config.url")

    def setup(self) -> None:
        self.engine = _engine(self.config, self.ctx)
        self._table: Any = None  # the sqlalchemy Table, reflected (or created) on first use

    def close(self) -> None:
        self.engine.dispose()

    def process(self, message, ctx):
        result = self.process_batch([message], ctx)[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def process_batch(self, messages, ctx) -> list:
        from sqlalchemy.exc import SQLAlchemyError
        what = f"sql.upsert '{ctx.step}' into '{self.config.table}'"
        try:
            table = self._get_table([m.body for m in messages])
        except SQLAlchemyError as exc:
            err = map_db_error(exc, what)
            return [err] * len(messages)
        except FatalError as exc:
            return [exc] * len(messages)
        if table is None:  # no table yet and no message of the batch has its key: none can be written
            return [self._key_error(m.body) for m in messages]
        results: list = []
        rows: list[dict | None] = []
        for m in messages:
            try:
                rows.append(self._row(table, m.body))
                results.append(m.body)
            except FatalError as exc:
                rows.append(None)
                results.append(exc)
        good = [r for r in rows if r is not None]
        try:
            self._write(table, good)
        except SQLAlchemyError as exc:
            err = map_db_error(exc, what)
            if err.retryable or len(good) == 1:
                return [err if r is not None else res for r, res in zip(rows, results, strict=True)]
            return self._one_by_one(table, rows, results, what)
        return results

    def _one_by_one(self, table, rows, results, what) -> list:
        """A batch failed on bad data: write row by row so only the bad rows dead-letter."""
        from sqlalchemy.exc import SQLAlchemyError
        out = list(results)
        for i, row in enumerate(rows):
            if row is None:
                continue
            try:
                self._write(table, [row])
            except SQLAlchemyError as exc:
                out[i] = map_db_error(exc, what)
        return out

    # -- helpers ----------------------------------------------------------------------------------
    def _get_table(self, bodies: list[dict]):
        """The table (reflected once); with ``create``, a missing table is created from the first
        body that has its key — one message, never the batch, so the table does not depend on how
        a runtime happened to batch the messages (the local runtime takes up to 500 at once, a
        RabbitMQ worker what one socket read delivered). None: no table, and no body to create it from."""
        import sqlalchemy as sa
        if self._table is not None:
            return self._table
        schema, _, name = self.config.table.rpartition(".")
        try:
            table = sa.Table(name, sa.MetaData(), schema=schema or None, autoload_with=self.engine)
        except sa.exc.NoSuchTableError:
            if not self.config.create:
                raise FatalError(f"table '{self.config.table}' does not exist; create it, or set "
                                 f"'create: true' to create it from the first message") from None
            first = next((b for b in bodies if self._key_error(b) is None), None)
            if first is None:
                return None
            table = self._create(name, schema or None, first)
        missing = [k for k in self.config.key if k not in table.c]
        if missing:
            raise FatalError(f"key column(s) {missing} are not columns of '{self.config.table}'; "
                             f"columns: {', '.join(table.c.keys())}")
        self._table = table
        return table

    def _create(self, name: str, schema: str | None, body: dict):
        """Create the table with the columns of ``body`` (which has every key field)."""
        import sqlalchemy as sa
        cols = [sa.Column(k, _sql_type(v, k in self.config.key), primary_key=k in self.config.key,
                          nullable=k not in self.config.key) for k, v in body.items()]
        table = sa.Table(name, sa.MetaData(), *cols, schema=schema)
        table.create(self.engine, checkfirst=True)
        log.info("created table %s with columns %s", self.config.table, list(body))
        return sa.Table(name, sa.MetaData(), schema=schema, autoload_with=self.engine)

    def _key_error(self, body: dict) -> FatalError | None:
        missing = [k for k in self.config.key if body.get(k) is None]
        if missing:
            return FatalError(f"key field(s) {missing} missing from the message; every row needs its key")
        return None

    def _row(self, table, body: dict) -> dict:
        err = self._key_error(body)  # first: a keyless row fails the same way, table or no table yet
        if err is not None:
            raise err
        extra = [k for k in body if k not in table.c]
        if extra and self.config.on_extra == "error":
            raise FatalError(f"field(s) {extra} are not columns of '{self.config.table}' (columns: "
                             f"{', '.join(table.c.keys())}); map them away or set on_extra: ignore")
        return {k: _to_db(v, table.c[k].type) for k, v in body.items() if k in table.c}

    def _write(self, table, rows: list[dict]) -> None:
        if not rows:
            return
        by_key: dict[tuple, dict] = {}
        for r in rows:  # the last write of a key in the batch wins, as if written one by one
            by_key.setdefault(tuple(str(r[k]) for k in self.config.key), {}).update(r)
        groups: dict[tuple, list[dict]] = {}
        for r in by_key.values():
            groups.setdefault(tuple(sorted(r)), []).append(r)
        with self.engine.begin() as conn:
            for cols, group in groups.items():
                conn.execute(self._statement(table, cols), group)

    def _statement(self, table, cols: tuple[str, ...]):
        name = self.engine.dialect.name
        update = [c for c in cols if c not in self.config.key]
        stmt: Any  # the dialect's own Insert, with its upsert clause
        if name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as mysql_insert
            stmt = mysql_insert(table)
            # no non-key column: a no-op update keeps the statement idempotent
            sets = {c: stmt.inserted[c] for c in update} or {self.config.key[0]: table.c[self.config.key[0]]}
            return stmt.on_duplicate_key_update(sets)
        if name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert
            stmt = pg_insert(table)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert
            stmt = sqlite_insert(table)
        if not update:
            return stmt.on_conflict_do_nothing(index_elements=self.config.key)
        return stmt.on_conflict_do_update(index_elements=self.config.key,
                                          set_={c: stmt.excluded[c] for c in update})


def _sql_type(value: Any, is_key: bool):
    import sqlalchemy as sa
    if isinstance(value, bool):
        return sa.Boolean()
    if isinstance(value, int):
        return sa.BigInteger()
    if isinstance(value, float):
        return sa.Float()
    if isinstance(value, (dict, list)):
        return sa.JSON()
    return sa.String(255) if is_key else sa.Text()


def _to_db(value: Any, type_) -> Any:
    """A JSON value → what the column type accepts (ISO strings into date/time columns, JSON text)."""
    import sqlalchemy as sa
    if value is None:
        return None
    try:
        if isinstance(value, str) and isinstance(type_, sa.DateTime):
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if isinstance(value, str) and isinstance(type_, sa.Date):
            return dt.date.fromisoformat(value[:10])
        if isinstance(value, str) and isinstance(type_, sa.Time):
            return dt.time.fromisoformat(value)
        if isinstance(value, (int, float, str)) and isinstance(type_, sa.Numeric) and not isinstance(
                type_, sa.Float) and not isinstance(value, bool):
            return Decimal(str(value))
    except ValueError as exc:
        raise FatalError(f"value {value!r} does not fit column type {type_}: {exc}") from None
    if isinstance(value, (dict, list)) and not isinstance(type_, sa.JSON):
        import orjson
        return orjson.dumps(value).decode()
    return value
