"""``file.read`` (a polling trigger) and ``file.write`` (an action) for Parquet and Excel files, on
pyarrow and openpyxl (``pip install 'flownb[files]'``); CSV has ``csv.poll``/``csv.write``.

``file.read`` emits every row of each file matching ``path`` (a file or a glob) that is new or
changed (modification time or size) since it was last read, streaming: at most ``batch_size`` rows
per poll, a Parquet file read one record batch at a time (from the row group holding the offset),
an Excel sheet row by row (openpyxl's read-only mode). The state is ``{"files": {path: [mtime_ns,
size]}, "at": {"path", "mtime_ns", "size", "row"}}``: the file under way and the number of its
rows already emitted, committed with each batch (with the messages, in one transaction), so a
restart goes on from there; a file is marked done once its last row is committed. A file that
changes while it is being read is read again from its start (at least once, nothing lost).

Rows become bodies by flownb's one conversion (``flownb.records``): timestamps as ISO 8601
(milliseconds), decimals as numbers, bytes as base64, nested Parquet values as JSON; an empty cell
is left out, as ``Mapping.preview`` of the same file read with pandas leaves it out.

``file.write`` writes each batch durably and atomically (to a temporary file, fsync, rename):
Parquet as one new part file per batch in the directory ``path`` (a dataset that
``pandas.read_parquet(path)`` reads whole), Excel by appending the batch's rows to the sheet of the
file ``path`` (the workbook is rewritten, so keep Excel outputs to what a person opens: up to some
ten thousand rows).
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError, FatalError, RetryableError, SpecError
from .base import Action, Context, PollConfig, PollingTrigger

__all__ = ["FileRead", "FileReadConfig", "FileWrite", "FileWriteConfig"]

Format = Literal["parquet", "excel"]
ColumnType = Literal["string", "int", "float", "bool", "json"]


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - the extra is not installed
        raise ConfigError("Parquet needs pyarrow: pip install 'flownb[files]'") from None
    return pa, pq


def _checked_format(config: Any, step: Any) -> str:
    """The config's file format (given, or from the extension); a ConfigError naming the step."""
    try:
        return _format(config.format, config.path)
    except ConfigError as exc:
        exc.at(step=step.name)
        raise


def _openpyxl():
    try:
        import openpyxl
    except ImportError:  # pragma: no cover - the extra is not installed
        raise ConfigError("Excel needs openpyxl: pip install 'flownb[files]'") from None
    return openpyxl


def _format(config_format: str | None, path: str) -> str:
    if config_format:
        return config_format
    suffix = Path(path.rstrip("/")).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".xlsx", ".xlsm"):
        return "excel"
    raise ConfigError(f"cannot tell the format of {path!r} from its extension; set format: parquet or excel "
                      f"(for CSV use csv.poll / csv.write)", field="config.format")


def _bodies(rows: list[dict], where: str) -> list[dict]:
    """Rows as message bodies by flownb.records' rules; empty cells left out (as in a DataFrame)."""
    from ..records import to_records
    try:
        records = to_records(rows)
    except SpecError as exc:
        raise FatalError(f"{where}: {exc}") from None
    return [{k: v for k, v in r.items() if v is not None} for r in records]


# -- file.read ------------------------------------------------------------------------------------

class FileReadConfig(PollConfig):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="a Parquet or Excel file, or a glob such as exports/orders-*.parquet")
    format: Format | None = Field(None, description="parquet or excel (default: from the extension: .parquet, "
                                                    ".pq, .xlsx, .xlsm)")
    sheet: str | None = Field(None, description="excel: the sheet to read (default: the first)")
    columns: list[str] | None = Field(None, description="read only these columns (default: all)")
    file_field: str | None = Field(None, description="add the source file's path to each row under this field")
    batch_size: int = Field(1000, ge=1, le=100000, description="rows per poll at most; a poll that stops at "
                                                               "a full batch polls again at once")


