"""Sample data → records: the one conversion of sample rows into message bodies.

``to_records(sample)`` is what ``Mapping.preview``, the ``MappingEditor``, the ``FlowBuilder``'s
"run on sample" and ``flow.test(sample)`` (→ ``LocalRuntime.feed``) all use, so a rule sees the
same record in the preview as in the test run. pandas is imported only when a DataFrame is given:
this module loads in a worker without pandas (numpy too is imported only for numpy values).

``sample`` is a pandas DataFrame, a list (or any iterable) of dicts, or one dict (one record).
Rows keep their order; a DataFrame's index is not part of the record (``df.reset_index()`` to
include it). ``limit`` takes the first rows only.

How values become JSON (docs/records.md has the same table, with examples):

=============================  ==================================================================
column names                   ``customer.email`` is a path: ``{"customer": {"email": …}}``, at any
                               depth, in column order (a group sits where its first column is). A
                               MultiIndex column ``("customer", "email")`` is the same path. A name
                               with an empty segment (``a..b``, ``.a``) and a non-string name are
                               one key (``str(name)``). Two columns on one path (``customer`` and
                               ``customer.email``, or a duplicate name) are a :class:`SpecError`
                               saying which columns to rename.
missing cells                  None, NaN, NaT, ``pd.NA`` (and ±inf, not JSON numbers) in a
                               DataFrame cell: the key is left out (JSONata *undefined*, so
                               ``$exists(x)`` is false and ``$lowercase(x)`` gives nothing, not an
                               error). A group whose columns are all missing is ``{}``.
null cells                     :data:`NULL` in a cell is JSON ``null``: the key is kept with null
                               (``$exists(x)`` is true, ``$lowercase(x)`` an error), as a source
                               that sends null (``csv.poll``'s empty cell, ``sql.poll``'s NULL).
                               ``flow.sample()`` (:func:`to_frame`) and ``Mapping.preview``'s
                               output put it where a record holds null; anywhere, it is null.
dict records                   taken as they are (no dotted-key unflattening); at the top level
                               NaN/NaT/``pd.NA``/±inf are left out like a DataFrame cell, but None
                               is kept as JSON ``null``.
inside nested values           a list/dict cell stays JSON; NaN, ±inf, NaT, ``pd.NA`` and None
                               inside it become ``null`` (an array has no "missing" element);
                               tuples and numpy arrays become arrays; keys become ``str(key)``.
numbers, booleans              numpy scalars → Python ``int``/``float``/``bool``; nullable
                               ``Int64``/``Float64``/``boolean`` likewise (float32 → the shortest
                               decimal: 0.1, not 0.10000000149); ``Decimal`` → ``int`` when
                               integral, else ``float`` (as ``sql.poll``); ints must fit in 64 bits
                               (a message cannot carry more). Complex numbers are an error.
timestamps                     one ISO 8601 form, milliseconds (JSONata's own, as ``$now()``):
                               tz-aware → converted to UTC, ``2024-01-02T03:04:05.000Z``; naive →
                               the same without a zone, ``2024-01-02T03:04:05.000`` (no zone is
                               guessed: ``df[c].dt.tz_localize("UTC")`` to mark it UTC). Finer
                               digits are dropped. Python ``datetime`` and ``np.datetime64``
                               likewise; ``date`` → ``2024-01-02``; ``time`` → ``03:04:05.000``.
durations                      ``Timedelta``/``timedelta``/``timedelta64`` → seconds (a number).
categoricals                   their values (converted by these same rules).
strings, other scalars         str as is; ``UUID``, ``Period``, ``Interval`` → ``str``; ``Enum`` →
                               its value; bytes → base64 text (as ``sql.poll`` sends a BLOB).
anything else                  a :class:`SpecError` naming the column (or key) and row, and how to
                               convert it (e.g. ``df[c] = df[c].astype(str)``).
=============================  ==================================================================
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import enum
import functools
import gc
import itertools
import math
import os
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from .errors import SpecError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["NULL", "to_records", "to_frame", "column_paths", "is_frame"]

#: a cell with no value (its key is left out of the record)
_MISSING = object()


class _Null:
    """The type of :data:`NULL` (one instance; it pickles and copies as itself)."""

    __slots__ = ()
    _it: _Null | None = None

    def __new__(cls) -> _Null:
        if cls._it is None:
            cls._it = super().__new__(cls)
        return cls._it

    def __repr__(self) -> str:
        return "null"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "NULL"

    def __copy__(self) -> _Null:
        return self

    def __deepcopy__(self, memo: Any) -> _Null:
        return self


#: JSON ``null`` in a DataFrame cell. In a DataFrame None and NaN are *missing* (the key is left out,
#: JSONata *undefined*); a cell holding ``NULL`` keeps its key with the value null, as a source that
#: sends null does (``csv.poll``'s empty cell, ``sql.poll``'s NULL). Shown as ``null``.
NULL = _Null()

_PLAIN = frozenset({str, int, bool, type(None)})
_PLAIN_F = _PLAIN | {float}
_SAFE = _PLAIN | {list, dict, tuple}  # top-level cells whose JSON form is never null (None is masked)
_INT_MIN, _INT_MAX = -(2 ** 63), 2 ** 64 - 1  # what orjson (and so a message) can carry
_OPTS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS

_HOW = "pass a pandas DataFrame, a list of dicts or one dict"


def is_frame(x: Any) -> bool:
    """Whether ``x`` is a pandas DataFrame (without importing pandas: if it is not loaded, no)."""
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(x, pd.DataFrame)


def to_records(sample: Any, limit: int | None = None) -> list[dict]:
    """``sample`` (DataFrame, iterable of dicts, or one dict) as JSON-like dicts, in row order.

    See the module docstring for how each kind of value converts; :class:`SpecError` says what to
    change when a sample cannot become records."""
    with no_gc():  # many small dicts: the cyclic GC would rescan them for nothing
        if is_frame(sample):
            return _frame_records(sample if limit is None else sample.iloc[:limit])
        return [_record(r, i) for i, r in enumerate(_rows(sample, limit))]


def to_frame(records: list[dict]) -> pd.DataFrame:
    """JSON records (message bodies) as a DataFrame that :func:`to_records` turns back into the same
    records: one column per top-level key (in first-seen order), JSON ``null`` as :data:`NULL`, a
    key a record lacks as None (missing), nested objects and arrays as dict/list cells. A column
    keeps its values' own types: all ints → ``int64``, all floats → ``float64``, all booleans →
    ``bool``; anything else (strings, ints mixed with floats, nulls) → ``object``, so ``1`` stays
    an int and ``"01234"`` a string. :class:`SpecError` for a key that a column name cannot carry
    (``a.b`` would become the path a → b): use the records themselves then."""
    import pandas as pd

    names: dict[str, None] = {}
    for i, r in enumerate(records):
        if type(r) is not dict:
            raise SpecError(f"record {i} is a {type(r).__name__}, not a JSON object (dict)")
        names.update(dict.fromkeys(r))
    for name in names:
        if _parts(name) != (name,):
            raise SpecError(f"the records have a field named {name!r}: as a DataFrame column it would be "
                            f"read as the path {' → '.join(_parts(name))}; use the records (a list of "
                            f"dicts, e.g. flow.sample(frame=False)) where such a field must stay one key")
    absent = object()
    data = {}
    for name in names:
        vals = [r.get(name, absent) for r in records]
        types = set(map(type, vals))
        if types == {int} and _ints_fit_int64(vals):
            data[name] = pd.Series(vals, dtype="int64")
        elif types == {float}:
            data[name] = pd.Series(vals, dtype="float64")
        elif types == {bool}:
            data[name] = pd.Series(vals, dtype="bool")
        else:
            col = [None if v is absent else NULL if v is None else v for v in vals]
            data[name] = pd.Series(col, dtype=object)
    return pd.DataFrame(data, index=pd.RangeIndex(len(records)))


def _ints_fit_int64(values: list) -> bool:
    return all(-(2 ** 63) <= v < 2 ** 63 for v in values)


def column_paths(frame: pd.DataFrame) -> list[tuple[str, ...]]:
    """The record path of each column (``customer.email`` → ``("customer", "email")``), in order;
    :class:`SpecError` when two columns collide."""
    return _tree(list(frame.columns))[1]


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused (and restored as it was): building many containers
    otherwise triggers collections that walk every live object, again and again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# -- lists of dicts -------------------------------------------------------------------------------

def _rows(sample: Any, limit: int | None) -> list:
    if isinstance(sample, dict):
        return [sample][:limit]
    if isinstance(sample, (str, bytes, os.PathLike)):
        raise SpecError(f"the sample is a {type(sample).__name__} ({str(sample)[:60]!r}), not rows; "
                        f"load a file first, e.g. pd.read_csv(path) or pd.read_json(path), and "
                        f"pass the DataFrame")
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(sample, pd.Series):
        raise SpecError("the sample is a pandas Series (one column); pass a DataFrame "
                        "(series.to_frame()) or a list of dicts")
    try:
        it = iter(sample)
    except TypeError:
        raise SpecError(f"the sample is of type {type(sample).__name__}; {_HOW}") from None
    return list(it if limit is None else itertools.islice(it, max(limit, 0)))


def _record(r: Any, i: int) -> dict:
    if type(r) is not dict:
        if not isinstance(r, dict):
            raise SpecError(f"sample row {i} is a {type(r).__name__}; pass a DataFrame or a list of dicts")
        r = dict(r)
    types = set(map(type, r.values()))
    if types <= _PLAIN_F and set(map(type, r)) <= {str} and (int not in types or _ints_fit(r.values())) \
            and (float not in types or all(v - v == 0 for v in r.values() if type(v) is float)):
        return r  # already JSON: used as it is
    out = {}
    for k, v in r.items():
        key = k if type(k) is str else str(k)
        try:
            v = _top(v)
        except _CellError as exc:
            raise SpecError(f"sample row {i}, key {key!r}: {exc.text}; convert the value first "
                            f"(e.g. to str)") from None
        if v is not _MISSING:
            out[key] = v
    return out


def _top(v: Any) -> Any:
    """A top-level value of a dict record: None stays null, NaN & co are missing."""
    t = type(v)
    if t is str or t is bool or v is None:
        return v
    if t is int:
        return v if _INT_MIN <= v <= _INT_MAX else _too_big(v)
    if t is float:
        return v if v - v == 0 else _MISSING  # NaN and ±inf
    if t is dict or t is list or t is tuple or isinstance(v, (dict, list, tuple)) or _is_array(v):
        return _nested(v)
    return _scalar(v)


def _ints_fit(values: Any) -> bool:
    return all(_INT_MIN <= v <= _INT_MAX for v in values if type(v) is int)


# -- values ---------------------------------------------------------------------------------------

class _CellError(Exception):
    """A value with no JSON form; the caller adds where it is. ``fix``: the pandas method that
    converts such a column (``astype(str)``)."""

    def __init__(self, text: str, row: int | None = None, fix: str = "astype(str)"):
        super().__init__(text)
        self.text = text
        self.row = row
        self.fix = fix


def _too_big(v: int, row: int | None = None) -> Any:
    raise _CellError(f"the integer {v} does not fit in 64 bits, which a message cannot carry", row)


def _is_array(v: Any) -> bool:
    return type(v).__name__ == "ndarray" and type(v).__module__ == "numpy"


def _nested(v: Any) -> Any:
    """A list/dict (or array) as JSON: orjson for speed, Python when orjson cannot."""
    try:
        return orjson.loads(orjson.dumps(v, default=_default, option=_OPTS))
    except (TypeError, orjson.JSONEncodeError):
        return _py(v)


def _default(v: Any) -> Any:
    """orjson's hook for what it does not serialise itself (inside nested values)."""
    if isinstance(v, dict):
        return {k if type(k) is str else str(k): x for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return list(v)
    if _is_array(v):
        return _array(v)
    r = _scalar(v)
    return None if r is _MISSING else r


def _py(v: Any) -> Any:
    """The same conversion as :func:`_nested`, in Python (dict keys that are not strings, ints
    beyond 64 bits, and to find the value that has no JSON form)."""
    t = type(v)
    if t is str or t is bool or v is None:
        return v
    if t is int:
        return v if _INT_MIN <= v <= _INT_MAX else _too_big(v)
    if t is float:
        return v if v - v == 0 else None
    if isinstance(v, dict):
        return {k if type(k) is str else str(k): _py(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_py(x) for x in v]
    if _is_array(v):
        return [_py(x) for x in _array(v)]
    r = _scalar(v)
    return None if r is _MISSING else _py(r)


def _array(v: Any) -> list:
    if v.dtype.kind in "Mm":
        return [_scalar(x) for x in v.ravel()] if v.ndim <= 1 else [_array(x) for x in v]
    if v.dtype.kind == "f" and v.dtype.itemsize < 8:
        v = v.astype(str).astype(float)
    return v.tolist()


def _scalar(v: Any) -> Any:
    """A scalar that is not a plain str/int/float/bool/None: its JSON value, or ``_MISSING``."""
    if v is NULL:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, float):
        return float(v) if math.isfinite(v) else _MISSING
    if isinstance(v, int):
        if isinstance(v, enum.Enum):
            return _py(v.value)
        v = int(v)
        return v if _INT_MIN <= v <= _INT_MAX else _too_big(v)
    if isinstance(v, str):
        return _py(v.value) if isinstance(v, enum.Enum) else str(v)
    mod = type(v).__module__
    if mod == "numpy":
        return _numpy_scalar(v)
    if isinstance(v, _dt.datetime):
        return _MISSING if v != v else _iso(v)  # NaT != NaT
    if isinstance(v, _dt.date):
        return v.isoformat()
    if isinstance(v, _dt.time):
        return v.isoformat(timespec="milliseconds")
    if isinstance(v, _dt.timedelta):
        return _MISSING if v != v else v.total_seconds()
    if isinstance(v, Decimal):
        if not v.is_finite():
            return _MISSING
        return int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode("ascii")
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, enum.Enum):
        return _py(v.value)
    if mod.startswith("pandas"):
        name = type(v).__name__
        if name in ("NAType", "NaTType"):
            return _MISSING
        if name in ("Period", "Interval"):
            return str(v)
    if isinstance(v, (set, frozenset)):
        raise _CellError(f"a {type(v).__name__} has no order, so no JSON form", fix="map(sorted)")
    raise _CellError(f"{type(v).__name__!r} values have no JSON form")


