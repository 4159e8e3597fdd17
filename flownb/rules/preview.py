"""``Mapping.preview``: a mapping run over a sample, one row per record, as the runtimes would run it.

The compiled function of each field runs over the whole column at once; a row that fails runs again
through the checked path, which gives the error text the runtimes record (or the fallback engine's
value). In a flow's context (``flow=``) each output is wrapped and measured as the runtimes do, so a
row over the flow's ``max_message_bytes`` shows the ``MessageTooLarge`` error the runtimes
dead-letter it with; a raw pandas sample for a trigger that reads its source differently draws a
warning (:func:`raw_sample_note`, shared with ``flow.test``). :meth:`Mapping.preview` documents the
result; this module computes it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, EvaluationTimeout, MessageTooLarge
from ..records import NULL, is_frame, no_gc, to_records
from . import _deadline
from ._runtime import CONTAINERS, EvalError, Fallback, U, clean
from .expression import EvaluationError

if TYPE_CHECKING:
    import pandas as pd

    from ..flow import Flow
    from .mapping import Mapping

__all__ = ["preview", "raw_sample_note"]


def preview(mapping: Mapping, sample: Any, limit: int | None, timeout: float | None, *,
            flow: Flow | None = None, step: str | None = None) -> pd.DataFrame:
    """:meth:`Mapping.preview` (see there); sets ``mapping.errors``."""
    import pandas as pd

    name = _step_in(mapping, flow, step) if flow is not None else None
    if flow is not None and name is not None and flow.steps and flow.steps[0].name == name:
        _warn_raw_sample(flow, sample)  # the first step: its sample stands for the trigger's records
    with no_gc():  # many small dicts and lists: the cyclic GC would rescan them for nothing
        index = None
        if is_frame(sample):
            sample = sample if limit is None else sample.iloc[:limit]
            index = sample.index
        records = to_records(sample, limit)
        kinds: list = [None] * len(records)
        if mapping.fields is None:
            data, errors = _preview_expression(mapping, records, timeout, kinds)
        else:
            data, errors = _preview_fields(mapping, records, timeout, kinds)
        if flow is not None and name is not None:
            _check_sizes(flow, name, records, data, errors, kinds)
        mapping.errors = [{"row": (index[i] if index is not None else i), "error": e,
                           "type": kinds[i] or "EvaluationError"}
                          for i, e in enumerate(errors) if e is not None]
        data["_error"] = errors
        return pd.DataFrame(data, index=index)


def _step_in(mapping: Mapping, flow: Flow, step: str | None) -> str:
    """The name of this mapping's step in ``flow`` (``step`` checked, or found by config)."""
    if step is not None:
        return flow.step(step).name  # SpecError naming the flow's steps when it has no such step
    same = [s.name for s in flow.actions if s.component == "mapping" and s.config == mapping.config]
    if len(same) == 1:
        return same[0]
    why = "no mapping step has this config" if not same else f"steps {', '.join(same)} have it"
    raise ConfigError(f"say which step of the flow '{flow.name}' this mapping previews: "
                      f"preview(sample, flow=flow, step='…') ({why})")


def _preview_fields(mapping: Mapping, records: list, timeout: float | None, kinds: list) -> tuple[dict, list]:
    """Field by field over all rows. The compiled function runs over the rows in one
    ``list.extend(map(…))``; a row that raises is evaluated again through the checked path
    (:meth:`Expression.raw`: the fallback engine, or the error with its text), and the loop
    goes on with the next row. The whole column runs under one deadline of ``timeout``; if a
    column takes longer, its remaining rows run one by one, each with its own ``timeout``."""
    n = len(records)
    cols: dict[str, list] = {}
    errors: list = [None] * n
    for name, fn, expr in mapping.fast_path:
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
            col = [None if v is U else NULL if v is None else (clean(v) if type(v) in CONTAINERS else v)
                   for v in col]
        cols[name] = col
    return cols, errors


def _preview_expression(mapping: Mapping, records: list, timeout: float | None,
                        kinds: list) -> tuple[dict, list]:
    rows: list = []
    errors: list = []
    for i, rec in enumerate(records):
        try:
            rows.append(mapping.apply(rec, timeout))
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
        warnings.warn(note, UserWarning, stacklevel=4)  # the caller of Mapping.preview