class FileRead(PollingTrigger[FileReadConfig]):
    """Rows of new or changed Parquet / Excel files, streamed in batches."""

    Config = FileReadConfig
    samples: ClassVar[bool] = True  # it only reads the files

    @classmethod
    def check_config(cls, config, step) -> None:
        _checked_format(config, step)

    def setup(self) -> None:
        self.fmt = _format(self.config.format, self.config.path)
        _pyarrow() if self.fmt == "parquet" else _openpyxl()
        self._more = False

    def next_delay(self, state: dict) -> float:
        return 0.0 if getattr(self, "_more", False) else self.interval

    def _files(self) -> list[str]:
        p = os.path.expanduser(self.config.path)
        return sorted(glob.glob(p)) if glob.has_magic(p) else ([p] if os.path.isfile(p) else [])

    def poll(self, state: dict, ctx: Context) -> list[dict]:
        done: dict = state.setdefault("files", {})
        at = state.get("at")
        out: list[dict] = []
        limit = self.config.batch_size
        files = self._files()
        if at and at.get("path") in files:  # the file under way first: its offset is the one kept
            files.remove(at["path"])
            files.insert(0, at["path"])
        for path in files:
            if len(out) >= limit:
                break
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            sig = [st.st_mtime_ns, st.st_size]
            if done.get(path) == sig:
                continue
            start = 0
            if at and at.get("path") == path:
                if [at.get("mtime_ns"), at.get("size")] == sig:
                    start = int(at.get("row", 0))
                else:
                    ctx.logger.warning("file.read '%s': %s changed while it was being read; reading it again "
                                       "from its start", ctx.step, path)
            rows, consumed, finished = self._read(path, start, limit - len(out))
            if self.config.file_field:
                for r in rows:
                    r[self.config.file_field] = path
            out += rows
            try:  # changed while read? then this batch may mix versions: read it again next time
                unchanged = [os.stat(path).st_mtime_ns, os.stat(path).st_size] == sig
            except FileNotFoundError:
                unchanged = False
            if finished and unchanged:
                done[path] = sig
                state.pop("at", None)
                at = None
            else:
                state["at"] = at = {"path": path, "mtime_ns": sig[0], "size": sig[1], "row": start + consumed}
                if not unchanged:
                    state["at"]["mtime_ns"] = -1  # does not match: the next poll starts the file over
                break
        for gone in [p for p in done if not os.path.exists(p)]:
            del done[gone]  # a file that reappears is read again
        self._more = len(out) >= limit
        return out

    def _read(self, path: str, start: int, n: int) -> tuple[list[dict], int, bool]:
        """Up to ``n`` rows from row ``start`` on; the rows, how many file rows they took, finished."""
        try:
            if self.fmt == "parquet":
                rows, finished = self._read_parquet(path, start, n)
                consumed = len(rows)
            else:
                rows, consumed, finished = self._read_excel(path, start, n)
        except (FatalError, RetryableError):
            raise
        except OSError as exc:
            raise RetryableError(f"file.read: cannot read '{path}': {exc}") from None
        except Exception as exc:  # a damaged or foreign file: it will not get better by itself
            raise FatalError(f"file.read: '{path}' is not a readable {self.fmt} file ({type(exc).__name__}: "
                             f"{exc}); remove or replace it") from None
        return _bodies(rows, f"file.read '{path}'"), consumed, finished

    def _read_parquet(self, path: str, start: int, n: int) -> tuple[list[dict], bool]:
        _pa, pq = _pyarrow()
        pf = pq.ParquetFile(path)
        meta = pf.metadata
        total = meta.num_rows
        if start >= total:
            return [], True
        group, skip = 0, start
        while group < meta.num_row_groups and skip >= meta.row_group(group).num_rows:
            skip -= meta.row_group(group).num_rows
            group += 1
        columns = self.config.columns
        if columns:
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise FatalError(f"file.read: '{path}' has no column(s) {missing}; columns: "
                                 f"{', '.join(pf.schema_arrow.names)}")
        rows: list[dict] = []
        for batch in pf.iter_batches(batch_size=min(max(n + skip, 1), 65536),
                                     row_groups=list(range(group, meta.num_row_groups)), columns=columns):
            if skip:
                if skip >= batch.num_rows:
                    skip -= batch.num_rows
                    continue
                batch = batch.slice(skip)
                skip = 0
            rows += batch.slice(0, n - len(rows)).to_pylist()
            if len(rows) >= n:
                break
        return rows, start + len(rows) >= total

    def _read_excel(self, path: str, start: int, n: int) -> tuple[list[dict], int, bool]:
        openpyxl = _openpyxl()
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            if self.config.sheet is not None and self.config.sheet not in wb.sheetnames:
                raise FatalError(f"file.read: '{path}' has no sheet {self.config.sheet!r}; sheets: "
                                 f"{', '.join(wb.sheetnames)}")
            ws = wb[self.config.sheet] if self.config.sheet else wb.worksheets[0]
            it = ws.iter_rows(values_only=True)
            header_row = next(it, None)
            if header_row is None:
                return [], 0, True
            header = [str(h) if h is not None else f"column{i + 1}" for i, h in enumerate(header_row)]
            keep = self.config.columns
            if keep:
                missing = [c for c in keep if c not in header]
                if missing:
                    raise FatalError(f"file.read: '{path}' has no column(s) {missing}; columns: {', '.join(header)}")
            rows: list[dict] = []
            consumed = 0
            for values in ws.iter_rows(min_row=start + 2, values_only=True):
                consumed += 1
                if all(v is None for v in values):  # a blank row (Excel's formatting leaves them)
                    continue
                row = dict(zip(header, values, strict=False))
                rows.append({k: row.get(k) for k in keep} if keep else row)
                if len(rows) >= n:
                    break
            else:
                return rows, consumed, True
            return rows, consumed, False
        finally:
            wb.close()


