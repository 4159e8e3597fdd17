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
as production does (docs/notebook.md, "Sample data as the trigger reads it"). The preview's code
lives in :mod:`flownb.rules.preview`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, EvaluationTimeout, ExpressionError
from ..records import to_records
from . import _deadline
from ._runtime import CONTAINERS, EvalError, Fallback, U, clean
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
                    out[name] = clean(v) if type(v) in CONTAINERS else v
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
        from .preview import preview
        return preview(self, sample, limit, timeout, flow=flow, step=step)

    @property
    def fast_path(self) -> list[tuple[str, Any, Expression]]:
        """Per field: its name, its compiled function (None: the fallback engine runs it) and its
        Expression — what :meth:`apply` and the preview run (a ``fields`` mapping only)."""
        return self._fast

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
        check_functions(src)  # as flow.test's config check: an unknown function is named once, here
        return compile(src)
    except ExpressionError as exc:
        exc.expression = exc.expression or src
        raise exc.at(field=field) from None


