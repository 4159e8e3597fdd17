"""``Mapping``: JSONata rules turning one record into another, with a row-by-row DataFrame preview.

A mapping is either ``fields`` (output field → expression; a field whose expression gives
*undefined* is left out of the output) or one ``expression`` that must give an object.

Sample rows come from :func:`flownb.records.to_records` — the same conversion as ``flow.test``
and the notebook widgets (docs/records.md): missing cells are left out (JSONata *undefined*),
:data:`~flownb.records.NULL` cells are JSON null, numpy scalars become Python values, Timestamps
one ISO 8601 form, and dotted column names (``customer.email``) nested objects
(``{"customer": {"email": …}}``).

``preview(sample, flow=flow, step=name)`` previews in the flow's context: each output is wrapped
and measured as the runtimes do, so a row over the flow's ``max_message_bytes`` shows the same
``MessageTooLarge`` error the runtimes dead-letter it with. A sample read with raw pandas for a flow
whose trigger can give one (``csv.poll``, ``sql.poll`` …) draws a warning: ``flow.sample()`` reads it
as production does (docs/notebook.md, "Sample data as the trigger reads it").
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, EvaluationTimeout, ExpressionError, MessageTooLarge
from ..records import NULL, is_frame, no_gc, to_records
from . import _deadline
from ._runtime import _CONTAINERS, EvalError, Fallback, U, clean
from .expression import EvaluationError, Expression, compile
from .functions_check import check_functions

if TYPE_CHECKING:
    import pandas as pd

    from ..flow import Flow, Step

__all__ = ["Mapping", "to_records", "DEFAULT_TIMEOUT"]

#: seconds an evaluation may run in a step (its ``timeout``) and in :meth:`Mapping.preview`, per row
DEFAULT_TIMEOUT = 10.0


class Mapping:
    """``Mapping(fields={"email": "$lowercase(customer.email)"})`` or ``Mapping(expression="{…}")``."""

    def __init__(self, fields: dict[str, str] | None = None, expression: str | None = None):
        if (fields is None) == (expression is None):
            raise ConfigError("give exactly one of 'fields' (output field → expression) or "
                              "'expression' (one expression that builds the whole object)")
        self.fields = dict(fields) if fields is not None else None
        self.expression = expression
        self.errors: list[dict] = []  # the failing rows of the last preview
        self._field: str | None = None  # the field being evaluated (names the field of a timeout)
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

    def step(self, name: str) -> Step:
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
    def apply(self, body: Any, timeout: float | None = None, step: str | None = None) -> dict:
        """Map one record; raises :class:`EvaluationError` naming the field that failed, or
        :class:`~flownb.errors.EvaluationTimeout` (naming ``step`` and the field) when it runs
        longer than ``timeout`` seconds (None: no limit of its own)."""
        if timeout is None:
            return self._apply(body)
        self._field = None
        try:
            return _deadline.run(timeout, self._apply, body)
        except _deadline.Expired:
            raise self._timed_out(timeout, step) from None

    def _timed_out(self, timeout: float, step: str | None) -> EvaluationTimeout:
        """The error of an evaluation stopped at ``timeout``, naming the field it was in."""
        field: str | None
        if self.fields is None:
            field, source = "expression", self.expression or ""
        else:
            field = self._field
            source = self.fields.get(field or "", "")
        return EvaluationTimeout(timeout, step=step, field=field, expression=source)

    def _apply(self, body: Any) -> dict:
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
                self._field = name
                v = fn(body, body) if fn is not None else expr.raw(body)
                if v is not U:
                    out[name] = clean(v) if type(v) in _CONTAINERS else v
        except (EvalError, Fallback, EvaluationError, RecursionError):
            return self._apply_slow(body)
        return out

    def _apply_slow(self, body: Any) -> dict:
        out = {}
        for name, expr in self._compiled:
            self._field = name
            try:
                v = expr.raw(body)
            except EvaluationError as exc:
                raise EvaluationError(exc.detail, code=exc.code, expression=expr.source,
                                      field=name) from None
            if v is not U:
                out[name] = v
        return out

    __call__ = apply

    def preview(self, sample: Any, limit: int | None = None,
                timeout: float | None = DEFAULT_TIMEOUT, *, flow: Flow | None = None,
                step: str | None = None) -> pd.DataFrame:
        """One row per input row, one column per output field, plus ``_error`` (None when fine).

        ``timeout``: seconds one row's field may take (default 10, as a step's ``timeout``; None:
        no limit). A row that runs longer shows ``evaluation exceeded … s`` in ``_error``, and the
        preview goes on with the next row.

        ``sample``: a DataFrame (its index is kept), a list of dicts or one dict, made records by
        :func:`flownb.records.to_records` exactly as ``flow.test`` does. A failing row keeps the
        fields that worked; ``_error`` says which field failed and why. The failing rows are also
        listed in :attr:`errors` (``{"row": index, "error": text, "type": the runtime's error type}``).

        A field that gives JSON null shows :data:`~flownb.records.NULL` (``null``: the key is in the
        output with null); a field that gives nothing (*undefined*) is an empty cell (None: the key
        is left out). ``to_records`` of the preview is what the step emits.

        ``flow`` (and ``step``, the mapping's step name in it; found when one mapping step of the
        flow has this config): preview in the flow's context. Each output is wrapped as the runtimes
        wrap it (the step's message, its envelope) and measured: one over the flow's
        ``max_message_bytes`` shows the runtimes' ``MessageTooLarge`` text in ``_error`` (type
        ``MessageTooLarge``), the row the runtimes dead-letter. For the flow's first step, a
        DataFrame sample that did not come from ``flow.sample()`` when the trigger can give one
        (``csv.poll``, ``sql.poll``) draws a warning: raw ``pd.read_csv``/``pd.read_sql_table``
        read some values differently (docs/notebook.md)."""
        import pandas as pd

        name = self._step_in(flow, step) if flow is not None else None
        if flow is not None and name is not None and flow.steps and flow.steps[0].name == name:
            _warn_raw_sample(flow, sample)  # the first step: its sample stands for the trigger's records
        with no_gc():  # many small dicts and lists: the cyclic GC would rescan them for nothing
            index = None
            if is_frame(sample):
                sample = sample if limit is None else sample.iloc[:limit]
                index = sample.index
            records = to_records(sample, limit)
            kinds: list = [None] * len(records)
            if self.fields is None:
                data, errors = self._preview_expression(records, timeout, kinds)
            else:
                data, errors = self._preview_fields(records, timeout, kinds)
            if flow is not None and name is not None:
                _check_sizes(flow, name, records, data, errors, kinds)
            self.errors = [{"row": (index[i] if index is not None else i), "error": e,
                            "type": kinds[i] or "EvaluationError"}
                           for i, e in enumerate(errors) if e is not None]
            data["_error"] = errors
            return pd.DataFrame(data, index=index)

    def _step_in(self, flow: Flow, step: str | None) -> str:
        """The name of this mapping's step in ``flow`` (``step`` checked, or found by config)."""
        if step is not None:
            return flow.step(step).name  # SpecError naming the flow's steps when it has no such step
        same = [s.name for s in flow.actions if s.component == "mapping" and s.config == self.config]
        if len(same) == 1:
            return same[0]
        why = "no mapping step has this config" if not same else f"steps {', '.join(same)} have it"
        raise ConfigError(f"say which step of the flow '{flow.name}' this mapping previews: "
                          f"preview(sample, flow=flow, step='…') ({why})")

    def _preview_fields(self, records: list, timeout: float | None, kinds: list) -> tuple[dict, list]:
        """Field by field over all rows. The compiled function runs over the rows in one
        ``list.extend(map(…))``; a row that raises is evaluated again through the checked path
        (:meth:`Expression.raw`: the fallback engine, or the error with its text), and the loop
        goes on with the next row. The whole column runs under one deadline of ``timeout``; if a
        column takes longer, its remaining rows run one by one, each with its own ``timeout``."""
        n = len(records)
        cols: dict[str, list] = {}
        errors: list = [None] * n
        for name, fn, expr in self._fast:
            raw = expr.raw
            col: list = []
            if fn is not None:
                try:
                    _deadline.run(timeout, _fill, col, fn, records, raw, name, errors, timeout, kinds)
                except _deadline.Expired:
                    pass  # the rows from len(col) on: one by one below
            if len(col) != n:  # no compiled function, or a column that ran out of time: row by row
                col.extend(_checked(raw, records[i], name, errors, i, timeout, kinds)
                           for i in range(len(col), n))
            if not _SHOWN.issuperset(set(map(type, col))):  # undefined → None, null → NULL, plain lists
                col = [None if v is U else NULL if v is None else (clean(v) if type(v) in _CONTAINERS else v)
                       for v in col]
            cols[name] = col
        return cols, errors

    def _preview_expression(self, records: list, timeout: float | None, kinds: list) -> tuple[dict, list]:
        rows: list = []
        errors: list = []
        for i, rec in enumerate(records):
            try:
                rows.append(self.apply(rec, timeout))
                errors.append(None)
            except (EvaluationError, EvaluationTimeout) as exc:
                rows.append({})
                errors.append(exc.detail)
                kinds[i] = type(exc).__name__
        names: dict[str, None] = {}
        for r in rows:
            names.update(dict.fromkeys(r))
        # a key the row lacks: None (missing); a key holding JSON null: NULL
        return {n: [NULL if (v := r.get(n, U)) is None else (None if v is U else v) for r in rows]
                for n in names}, errors

    def failing_rows(self) -> int:
        """How many rows failed in the last preview."""
        return len(self.errors)


#: value types a preview column shows as they are (None, JSON null, is shown as NULL)
_SHOWN = frozenset({str, int, float, bool})


def _fill(col: list, fn: Any, records: list, raw: Any, name: str, errors: list,
          timeout: float | None, kinds: list) -> None:
    """Append ``fn(record, record)`` for the records from ``len(col)`` on (see _preview_fields)."""
    rows = iter(records)
    roots = iter(records)  # advance together: (record, record)
    n = len(records)
    while len(col) < n:
        try:
            col.extend(map(fn, rows, roots))
        except (EvalError, Fallback, EvaluationError, RecursionError):
            # list.extend keeps the values before the failing row, and both iterators are just
            # past it
            i = len(col)
            col.append(_checked(raw, records[i], name, errors, i, timeout, kinds))


def _checked(raw: Any, rec: Any, name: str, errors: list, i: int,
             timeout: float | None, kinds: list) -> Any:
    """``raw(rec)``; an evaluation error is added to ``errors[i]`` (its type, the first of the row,
    to ``kinds[i]``: the step fails at its first failing field) and gives undefined."""
    try:
        return raw(rec, timeout=timeout)
    except (EvaluationError, EvaluationTimeout) as exc:
        msg = f"field '{name}': {exc.detail}"
        errors[i] = msg if errors[i] is None else f"{errors[i]}; {msg}"
        kinds[i] = kinds[i] or type(exc).__name__
        return U


def _check_sizes(flow: Flow, step: str, records: list, data: dict, errors: list, kinds: list) -> None:
    """Mark the rows whose output, wrapped as the runtimes wrap it, is over the flow's
    ``max_message_bytes``: ``errors[i]`` the runtimes' text, ``kinds[i]`` ``MessageTooLarge``.
    The input is the trigger's message of the record (the flow's name, ``meta.spec``, no headers)
    and the output its child from ``step``, the message a runtime encodes and measures."""
    from ..message import Message

    limit = int(flow.max_message_bytes)
    spec = flow.spec_hash(short=True)
    names = list(data)
    for i, rec in enumerate(records):
        if errors[i] is not None:  # an evaluation error: dead-lettered with that, never measured
            continue
        body: dict[str, Any] = {}
        for n in names:
            v = data[n][i]
            if v is NULL:
                body[n] = None
            elif v is not None and not (type(v) is float and v != v):
                body[n] = v
        payload = Message.first(rec, flow.name, flow.trigger.name, spec).child(body, step, spec).to_json()
        if len(payload) > limit:
            errors[i] = str(MessageTooLarge.over(step, len(payload), limit, "an output of this step"))
            kinds[i] = "MessageTooLarge"


def raw_sample_note(flow: Flow, sample: Any) -> str | None:
    """What a DataFrame ``sample`` of ``flow``'s records may get wrong when it did not come from
    ``flow.sample()`` and the trigger gives samples whose raw pandas reader differs (``csv.poll``:
    ``read_csv``; ``sql.poll``: ``read_sql_table``); None otherwise. ``Mapping.preview(flow=…)``
    (for the first step), ``flow.test`` and the widgets show it (docs/notebook.md)."""
    if not is_frame(sample) or sample.attrs.get("flownb.sample"):
        return None
    from ..errors import UnknownComponentError
    from ..registry import get
    try:
        cls = get(flow.trigger.component, step=flow.trigger.name)
    except UnknownComponentError:  # flow.validate_components() and flow.test say so
        return None
    how = getattr(cls, "raw_sample_differences", "")
    if not (getattr(cls, "samples", False) and how):
        return None
    return (f"this sample did not come from flow.sample(): {how}; flow.sample(n) reads the source with "
            f"{flow.trigger.component}'s own code, so the preview sees what the flow will receive")


def _warn_raw_sample(flow: Flow, sample: Any) -> None:
    note = raw_sample_note(flow, sample)
    if note is not None:
        warnings.warn(note, UserWarning, stacklevel=3)


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
        check_functions(src)  # as flow.test's config check: an unknown function is named once, here
        return compile(src)
    except ExpressionError as exc:
        exc.expression = exc.expression or src
        raise exc.at(field=field) from None