def _numpy_scalar(v: Any) -> Any:
    kind = v.dtype.kind
    if kind == "b":
        return bool(v)
    if kind in "iu":
        return int(v)
    if kind == "f":
        f = float(v) if v.dtype.itemsize >= 8 else float(str(v))
        return f if math.isfinite(f) else _MISSING
    if kind == "M":
        import numpy as np
        return _MISSING if np.isnat(v) else str(np.datetime_as_string(v, unit="ms"))
    if kind == "m":
        import numpy as np
        return _MISSING if np.isnat(v) else float(v / np.timedelta64(1, "s"))
    if kind == "U":
        return str(v)
    if kind == "S":
        return base64.b64encode(bytes(v)).decode("ascii")
    raise _CellError(f"numpy {v.dtype} values have no JSON form")


def _iso(v: _dt.datetime) -> str:
    """``2024-01-02T03:04:05.000Z`` (aware, in UTC) or ``2024-01-02T03:04:05.000`` (naive)."""
    if v.tzinfo is not None and v.utcoffset() is not None:
        return v.astimezone(_dt.UTC).replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
    return v.isoformat(timespec="milliseconds")


# -- DataFrames -----------------------------------------------------------------------------------

def _parts(name: Any) -> tuple[str, ...]:
    if isinstance(name, str):
        if "." in name:
            parts = name.split(".")
            if all(parts):
                return tuple(parts)
        return (str(name),)
    if isinstance(name, tuple):  # a MultiIndex column; '' pads the shorter ones
        levels = tuple(str(p) for p in name if not (p is None or p == "" or p != p))
        return levels or ("",)
    return (str(name),)


