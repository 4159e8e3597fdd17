"""``csv.poll`` (a polling trigger) and ``csv.write`` (an action).

``csv.poll`` reads every file matching ``path`` (a file or a glob) and emits the rows whose cursor
column passed the saved cursor, in (cursor, key) order, one message per row. The state is
``{"cursor": …, "seen": [ids of rows at that cursor value], "files": {path: [mtime_ns, size]}}``:

* a row is emitted when its cursor is greater than the saved one, or equal to it and its identity
  (the ``key`` column, or else a hash of the whole row) is not in ``seen`` — so rows sharing a
  cursor value are neither lost nor repeated, across files, appends, rewrites and restarts;
* files whose modification time and size did not change since the last poll are not read again;
* rows whose cursor is empty are skipped; a row whose cursor is *older* than the saved one is
  skipped too (the cursor column must grow, e.g. an id or an ISO 8601 timestamp).

Cells: with ``parse_numbers`` (default) ``42``/``-7`` become ints (but ``007`` stays a string, so
codes keep their zeros), ``3.14``/``1e3`` floats; an empty cell becomes ``null``; everything else
stays a string. Cursor values compare numbers numerically and strings as text (ISO timestamps in
one format sort correctly as text).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import operator
import os
import re
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError, FatalError, RetryableError
from .base import Action, Context, PollConfig, PollingTrigger

__all__ = ["CsvPoll", "CsvWrite", "CsvPollConfig", "CsvWriteConfig", "parse_cell"]

#: a file without a final newline, modified less than this ago, may be mid-write
SETTLE_NS = 2_000_000_000
_INT = re.compile(r"^[-+]?(0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"^[-+]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+)$")


#: the characters a number's cell can start with (after spaces): any other cell stays a string
_NUMBER_START = frozenset("+-.0123456789")


def parse_cell(text: str, numbers: bool = True) -> Any:
    """A CSV cell → int, float, None (empty) or the string itself (see the module docstring)."""
    if text == "":
        return None
    if numbers:
        if text[0] not in _NUMBER_START and not text[0].isspace():
            return text
        s = text.strip()
        if _INT.match(s):
            return int(s)
        if _FLOAT.match(s):
            return float(s)
    return text


def _cell_parser(numbers: bool):
    """:func:`parse_cell` with ``numbers`` bound, a plain whole number (``42``; not ``007``, ``+1``,
    `` 4``) turned into an int without the regular expressions: the same values, fewer steps per cell."""
    if not numbers:
        return lambda text: text if text else None

    def cell(text: str) -> Any:
        if not text:
            return None
        first = text[0]
        if first not in _NUMBER_START and not first.isspace():
            return text
        if text.isdigit():
            if text.isascii() and (first != "0" or len(text) == 1):
                return int(text)
        elif first != "." and text.isascii():  # a plain decimal (2.50, 007.5): _FLOAT's first form
            whole, dot, frac = text.partition(".")
            if dot and whole.isdigit() and (not frac or frac.isdigit()):
                return float(text)
        return parse_cell(text)
    return cell


#: distinct texts a column's cache keeps; a column with more (ids, emails) is parsed cell by cell
CELL_CACHE = 1024


class _CellCache(dict):
    """A column's cell texts → values (None, int, float or the str: immutable, so shared), filled
    as cells are read, up to :data:`CELL_CACHE` texts: a column that repeats its values (a country,
    a quantity, a price) is then read by a dict lookup instead of a call of the parser per cell."""

    __slots__ = ("parse",)

    def __init__(self, parse):
        super().__init__()
        self.parse = parse

    def __missing__(self, text: str) -> Any:
        value = self.parse(text)
        if len(self) < CELL_CACHE:
            self[text] = value
        return value


def _order(value: Any) -> tuple:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return (1, str(value))
    return (0, value)


class _CsvFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delimiter: str = Field(",", min_length=1, max_length=1, description="field separator")
    encoding: str = Field("utf-8", description="text encoding of the file(s)")


# -- csv.poll -------------------------------------------------------------------------------------

class CsvPollConfig(PollConfig, _CsvFormat):
    path: str = Field(description="a CSV file, or a glob such as data/orders-*.csv (relative: from the "
                                  "spec file's folder)")
    cursor: str = Field(description="column that grows for new rows (an id, an ISO timestamp)")
    key: str | None = Field(None, description="unique column telling apart rows with equal cursor "
                                              "values (default: the whole row's content)")
    parse_numbers: bool = Field(True, description="turn numeric cells into numbers (see docs)")
    columns: list[str] | None = Field(None, description="column names for files without a header row")
    file_field: str | None = Field(None, description="add the source file's path to each row under "
                                                     "this field")
    batch_size: int = Field(1000, ge=1, description="new rows per poll at most; a poll that stops at a "
                                                    "full batch polls again at once")


class CsvPoll(PollingTrigger[CsvPollConfig]):
    """Emit new rows of CSV files, by a cursor column, at most ``batch_size`` per poll."""

    Config = CsvPollConfig
    #: config fields holding a file path: relative ones are read from the spec file's folder
    #: (:meth:`flownb.Flow.resolved`)
    local_paths: ClassVar[tuple[str, ...]] = ("path",)
    samples: ClassVar[bool] = True  # it only reads the files
    #: its records hold only str, int, float and None (plain JSON): on the embedded runtime they go
    #: through the first stage as they are, without a wire round trip (TriggerRunner.poll)
    json_native: ClassVar[bool] = True
    raw_sample_differences: ClassVar[str] = (
        "pandas.read_csv reads an empty cell as NaN (missing in the preview: $exists gives false, "
        "arithmetic gives nothing) where csv.poll sends null, a number with leading zeros ('01234') "
        "as the int 1234 where csv.poll keeps the text, and an int of a column with empty cells as a "
        "float (1.0)")

    def __init__(self, config: CsvPollConfig, ctx: Context):
        super().__init__(config, ctx)
        #: per header, per column: the texts read so far → their values (:class:`_CellCache`)
        self._caches: dict[tuple[str, ...], list[_CellCache]] = {}

    @classmethod
    def check_config(cls, config, step) -> None:
        if config.columns is not None and config.cursor not in config.columns:
            raise ConfigError(f"cursor column '{config.cursor}' is not among columns {config.columns}",
                              step=step.name, field="config.cursor")

    def next_delay(self, state: dict) -> float:
        return 0.0 if state.get("pass") else self.interval

    def _files(self) -> list[str]:
        if glob.has_magic(self.config.path):
            return sorted(p for p in glob.glob(self.config.path, recursive=True) if os.path.isfile(p))
        return [self.config.path] if os.path.isfile(self.config.path) else []

    def _start_pass(self, state: dict, ctx: Context) -> dict | None:
        """A new pass over the files that changed since the last one (None: nothing changed)."""
        known: dict = state.get("files", {})
        matched = self._files()
        if not matched and not getattr(self, "_warned_empty", False):
            # once per process (not every interval): a wrong path or a run from another folder
            self._warned_empty = True
            # a flow loaded from a spec file has its relative paths made absolute against the spec's
            # folder (Flow.resolved); one built in code reads them from the current directory
            where = (f" (relative paths are read from the current directory, {os.getcwd()})"
                     if not os.path.isabs(self.config.path) else "")
            ctx.logger.warning("csv.poll '%s': no file matches '%s'%s; nothing to read until one appears",
                               ctx.step, self.config.path, where)
        elif matched:
            self._warned_empty = False
        files = {}
        for path in matched:
            try:
                st = os.stat(path)
            except FileNotFoundError:  # removed between glob and stat
                continue
            files[path] = [st.st_mtime_ns, st.st_size]
        todo = [p for p in files if known.get(p) != files[p]]
        if not todo:
            state["files"] = files
            return None
        base = {k: state[k] for k in ("cursor", "seen") if k in state}
        return {"base": base, "files": files, "todo": todo, "offset": 0, "header": None, "partial": [],
                "top": None, "top_ids": []}

    def poll(self, state: dict, ctx: Context) -> list[dict]:
        """Up to ``batch_size`` new rows. A pass reads the files that changed, one after another from
        a byte offset kept in ``state["pass"]`` (committed with each batch, so a restart resumes
        there); rows are compared with the cursor as it was when the pass began, and the cursor
        moves when the pass ends."""
        p = state.get("pass") or self._start_pass(state, ctx)
        if p is None:
            return []
        base = p["base"]
        saved = _order(base["cursor"]) if "cursor" in base else None
        seen = set(base.get("seen", []))
        limit = self.config.batch_size
        batch: list[tuple] = []
        ids: set = set()
        while p["todo"] and len(batch) < limit:
            path = p["todo"][0]
            done = self._read(path, p, saved, seen, batch, ids, limit)
            if done:
                p["todo"].pop(0)
                p["offset"], p["header"] = 0, None
        # by (cursor, key) within the batch; without a key, rows with equal cursors keep their order
        if self.config.key:
            batch.sort(key=operator.itemgetter(0, 1))
        else:
            batch.sort(key=operator.itemgetter(0))
        if batch:
            top = _order(p["top"]) if p["top"] is not None else None
            last = batch[-1][0]
            at_last = [ident for o, _, ident, _ in batch if o == last]
            if top is None or last > top:
                p["top"], p["top_ids"] = batch[-1][3][self.config.cursor], at_last
            elif last == top:
                p["top_ids"] = [*p["top_ids"], *at_last]
        if p["todo"]:
            state["pass"] = p
        else:
            self._end_pass(state, p, saved)
        return [r for _, _, _, r in batch]

    def _end_pass(self, state: dict, p: dict, saved: tuple | None) -> None:
        state.pop("pass", None)
        if p["top"] is not None:
            top_ids = p["top_ids"]
            if saved == _order(p["top"]):
                top_ids = [*p["base"].get("seen", []), *top_ids]
            state["cursor"], state["seen"] = p["top"], top_ids
        files = p["files"]
        for path in p["partial"]:  # read it again next pass, when its last line is finished
            files[path] = None
        state["files"] = files

    def _read(self, path: str, p: dict, saved: tuple | None, seen: set, batch: list, ids: set,
              limit: int) -> bool:
        """Append the new rows of ``path`` from ``p["offset"]`` to ``batch`` until it holds ``limit``;
        True when the file is read to its end."""
        c = self.config
        enc = c.encoding
        if "\n".encode(enc) != b"\n":
            raise FatalError(f"csv.poll reads ASCII-compatible encodings (utf-8, latin-1, cp1252 …), not "
                             f"'{enc}'; convert the file to UTF-8")
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            return True
        except PermissionError as exc:
            raise FatalError(f"cannot read '{path}': {exc}; fix the file's permissions") from exc
        except OSError as exc:
            raise RetryableError(f"cannot read '{path}': {exc}") from exc
        with fh:
            try:
                st = os.fstat(fh.fileno())
                if st.st_size < p["offset"]:  # truncated or replaced mid-pass: read it from the start
                    p["offset"], p["header"] = 0, None
                fh.seek(p["offset"])
                recent = time.time_ns() - st.st_mtime_ns < SETTLE_NS
                return self._rows(path, fh, p, saved, seen, batch, ids, limit, recent)
            except UnicodeDecodeError as exc:
                raise FatalError(f"'{path}' is not {enc} text ({exc}); set 'encoding'") from exc
            except csv.Error as exc:
                raise FatalError(f"'{path}' is not valid CSV near byte {p['offset']:,} ({exc}); fix the "
                                 f"file") from exc
            except OSError as exc:
                raise RetryableError(f"cannot read '{path}': {exc}") from exc

    def _rows(self, path, fh, p, saved, seen, batch, ids, limit, recent) -> bool:
        c = self.config
        enc = c.encoding
        pos = p["offset"]
        unfinished = False

        def lines():
            nonlocal pos, unfinished
            for raw in fh:
                if not raw.endswith((b"\n", b"\r")) and recent:  # a writer may be mid-line
                    unfinished = True
                    return
                pos += len(raw)
                yield raw.decode(enc)

        reader = csv.reader(lines(), delimiter=c.delimiter)
        header = c.columns or p["header"]
        if header is None:
            first = next(reader, None)
            if first is None:
                if unfinished:
                    p["partial"].append(path)
                return True
            if c.encoding.lower().replace("_", "-") in ("utf-8", "utf8") and first and first[0].startswith("\ufeff"):
                first[0] = first[0][1:]
            header = p["header"] = first
            if c.cursor not in header:
                raise FatalError(f"'{path}' has no column '{c.cursor}' (the cursor); columns: "
                                 f"{', '.join(header)}")
        cur, numbers, file_field, n = c.cursor, c.parse_numbers, c.file_field, len(header)
        key = c.key
        cell = _cell_parser(numbers)
        caches = self._caches.get(tuple(header))
        if caches is None:
            caches = self._caches[tuple(header)] = [_CellCache(cell) for _ in header]
        # per column: its cache, or the parser once the column has shown more distinct texts than
        # a cache keeps (operator.call applies each column's own in one map)
        parsers = [c.__getitem__ if len(c) < CELL_CACHE else cell for c in caches]
        call = operator.call
        for rec in reader:
            if not rec:
                p["offset"] = pos
                continue
            if len(rec) < n:
                rec = rec + [""] * (n - len(rec))
            # cells past the header are dropped
            row = dict(zip(header, map(call, parsers, rec), strict=False))
            if file_field:
                row[file_field] = path
            p["offset"] = pos
            value = row[cur]
            if value is None:
                continue
            # _order(), inline for the usual cursor and key: an int or a float (a bool is not one)
            o = (0, value) if type(value) is int or type(value) is float else _order(value)
            ident = row.get(key) if key else self._identity(row)
            if saved is not None and (o < saved or (o == saved and ident in seen)):
                continue
            seen_key = (o, ident)
            if seen_key in ids:  # the same row twice in this batch (in two files, or one)
                continue
            ids.add(seen_key)
            batch.append((o, (0, ident) if type(ident) is int or type(ident) is float else _order(ident),
                          ident, row))
            if len(batch) >= limit:
                return False
        p["offset"] = pos
        if unfinished:
            p["partial"].append(path)
        return True

    def _identity(self, row: dict) -> Any:
        if self.config.key:
            return row.get(self.config.key)
        return hashlib.sha1(orjson.dumps(row, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


# -- csv.write ------------------------------------------------------------------------------------

class CsvWriteConfig(_CsvFormat):
    path: str = Field(description="CSV file to append to (created with a header row when missing; "
                                  "relative: from the spec file's folder)")
    columns: list[str] | None = Field(None, description="columns, in order (default: the existing "
                                                        "header, else the first row's fields)")
    on_extra: Literal["error", "ignore"] = Field("ignore", description="fields not among the columns: "
                                                 "drop them, or dead-letter the message")
    passthrough: bool = Field(True, description="emit each written message on to the next step")
    fsync: bool = Field(True, description="fsync after each batch, so a written row survives a crash")


class CsvWrite(Action[CsvWriteConfig]):
    """Append rows to a CSV file; the header is written once. A batch is one write."""

    Config = CsvWriteConfig
    effects = True
    json_native = True  # it passes its input body on, unchanged
    local_paths: ClassVar[tuple[str, ...]] = ("path",)  # relative: from the spec file's folder

    def setup(self) -> None:
        self._columns: list[str] | None = None

    def dry_run(self, message, ctx) -> dict:
        """The line it would append (after the header, for a file that does not exist yet)."""
        path = Path(self.config.path)
        existing = None
        if path.is_file():  # reading the header changes nothing
            with open(path, newline="", encoding=self.config.encoding) as fh:
                first = fh.readline()
            existing = next(csv.reader([first], delimiter=self.config.delimiter)) if first.strip() else None
        columns = self.config.columns or existing or list(message.body)
        result, lines = self._lines([message], columns)
        if isinstance(result[0], FatalError):
            raise result[0]
        out = {"path": str(path), "line": lines[0].rstrip("\n")}
        if existing is None:
            out["header"] = self._format(columns).rstrip("\n")
        return out

    def dry_output(self, message):
        return message.body if self.config.passthrough else None

    def process(self, message, ctx):
        result = self.process_batch([message], ctx)[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def process_batch(self, messages, ctx) -> list:
        path = Path(self.config.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a+", newline="", encoding=self.config.encoding) as fh:
                _lock(fh)
                columns, header = self._header(fh, messages)
                results, lines = self._lines(messages, columns)
                if header:
                    fh.write(self._format(columns))
                elif lines and self._ends_mid_line(fh):
                    fh.write("\n")  # a last line without its newline (hand-written, or a writer killed
                    # mid-write) must not swallow the first row of this batch
                fh.write("".join(lines))
                fh.flush()
                if self.config.fsync:
                    os.fsync(fh.fileno())
        except FatalError as exc:
            return [exc] * len(messages)
        except OSError as exc:
            err = RetryableError(f"csv.write '{ctx.step}': cannot write '{path}': {exc}")
            return [err] * len(messages)
        return results

    def _header(self, fh, messages) -> tuple[list[str], bool]:
        fh.seek(0)
        first = fh.readline()
        fh.seek(0, os.SEEK_END)
        existing = next(csv.reader([first], delimiter=self.config.delimiter)) if first.strip() else None
        columns = self.config.columns or existing or list(messages[0].body)
        if existing and existing != columns:
            raise FatalError(f"'{self.config.path}' has header {existing} but the step writes {columns}; "
                             f"write to a new file or set 'columns' to match")
        return columns, existing is None

    def _ends_mid_line(self, fh) -> bool:
        if "\n".encode(self.config.encoding) != b"\n":  # not ASCII-compatible (UTF-16…): not checked
            return False
        fh.flush()
        size = os.fstat(fh.fileno()).st_size
        return size > 0 and os.pread(fh.fileno(), 1, size - 1) not in (b"\n", b"\r")

    def _lines(self, messages, columns: list[str]) -> tuple[list, list[str]]:
        """Per message its result, and the text of the rows to append: one string (empty list: no
        row), written by one ``writerows`` for the batch."""
        results: list = []
        rows: list[list] = []
        cols = set(columns)
        check = self.config.on_extra == "error"
        passthrough = self.config.passthrough
        plain = _PLAIN_CELL
        for m in messages:
            body = m.body
            if not body.keys() <= cols:
                extra = [k for k in body if k not in cols]
                if check:
                    results.append(FatalError(f"field(s) {extra} are not columns {columns}; add them to "
                                              f"'columns' or set on_extra: ignore"))
                    continue
                self.warn_dropped(extra, columns, f"'{self.config.path}'")
            get = body.get
            # a str, an int or a float is written as _cell() would write it (the csv module writes
            # str(value)); others (None, a bool, a list or an object) through _cell()
            rows.append([v if type(v) in plain else _cell(v) for v in map(get, columns)])
            results.append(body if passthrough else None)
        if not rows:
            return results, []
        buf = io.StringIO()
        csv.writer(buf, delimiter=self.config.delimiter, lineterminator="\n").writerows(rows)
        return results, [buf.getvalue()]

    def _format(self, values: list[str]) -> str:
        buf = io.StringIO()
        csv.writer(buf, delimiter=self.config.delimiter, lineterminator="\n").writerow(values)
        return buf.getvalue()


#: cell types the csv module writes as ``_cell`` does (``str(value)``)
_PLAIN_CELL = frozenset((str, int, float))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)


def _lock(fh) -> None:
    """An exclusive lock on the file while writing (replicas append to the same file)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