# -- file.write -----------------------------------------------------------------------------------

class FileWriteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="parquet: a directory that gets one part file per batch; excel: the "
                                  ".xlsx file to append rows to (created with a header row)")
    format: Format | None = Field(None, description="parquet or excel (default: from the extension: "
                                                    ".parquet, .xlsx)")
    sheet: str = Field("Sheet1", description="excel: the sheet to append to (created when missing)")
    columns: list[str] | None = Field(None, description="columns, in order (default: the existing header, "
                                                        "else the batch's fields in order of appearance)")
    on_extra: Literal["error", "ignore"] = Field("ignore", description="fields not among the columns: drop "
                                                 "them, or dead-letter the message")
    types: dict[str, ColumnType] | None = Field(
        None, description="parquet: a column's type in every part file whatever the batch holds (string, "
        "int, float, bool, json: the value as JSON text); a value that does not fit dead-letters its "
        "message. Without it a part file's column types follow its batch's values (a column mixing 1 and "
        "'A-2' in one batch is written as text)")
    passthrough: bool = Field(True, description="emit each written message on to the next step")


class FileWrite(Action[FileWriteConfig]):
    """Write rows to Parquet (a part file per batch) or append them to an Excel sheet, atomically."""

    Config = FileWriteConfig
    effects: ClassVar[bool] = True

    @classmethod
    def check_config(cls, config, step) -> None:
        fmt = _checked_format(config, step)
        if config.types and fmt != "parquet":
            raise ConfigError("'types' applies to Parquet (an Excel cell keeps each value's own type); remove it",
                              step=step.name, field="config.types")
        unknown = sorted(set(config.types or ()) - set(config.columns or config.types or ()))
        if unknown:
            raise ConfigError(f"'types' names {unknown}, which are not in 'columns' {config.columns}; add them "
                              f"to 'columns' or remove them", step=step.name, field="config.types")

    def setup(self) -> None:
        self.fmt = _format(self.config.format, self.config.path)
        _pyarrow() if self.fmt == "parquet" else _openpyxl()

    def dry_run(self, message, ctx) -> dict:
        fmt = _format(self.config.format, self.config.path)
        columns = self.config.columns or list(message.body)
        results, rows = self._rows([message], columns)
        if isinstance(results[0], FatalError):
            raise results[0]
        return {"path": self.config.path, "format": fmt, "row": dict(zip(columns, rows[0], strict=True))}

    def dry_output(self, message):
        return message.body if self.config.passthrough else None

    def process(self, message, ctx):
        result = self.process_batch([message], ctx)[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _rows(self, messages, columns: list[str]) -> tuple[list, list[list]]:
        results: list = []
        rows: list[list] = []
        for m in messages:
            extra = [k for k in m.body if k not in columns]
            if extra and self.config.on_extra == "error":
                results.append(FatalError(f"field(s) {extra} are not columns {columns}; add them to 'columns' or "
                                          f"set on_extra: ignore"))
                continue
            if extra:
                self.warn_dropped(extra, columns, f"'{self.config.path}'")
            rows.append([_cell(m.body.get(c)) for c in columns])
            results.append(m.body if self.config.passthrough else None)
        return results, rows

    def process_batch(self, messages, ctx) -> list:
        path = Path(self.config.path)
        try:
            if self.fmt == "parquet":
                return self._parquet(path, messages)
            return self._excel(path, messages)
        except FatalError as exc:
            return [exc] * len(messages)
        except OSError as exc:
            return [RetryableError(f"file.write '{ctx.step}': cannot write '{path}': {exc}")] * len(messages)

    def _columns(self, messages, existing: list[str] | None) -> list[str]:
        if self.config.columns:
            columns = list(self.config.columns)
        elif existing:
            columns = existing
        else:
            columns = list(dict.fromkeys(k for m in messages for k in m.body))
        if existing and existing != columns:
            raise FatalError(f"'{self.config.path}' has columns {existing} but the step writes {columns}; write "
                             f"to a new path or set 'columns' to match")
        return columns

    def _parquet(self, path: Path, messages) -> list:
        pa, pq = _pyarrow()
        path.mkdir(parents=True, exist_ok=True)
        columns = self._columns(messages, None)
        results, rows = self._rows(messages, columns)
        types = self.config.types or {}
        if types:
            rows = self._typed(messages, columns, results, rows)
        if not rows:
            return results
        arrays = []
        for i, name in enumerate(columns):
            values = [r[i] for r in rows]
            if name in types:
                arrays.append(pa.array(values, type=_ARROW[types[name]](pa)))
                continue
            try:
                arrays.append(pa.array(values))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
                # mixed types in one column (1 and "1"): written as text, so nothing is lost
                arrays.append(pa.array([None if v is None else v if isinstance(v, str) else
                                        orjson.dumps(v).decode() for v in values], type=pa.string()))
            if arrays[-1].type == pa.null():
                arrays[-1] = pa.array(values, type=pa.string())
            del name
        table = pa.Table.from_arrays(arrays, names=columns)
        name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.parquet"
        _atomic(path / name, lambda tmp: pq.write_table(table, tmp))
        return results

    def _typed(self, messages, columns: list[str], results: list, rows: list[list]) -> list[list]:
        """The rows with each ``types`` column's value converted; a message with a value that does
        not fit gets a FatalError in ``results`` and its row is left out."""
        types = self.config.types or {}
        at = [(i, c, types[c]) for i, c in enumerate(columns) if c in types]
        kept: list[list] = []
        written = iter(rows)  # the rows of the messages _rows did not reject, in order
        for n, m in enumerate(messages):
            if isinstance(results[n], FatalError):
                continue
            row = next(written)
            try:
                for i, c, t in at:
                    row[i] = _typed_value(m.body.get(c), t, c)
            except FatalError as exc:
                results[n] = exc
                continue
            kept.append(row)
        return kept

    def _excel(self, path: Path, messages) -> list:
        openpyxl = _openpyxl()
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            if path.exists():
                try:
                    wb = openpyxl.load_workbook(path)
                except Exception as exc:
                    raise FatalError(f"'{path}' is not a readable Excel file ({type(exc).__name__}: {exc}); "
                                     f"move it aside or write to another path") from None
            else:
                wb = openpyxl.Workbook()
                wb.active.title = self.config.sheet
            ws = wb[self.config.sheet] if self.config.sheet in wb.sheetnames else wb.create_sheet(self.config.sheet)
            empty = ws.max_row == 1 and ws.max_column == 1 and ws.cell(1, 1).value is None
            existing = None if empty else [str(c.value) for c in next(ws.iter_rows(max_row=1)) if c.value is not None]
            columns = self._columns(messages, existing)
            results, rows = self._rows(messages, columns)
            if empty:
                for j, name in enumerate(columns, start=1):
                    ws.cell(1, j, name)
            for r in rows:
                ws.append([_excel_cell(v) for v in r])
            _atomic(path, lambda tmp: wb.save(tmp))
        return results


_ARROW = {"string": lambda pa: pa.string(), "json": lambda pa: pa.string(), "int": lambda pa: pa.int64(),
          "float": lambda pa: pa.float64(), "bool": lambda pa: pa.bool_()}


def _typed_value(value: Any, kind: str, column: str) -> Any:
    """A body value as a cell of a ``types`` column (None stays null)."""
    if value is None:
        return None
    if kind == "json":
        return orjson.dumps(value).decode()
    if kind == "string":
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    if kind == "int" and type(value) is int:
        return value
    if kind == "int" and type(value) is float and value.is_integer():
        return int(value)
    if kind == "float" and type(value) in (int, float):
        return float(value)
    if kind == "bool" and type(value) is bool:
        return value
    raise FatalError(f"column '{column}' is typed {kind} but the message has {orjson.dumps(value).decode()[:60]}; "
                     f"fix the value, or type the column string or json")


def _cell(value: Any) -> Any:
    """A body value as a table cell: scalars as they are, lists/objects as JSON text."""
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value


def _excel_cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@") and not _number_like(value):
        return "'" + value  # not a formula: text from a message must not run in the reader's Excel
    return value


def _number_like(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _atomic(target: Path, write) -> None:
    """``write(tmp)`` to a temporary file beside ``target``, fsync it, rename it over ``target``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        dfd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class _locked:
    """An exclusive lock on ``<path>.lock`` while a workbook is read, changed and replaced (replicas
    appending to one file)."""

    def __init__(self, path: Path):
        self.path = path.with_name(path.name + ".lock")

    def __enter__(self):
        self.fh = open(self.path, "a")
        try:
            import fcntl
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows
            pass
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()
