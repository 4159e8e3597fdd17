"""``Mapping``: JSONata rules turning one record into another, with a row-by-row DataFrame preview.

A mapping is either ``fields`` (output field → expression; a field whose expression gives
*undefined* is left out of the output) or one ``expression`` that must give an object.

Sample rows (``to_records``): a DataFrame becomes JSON-like dicts — NaN/NaT/None cells are left out
(missing, so ``$exists(x)`` is false), numpy scalars become Python numbers, Timestamps become ISO 8601
strings, and dotted column names (``customer.email``) are unflattened into nested objects
(``{"customer": {"email": …}}``). A list of dicts is used as it is.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from ..errors import ConfigError, ExpressionError
from ._runtime import _CONTAINERS, U, EvalError, Fallback, clean
from .expression import EvaluationError, Expression, compile

if TYPE_CHECKING:
    import pandas as pd

    from ..flow import Step

__all__ = ["Mapping", "to_records"]


class Mapping:
    """``Mapping(fields={"email": "$lowercase(customer.email)"})`` or ``Mapping(expression="{…}")``."""

    def __init__(self, fields: dict[str, str] | None = None, expression: str | None = None):
        if (fields is None) == (expression is None):
            raise ConfigError("give exactly one of 'fields' (output field → expression) or "
                              "'expression' (one expression that builds the whole object)")
        self.fields = dict(fields) if fields is not None else None
        self.expression = expression
        self.errors: list[dict] = []  # the failing rows of the last preview
        self._compiled: list[tuple[str, Expression]] = []
        if fields is not None:
            if not fields:
                raise ConfigError("'fields' is empty; add at least one 'output: expression' pair",
                                  field="fields")
            for name, src in fields.items():
                self._compiled.append((name, _compile_field(src, f"fields.{name}")))
            # (name, compiled function or None, Expression): the per-record fast path
            self._fast = [(n, e.function, e) for n, e in self._compiled]
        else:
            self._expr = _compile_field(expression, "expression")

    # -- description ------------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """The config of the ``mapping`` component."""
        return {"fields": dict(self.fields)} if self.fields is not None else {"expression": self.expression}

    def step(self, name: str) -> "Step":
        """A flow step (component ``mapping``) with this mapping as config."""
        from ..flow import Step
        return Step(name=name, component="mapping", config=self.config)

    @property
    def engines(self) -> dict[str, str]:
        """Which engine evaluates each field (``compiled`` or ``jsonatapy``)."""
        if self.fields is None:
            return {"expression": self._expr.engine}
        return {n: e.engine for n, e in self._compiled}

    def __repr__(self) -> str:
        return f"Mapping({self.config!r})"

    # -- evaluation -------------------------------------------------------------------------------
    def apply(self, body: Any) -> dict:
        """Map one record; raises :class:`EvaluationError` naming the field that failed."""
        if self.fields is None:
            out = self._expr.raw(body)
            if type(out) is not dict:
                raise EvaluationError(f"the mapping expression gave {_kind(out)}, not an object; "
                                      f"wrap it in {{…}} or use a 'split' step for arrays",
                                      expression=self.expression or "")
            return out
        out = {}
        name = ""
        try:
            for name, fn, expr in self._fast:
                v = fn(body, body) if fn is not None else expr.raw(body)
                if v is not U:
                    out[name] = clean(v) if type(v) in _CONTAINERS else v
        except (EvalError, Fallback, EvaluationError, RecursionError):
            return self._apply_slow(body)
        return out

    def _apply_slow(self, body: Any) -> dict:
        out = {}
        for name, expr in self._compiled:
            try:
                v = expr.raw(body)
            except EvaluationError as exc:
                raise EvaluationError(exc.detail, code=exc.code, expression=expr.source,
                                      field=name) from None
            if v is not U:
                out[name] = v
        return out

    __call__ = apply

    def preview(self, sample: Any, limit: int | None = None) -> "pd.DataFrame":
        """One row per input row, one column per output field, plus ``_error`` (None when fine).

        A failing row keeps the fields that worked; ``_error`` says which field failed and why. The
        failing rows are also listed in :attr:`errors` (``{"row": index, "error": text}``)."""
        import pandas as pd

        with _no_gc():  # many small dicts and lists: the cyclic GC would rescan them for nothing
            index = None
            if isinstance(sample, pd.DataFrame):
                frame = sample if limit is None else sample.iloc[:limit]
                index = frame.index
                records = to_records(frame)
            else:
                records = list(sample if limit is None else _take(sample, limit))
            if self.fields is None:
                data, errors = self._preview_expression(records)
            else:
                data, errors = self._preview_fields(records)
            self.errors = [{"row": (index[i] if index is not None else i), "error": e}
                           for i, e in enumerate(errors) if e is not None]
            data["_error"] = errors
            return pd.DataFrame(data, index=index)

    def _preview_fields(self, records: list) -> tuple[dict, list]:
        """Field by field over all rows. The compiled function runs over the rows in one
        ``list.extend(map(…))``; a row that raises is evaluated again through the checked path
        (:meth:`Expression.raw`: the fallback engine, or the error with its text), and the loop
        goes on with the next row."""
        n = len(records)
        cols: dict[str, list] = {}
        errors: list = [None] * n
        for name, fn, expr in self._fast:
            raw = expr.raw
            col: list = []
            if fn is not None:
                rows, roots = iter(records), iter(records)  # advance together: (record, record)
                while True:
                    try:
                        col.extend(map(fn, rows, roots))
                        break
                    except (EvalError, Fallback, EvaluationError, RecursionError):
                        # list.extend keeps the values before the failing row, and both
                        # iterators are just past it
                        i = len(col)
                        col.append(_checked(raw, records[i], name, errors, i))
            if len(col) != n:  # no compiled function (or, never expected, a short column): row by row
                col = [_checked(raw, rec, name, errors, i) for i, rec in enumerate(records)]
            if not _PLAIN.issuperset(set(map(type, col))):  # undefined → None, plain lists
                col = [None if v is U else (clean(v) if type(v) in _CONTAINERS else v) for v in col]
            cols[name] = col
        return cols, errors

    def _preview_expression(self, records: list) -> tuple[dict, list]:
        rows: list = []
        errors: list = []
        for rec in records:
            try:
                rows.append(self.apply(rec))
                errors.append(None)
            except EvaluationError as exc:
                rows.append({})
                errors.append(exc.detail)
        names: dict[str, None] = {}
        for r in rows:
            names.update(dict.fromkeys(r))
        return {n: [r.get(n) for r in rows] for n in names}, errors

    def failing_rows(self) -> int:
        """How many rows failed in the last preview."""
        return len(self.errors)


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _checked(raw: Any, rec: Any, name: str, errors: list, i: int) -> Any:
    """``raw(rec)``; an evaluation error is added to ``errors[i]`` and gives undefined."""
    try:
        return raw(rec)
    except EvaluationError as exc:
        msg = f"field '{name}': {exc.detail}"
        errors[i] = msg if errors[i] is None else f"{errors[i]}; {msg}"
        return U


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused (and restored as it was): building many containers
    otherwise triggers collections that walk every live object, again and again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _kind(v: Any) -> str:
    if v is U:
        return "nothing (undefined)"
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), type(v).__name__)


def _compile_field(src: Any, field: str) -> Expression:
    if not isinstance(src, str):
        raise ConfigError(f"an expression must be a string of JSONata, got {type(src).__name__}",
                          field=field)
    try:
        return compile(src)
    except ExpressionError as exc:
        raise ExpressionError(exc.reason.split(" at position")[0] if exc.position is not None
                              else exc.reason, expression=src, position=exc.position,
                              field=field) from None


def _take(items: Iterable, n: int) -> list:
    out = []
    for i, x in enumerate(items):
        if i >= n:
            break
        out.append(x)
    return out


# -- sample rows ------------------------------------------------------------------------------------

_MISSING = object()


def to_records(frame: "pd.DataFrame") -> list[dict]:
    """DataFrame rows as JSON-like dicts (see the module docstring for the rules)."""
    with _no_gc():
        return _to_records(frame)


def _to_records(frame: "pd.DataFrame") -> list[dict]:
    tree: dict = {}
    for name, col in frame.items():
        parts = str(name).split(".")
        node = tree
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = node[p] = {}
            node = nxt
        if not isinstance(node.get(parts[-1]), dict):  # a nested group wins over a flat column
            node[parts[-1]] = col
    return _build(tree, len(frame))


def _build(tree: dict, n: int) -> list[dict]:
    """All rows at once: one generated function builds a row, nested groups included, from the
    converted columns (``map`` over them); then the empty cells of the rows that have some are
    dropped."""
    import numpy as np

    columns: list[list] = []
    holes = None

    def display(node: dict) -> str:  # the dict display of one level; leaves become arguments
        nonlocal holes
        items = []
        for key, sub in node.items():
            if isinstance(sub, dict):
                items.append(f"{key!r}: {display(sub)}")
                continue
            vals, mask = _column(sub)
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


def _column(col: "pd.Series") -> tuple[list, Any]:
    """A column as a list of JSON-like values (``_MISSING`` where empty) and its empty-cell mask."""
    import numpy as np
    import pandas as pd

    kind = col.dtype.kind
    if kind in "iub":
        return col.tolist(), None
    if kind == "f":
        arr = col.to_numpy()
        vals, mask = arr.tolist(), np.isnan(arr)
    elif kind == "M" or isinstance(col.dtype, pd.DatetimeTZDtype):
        mask = col.isna().to_numpy()
        vals = [None if m else v.isoformat() for v, m in zip(col.tolist(), mask)]
    elif kind == "m":
        mask = col.isna().to_numpy()
        vals = [None if m else v.total_seconds() for v, m in zip(col.tolist(), mask)]
    else:
        mask = col.isna().to_numpy()
        vals = col.tolist()
        if pd.api.types.infer_dtype(col, skipna=True) not in ("string", "empty", "boolean", "integer"):
            vals = _jsonable([None if m else v for v, m in zip(vals, mask)])
    if not mask.any():
        return vals, None
    for i in np.flatnonzero(mask).tolist():
        vals[i] = _MISSING
    return vals, mask


def _jsonable(vals: list) -> list:
    """Nested cells as JSON-like Python: numpy scalars/arrays, Timestamps, NaN (→ null) inside."""
    import orjson
    try:
        return orjson.loads(orjson.dumps(vals, default=_default,
                                         option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS))
    except (TypeError, orjson.JSONEncodeError):
        return [_json(v) for v in vals]


def _default(v: Any) -> Any:
    if hasattr(v, "isoformat") and v == v:
        return v.isoformat()
    if hasattr(v, "tolist"):
        return v.tolist()
    if v != v:  # NaT, pd.NA
        return None
    raise TypeError(f"{type(v).__name__} is not JSON")


def _json(v: Any) -> Any:
    t = type(v)
    if t is str or t is int or t is bool or v is None:
        return v
    if t is float:
        return None if math.isnan(v) else v
    if t is dict:
        return {str(k): _json(x) for k, x in v.items()}
    if t is list or t is tuple:
        return [_json(x) for x in v]
    if hasattr(v, "tolist"):
        return _json(v.tolist())
    if hasattr(v, "isoformat"):
        return v.isoformat() if v == v else None
    return str(v)