def _tree(names: list) -> tuple[dict, list[tuple[str, ...]]]:
    """The nested layout of the columns: ``{key: column position | {…}}``, and each one's path."""
    tree: dict = {}
    paths = [_parts(n) for n in names]
    for j, parts in enumerate(paths):
        node = tree
        for depth, p in enumerate(parts[:-1]):
            sub = node.setdefault(p, {})
            if not isinstance(sub, dict):  # a column already sits where this path goes deeper
                _collide(names[sub], names[j], parts[:depth + 1])
            node = sub
        last = parts[-1]
        if last in node:
            other = node[last]
            if isinstance(other, dict):  # a group of dotted columns is already here
                k = next(i for i, p in enumerate(paths[:j]) if p[:len(parts)] == parts)
                _collide(names[j], names[k], parts)
            raise SpecError(f"the sample has two columns named {names[j]!r} (the same record key "
                            f"{'.'.join(parts)!r}); rename or drop one, e.g. "
                            f"df = df.loc[:, ~df.columns.duplicated()]")
        node[last] = j
    return tree, paths


def _collide(leaf: Any, deeper: Any, path: tuple) -> None:
    raise SpecError(
        f"the sample's columns {leaf!r} and {deeper!r} collide: a dotted column name is a path into "
        f"a nested object, so {deeper!r} makes {'.'.join(path)!r} an object, but {leaf!r} is a value "
        f"of its own. Rename one (e.g. df = df.rename(columns={{{leaf!r}: "
        f"{str(leaf).replace('.', '_') + '_value'!r}}})) or drop it")


