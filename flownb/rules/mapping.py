"""``Mapping``: JSONata rules turning one record into another, with a row-by-row DataFrame preview.

A mapping is either ``fields`` (output field → expression; a field whose expression gives
*undefined* is left out of the output) or one ``expression`` that must give an object.

Sample rows (``to_records``): a DataFrame becomes JSON-like dicts — NaN/NaT/None cells are left out
(missing, so ``$exists(x)`` is false), numpy scalars become Python numbers, Timestamps become ISO 8601
strings, and dotted column names (``customer.email``) are unflattened into nested objects
(``{"customer": {"email": …}}``). A list of dicts is used as it is.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

from ..errors import ConfigError, ExpressionError
from ._runtime import U
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
        cols: dict[str, list] = {}
        errors: list = [None] * len(records)
        for name, expr in self._compiled:
            fn = expr.raw
            col = [None] * len(records)
            for i, rec in enumerate(records):
                try:
                    v = fn(rec)
                except EvaluationError as exc:
                    msg = f"field '{name}': {exc.detail}"
                    errors[i] = msg if errors[i] is None else f"{errors[i]}; {msg}"
                    continue
                if v is not U:
                    col[i] = v
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
    import numpy as np
    import pandas as pd

    names = [str(c) for c in frame.columns]
    columns = []
    holes = False
    for (_, col) in frame.items():
        kind = col.dtype.kind
        if kind == "M" or isinstance(col.dtype, pd.DatetimeTZDtype):
            na = col.isna().to_numpy()
            vals = [_MISSING if m else v.isoformat() for v, m in zip(col.tolist(), na)]
            holes = holes or bool(na.any())
        elif kind == "m":
            vals = [_MISSING if pd.isna(v) else v.total_seconds() for v in col.tolist()]
            holes = True
        elif kind == "f":
            arr = col.to_numpy()
            vals = arr.tolist()
            if np.isnan(arr).any():
                holes = True
                vals = [_MISSING if v != v else v for v in vals]
        elif kind in "iub":
            vals = col.tolist()
        else:
            vals = [_cell(v) for v in col.tolist()]
            holes = True
        columns.append(vals)
    rows = [dict(zip(names, vs)) for vs in zip(*columns)] if columns else [{} for _ in range(len(frame))]
    if holes:
        for r in rows:
            if _MISSING in r.values():
                for k in [k for k, v in r.items() if v is _MISSING]:
                    del r[k]
    if any("." in n for n in names):
        rows = [_unflatten(r) for r in rows]
    return rows


def _cell(v: Any) -> Any:
    t = type(v)
    if t is str or t is int or t is bool or t is dict or t is list:
        return _json(v) if (t is dict or t is list) else v
    if v is None:
        return _MISSING
    if t is float:
        return _MISSING if math.isnan(v) else v
    return _json(v, top=True)


def _json(v: Any, top: bool = False) -> Any:
    """A nested value as JSON-like Python (numpy scalars/arrays, Timestamps, NaN inside)."""
    t = type(v)
    if t is str or t is int or t is bool or v is None:
        return v
    if t is float:
        return (_MISSING if top else None) if math.isnan(v) else v
    if t is dict:
        return {str(k): _json(x) for k, x in v.items()}
    if t is list or t is tuple:
        return [_json(x) for x in v]
    import numpy as np
    import pandas as pd
    if v is pd.NaT or (isinstance(v, np.floating) and np.isnan(v)):
        return _MISSING if top else None
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return [_json(x) for x in v.tolist()]
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v


def _unflatten(row: dict) -> dict:
    out: dict = {}
    for key, v in row.items():
        if "." not in key:
            out[key] = v
            continue
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = node[p] = {}
            node = nxt
        node[parts[-1]] = v
    return out