def _frame_records(frame: pd.DataFrame) -> list[dict]:
    """All rows at once: one generated function builds a row, nested groups included, from the
    converted columns (``map`` over them); then the missing cells of the rows that have some are
    dropped."""
    import numpy as np

    names = list(frame.columns)
    tree, _paths = _tree(names)
    n = len(frame)
    columns: list[list] = []
    holes = None

    def display(node: dict) -> str:  # the dict display of one level; leaves become arguments
        nonlocal holes
        items = []
        for key, sub in node.items():
            if isinstance(sub, dict):
                items.append(f"{key!r}: {display(sub)}")
                continue
            try:
                vals, mask = _column(frame.iloc[:, sub])
            except _CellError as exc:
                at = f", row {exc.row} (index {frame.index[exc.row]!r})" if exc.row is not None else ""
                name = names[sub]
                raise SpecError(f"sample column {name!r}{at}: {exc.text}; convert the column first, "
                                f"e.g. df[{name!r}] = df[{name!r}].{exc.fix}") from None
            items.append(f"{key!r}: _{len(columns)}")
            columns.append(vals)
            if mask is not None:
                holes = mask if holes is None else (holes | mask)
        return "{" + ", ".join(items) + "}"

    source = display(tree)
    if not columns:
        return [{} for _ in range(n)]
    rows = list(map(_row_maker(source, len(columns)), *columns))
    if holes is not None:
        groups = _groups(tree)
        for i in np.flatnonzero(holes).tolist():
            _drop_missing(rows[i], groups)
    return rows


def _groups(tree: dict) -> dict:
    """The nested groups of a column tree (``{"customer": {"address": {}}}``)."""
    return {k: _groups(v) for k, v in tree.items() if isinstance(v, dict)}


def _drop_missing(row: dict, groups: dict) -> None:
    for k in [k for k, v in row.items() if v is _MISSING]:
        del row[k]
    for k, sub in groups.items():
        _drop_missing(row[k], sub)


@functools.lru_cache(maxsize=256)
def _row_maker(display: str, n: int) -> Any:
    """``f(_0, _1, …)`` returning ``display``, a (nested) dict display whose keys are string
    literals (``repr``) and whose values are the arguments: the fastest way to build a row."""
    return eval(f"lambda {', '.join(f'_{i}' for i in range(n))}: {display}", {})  # noqa: S307


def _column(col: pd.Series) -> tuple[list, Any]:
    """A column as a list of JSON-like values (``_MISSING`` where empty) and its empty-cell mask
    (None when no cell is empty). Vectorised by dtype; object columns go through orjson."""
    import numpy as np
    import pandas as pd

    dtype = col.dtype
    if isinstance(dtype, pd.SparseDtype):
        col = col.sparse.to_dense()
        dtype = col.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return _categorical(col)
    if isinstance(dtype, np.dtype):
        kind = dtype.kind
        if kind in "iub":
            return col.to_numpy().tolist(), None
        if kind == "f":
            return _floats(col.to_numpy())
        if kind == "M":
            return _datetimes(col.to_numpy(), utc=False)
        if kind == "m":
            return _timedeltas(col.to_numpy())
        if kind == "c":
            raise _CellError(f"complex numbers ({dtype}) have no JSON form")
    elif isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        aware = getattr(col.dt, "tz", None) is not None
        if aware:
            col = col.dt.tz_convert("UTC").dt.tz_localize(None)
        arr = col.to_numpy()  # datetime64 in the column's own unit (no overflow past 2262)
        if arr.dtype.kind != "M":
            arr = col.to_numpy(dtype="datetime64[ns]")
        return _datetimes(arr, utc=aware)
    elif pd.api.types.is_float_dtype(dtype):
        return _floats(col.to_numpy(dtype="float64", na_value=np.nan))
    elif isinstance(dtype, pd.StringDtype) or pd.api.types.is_integer_dtype(dtype) or \
            pd.api.types.is_bool_dtype(dtype):
        vals = col.tolist()
        return _holes(vals, col.isna().to_numpy())
    elif isinstance(dtype, (pd.PeriodDtype, pd.IntervalDtype)):
        mask = col.isna().to_numpy()
        return _holes([None if m else str(v) for v, m in zip(col.tolist(), mask, strict=True)], mask)
    return _objects(col.tolist(), col.isna().to_numpy())


def _holes(vals: list, mask: Any) -> tuple[list, Any]:
    """``_MISSING`` at the masked positions; the mask, or None when nothing is masked."""
    import numpy as np

    if not mask.any():
        return vals, None
    for i in np.flatnonzero(mask).tolist():
        vals[i] = _MISSING
    return vals, mask


def _floats(arr: Any) -> tuple[list, Any]:
    import numpy as np

    mask = ~np.isfinite(arr)
    if arr.dtype.itemsize < 8:  # float16/32: the shortest decimal of the stored value
        arr = arr.astype(str).astype(np.float64)
    return _holes(arr.tolist(), mask)


def _datetimes(arr: Any, *, utc: bool) -> tuple[list, Any]:
    import numpy as np

    mask = np.isnat(arr)
    text = np.datetime_as_string(arr, unit="ms", timezone="UTC" if utc else "naive").tolist()
    return _holes(text, mask)


def _timedeltas(arr: Any) -> tuple[list, Any]:
    import numpy as np

    mask = np.isnat(arr)
    return _holes((arr / np.timedelta64(1, "s")).tolist(), mask)


def _categorical(col: pd.Series) -> tuple[list, Any]:
    import numpy as np
    import pandas as pd

    try:
        cats, catmask = _column(pd.Series(col.cat.categories))
    except _CellError as exc:  # its row is a category's, not the frame's
        raise _CellError(f"a category: {exc.text}", fix=exc.fix) from None
    lut = [*cats, _MISSING]  # code -1 (a missing cell) picks the last
    codes = col.cat.codes.to_numpy()
    vals = list(map(lut.__getitem__, codes.tolist()))
    mask = codes == -1
    if catmask is not None:
        mask = mask | np.append(catmask, True)[codes]
    return vals, (mask if mask.any() else None)


def _objects(vals: list, mask: Any) -> tuple[list, Any]:
    """An object column: plain str/int/bool cells as they are; anything else (lists, dicts,
    Timestamps, numpy scalars, Decimal …) through orjson with :func:`_default`, all cells at once.
    At this level a null result (None, NaN, NaT, ±inf …) is a missing cell."""
    import numpy as np

    types = set(map(type, vals))
    if _Null in types:  # JSON null: kept (None in the record), never a hole
        nulls = np.fromiter((v is NULL for v in vals), dtype=bool, count=len(vals))
        vals = [None if v is NULL else v for v in vals]
        out, holes = _objects(vals, mask & ~nulls)  # a None from NULL is not a hole of the column
        if holes is None:
            return out, None
        holes = holes & ~nulls
        for i in np.flatnonzero(nulls).tolist():
            out[i] = None
        return out, (holes if holes.any() else None)
    if types <= _PLAIN_F:
        if float in types or int in types:
            mask = mask.copy()
            for i, v in enumerate(vals):
                t = type(v)
                if t is float and v - v != 0:
                    mask[i] = True
                elif t is int and not _INT_MIN <= v <= _INT_MAX:
                    _too_big(v, i)
        return _holes(vals, mask)
    cells = [None if m else v for v, m in zip(vals, mask, strict=True)]
    try:
        out = orjson.loads(orjson.dumps(cells, default=_default, option=_OPTS))
    except (TypeError, orjson.JSONEncodeError):
        out = []
        for i, v in enumerate(cells):
            try:
                out.append(_py(v))
            except _CellError as exc:
                raise _CellError(exc.text, i, exc.fix) from None
    if types <= _SAFE:  # null only where a cell was already empty
        return _holes(out, mask)
    return _holes(out, np.fromiter((v is None for v in out), dtype=bool, count=len(out)))
