"""The notebook as production's debugger: dead letters as a DataFrame, retest them with the fixed
rules, replay them (edited), on either runtime (docs/debugging.md).

- :func:`dead_letters` reads a flow's dead letters without consuming them: the embedded runtime's
  ``dead`` table, or the broker's dead-letter queues (read unacknowledged, then returned).
- :func:`retest` (``flow.retest``) runs the *current* flow in memory on the virtual clock, starting
  at the step where each record died, and says what would become of it now.
- :func:`replay` sends the selected dead letters back to their step — with the bodies as edited in
  the DataFrame — and removes them from the dead letters only once the hand-off is durable.

Edits are a difference against the stored dead letter: a cell whose value equals the stored value
(as listed: secrets masked) leaves the stored value as it is (exact type, ``null``, secrets); a cell
that differs sets that field; an empty cell (None/NaN) removes it, as a missing cell does in
``to_records`` (docs/records.md); a new column adds a field (``a.b`` is a path); a dropped column
changes nothing. pandas is imported only by the functions that return a DataFrame: :func:`replay_rows`
(behind ``flownb dlq replay --edit``) runs without it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .errors import FlownbError, SpecError, did_you_mean
from .flow import Flow, load
from .message import Message, new_id

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["dead_letters", "retest", "replay", "replay_rows", "read_edits", "spec_hash", "flatten",
           "edited_body", "META_COLUMNS", "REPLAYED_FROM", "REPLAY_SPEC", "REPLAYED_AT"]

#: the columns :func:`dead_letters` adds to the body's fields
META_COLUMNS = ("_id", "_step", "_error_type", "_error", "_attempt", "_failed_at", "_trace", "_spec")
#: headers of a replayed message (they travel with it and its children to the last step)
REPLAYED_FROM = "x-flownb-replayed-from"   # "<step>/<dead letter id>"
REPLAY_SPEC = "x-flownb-replay-spec"       # spec_hash() of the flow it was replayed under
REPLAYED_AT = "x-flownb-replayed-at"       # ISO time of the replay
REPLAY_EDITED = "x-flownb-replay-edited"   # "true" when the body was edited
_ORIGINALS = "flownb.dead_letters"         # DataFrame.attrs key: the listed dead letters


class _Originals(dict):
    """``_id`` → (step, message as listed) of a :func:`dead_letters` frame, kept in ``df.attrs``; pandas
    deep-copies attrs on every operation, this is shared instead (never changed after listing)."""

    def __deepcopy__(self, memo: dict) -> _Originals:
        return self


# -- small helpers ---------------------------------------------------------------------------------

def _as_flow(spec: Flow | str | Path) -> Flow:
    return spec if isinstance(spec, Flow) else load(spec if isinstance(spec, Path) else str(spec))


def spec_hash(flow: Flow) -> str:
    """Which rules a replay ran under: :meth:`Flow.spec_hash`, the hash deployments carry too
    (``flownb.io/spec-hash`` on Kubernetes), so a replayed message can be matched to a deployment."""
    return flow.spec_hash()


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float):
        return math.isnan(v) or math.isinf(v)
    if type(v).__name__ in ("NAType", "NaTType"):
        return True
    try:  # numpy floating NaN
        return bool(v != v) if not isinstance(v, (list, dict, str, tuple)) else False
    except (TypeError, ValueError):
        return False


def _splittable(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and k and "." not in k for k in d)


def flatten(body: dict, prefix: tuple = ()) -> dict[str, tuple[tuple, Any]]:
    """``{column: (path, value)}`` of a body in the preview's convention: a nested object becomes
    dotted columns (``customer.email``); an empty object, an array, and an object with a key that
    is empty or holds a dot stay one cell (so the column name reads back as the same path)."""
    out: dict[str, tuple[tuple, Any]] = {}
    for k, v in body.items():
        path = (*prefix, k)
        if isinstance(v, dict) and _splittable(v):
            out.update(flatten(v, path))
        else:
            out[".".join(map(str, path))] = (path, v)
    return out


def _json_value(v: Any) -> Any:
    """A cell's value as JSON, by the records conventions (numpy scalars, timestamps …)."""
    if isinstance(v, (str, int, bool)) or v is None:
        return v
    from .records import to_records
    return to_records([{"v": v}])[0].get("v")


def _equal(a: Any, b: Any) -> bool:
    try:
        same = a == b
        return bool(same) if not hasattr(same, "all") else bool(same.all())
    except (TypeError, ValueError):
        return False


def _set_path(body: dict, path: tuple, value: Any) -> None:
    d = body
    for k in path[:-1]:
        nxt = d.get(k)
        if not isinstance(nxt, dict):
            nxt = d[k] = {}
        d = nxt
    d[path[-1]] = value


def _del_path(body: dict, path: tuple) -> None:
    d = body
    for k in path[:-1]:
        nxt = d.get(k)
        if not isinstance(nxt, dict):
            return
        d = nxt
    d.pop(path[-1], None)


def edited_body(stored: dict, listed: dict | None, row: Mapping[str, Any]) -> tuple[dict, bool]:
    """The body to run or replay for ``row`` (a DataFrame row or a JSONL line as a dict) and whether
    it differs from ``stored`` (the dead letter's body as stored). ``listed``: the body as the user
    saw it (secrets masked; None: ``stored``). See the module docstring for the rules."""
    import copy
    shown = flatten(listed if listed is not None else stored)
    body = copy.deepcopy(stored)
    changed = False
    for col, cell in row.items():
        if not isinstance(col, str) or col in META_COLUMNS:
            continue
        if col in shown:
            path, before = shown[col]
            if _missing(cell):
                if before is None:
                    continue  # a stored null shows as an empty cell
                _del_path(body, path)
                changed = True
            elif not _equal(cell, before):
                _set_path(body, path, _json_value(cell))
                changed = True
        elif not _missing(cell):  # a new field (a column other rows have, or one the user added)
            path = tuple(col.split(".")) if all(col.split(".")) else (col,)
            _set_path(body, path, _json_value(cell))
            changed = True
    return body, changed


# -- listing ---------------------------------------------------------------------------------------

def _store(flow: Flow, state_dir: str | Path | None, broker: str | None):
    if state_dir is not None and broker is not None:
        raise SpecError("pass state_dir (the embedded runtime) or broker (RabbitMQ), not both")
    if broker is not None:
        from .runtime.amqp.dlq import AmqpDeadLetters
        return AmqpDeadLetters(flow, broker)
    from .runtime.local.dlq import LocalDeadLetters
    return LocalDeadLetters(flow, Path(state_dir if state_dir is not None else ".flownb"))


def _sorted(items: list, broker: str | None) -> list:
    """On RabbitMQ, dead letters in the order they failed: a quorum queue does not keep the order
    of messages returned to it (RabbitMQ 3.10.8: measured, docs/debugging.md), so the queue order
    alone would change from one listing to the next. The embedded runtime lists in row order."""
    if broker is None:
        return items
    return sorted(items, key=lambda d: (d.error.at, d.message.created, d.id))


def _list(flow: Flow, state_dir, broker, step: str | None) -> list:
    store = _store(flow, state_dir, broker)
    try:
        return _sorted(store.list(step), broker)
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


def dead_letters(spec: Flow | str | Path, state_dir: str | Path | None = None, broker: str | None = None,
                 step: str | None = None) -> pd.DataFrame:
    """The dead letters of a flow as a DataFrame, one row each: ``_id, _step, _error_type, _error,
    _attempt, _failed_at, _trace, _spec`` (``DeadLetter.spec``: the spec it died under), then the
    body's fields (nested objects as dotted columns, the convention of ``Mapping.preview`` and
    ``flow.test``). Secrets are masked as in ``flownb dlq
    list``. Nothing is consumed or reordered: on the embedded runtime (``state_dir``, default
    ``.flownb``) the rows are read; on RabbitMQ (``broker``) each dead-letter queue is read without
    acknowledging and returned whole. ``step``: one step's dead letters only."""
    import pandas as pd
    flow = _as_flow(spec)
    items = _list(flow, state_dir, broker, step)
    rows, originals = [], _Originals()
    for d in items:
        row: dict[str, Any] = {"_id": d.id, "_step": d.step, "_error_type": d.error.type,
                               "_error": d.error.message, "_attempt": d.error.attempt,
                               "_failed_at": pd.Timestamp(d.error.at, unit="s", tz="UTC"),
                               "_trace": d.message.trace, "_spec": d.spec}
        for col, (_path, value) in flatten(d.message.body).items():
            row.setdefault(col, value)
        rows.append(row)
        originals[d.id] = (d.step, d.message)
    frame = pd.DataFrame(rows, columns=None if rows else list(META_COLUMNS))
    frame.attrs[_ORIGINALS] = originals
    frame.attrs["flownb.flow"] = flow.name
    return frame


def _frame_rows(dead_df: Any) -> list[dict]:
    """The rows of a dead-letter DataFrame (or a list of dicts) as dicts, with ``_id``/``_step``."""
    if hasattr(dead_df, "to_dict") and hasattr(dead_df, "columns"):
        missing = [c for c in ("_id", "_step") if c not in dead_df.columns]
        if missing:
            raise SpecError(f"the DataFrame has no column(s) {', '.join(missing)}: pass rows of "
                            f"flownb.dead_letters(...) (select rows, edit cells, but keep _id and _step)")
        rows = dead_df.to_dict("records")
    else:
        rows = [dict(r) for r in dead_df]
    for i, r in enumerate(rows):
        if _missing(r.get("_id")) or _missing(r.get("_step")):
            raise SpecError(f"row {i} has no _id or _step: every row must name the dead letter it comes "
                            f"from (see flownb.dead_letters)")
        r["_id"], r["_step"] = str(r["_id"]), str(r["_step"])
    return rows


# -- retest ----------------------------------------------------------------------------------------

_OUTCOME_COLOURS = {"delivered": "#e3f4e1", "filtered": "#fff4d6", "dead": "#fbe3e1"}


def _retest_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as a :class:`RetestFrame` (defined on first use: pandas is imported lazily)."""
    if "RetestFrame" not in globals():
        import pandas as pd

        class RetestFrame(pd.DataFrame):
            """The before/after of :func:`retest`: a DataFrame whose notebook display colours each
            row by its new outcome (green delivered, amber filtered, red dead) and marks the
            records whose outcome changed."""

            @property
            def _constructor(self):
                return RetestFrame

            def styled(self, max_rows: int = 200):
                def colour(row):
                    bg = _OUTCOME_COLOURS.get(row.get("outcome"), "")
                    weight = "bold" if row.get("changed") else "normal"
                    return [f"background-color: {bg}; font-weight: {weight}"] * len(row)
                return self.head(max_rows).style.apply(colour, axis=1)

            def _repr_html_(self) -> str:
                n = len(self)
                counts = self["outcome"].value_counts().to_dict() if "outcome" in self else {}
                head = ", ".join(f"{k} {v}" for k, v in counts.items())
                more = f" (first 200 of {n} shown)" if n > 200 else ""
                return (f'<div class="flownb-retest"><b>retest</b>: {n} record(s): {head}{more}</div>'
                        + self.styled().to_html())

        globals()["RetestFrame"] = RetestFrame
    return globals()["RetestFrame"](frame)


def retest(flow: Flow, dead_df: Any, from_step: str | None = None, until: str | None = None, *,
           live: bool = False) -> pd.DataFrame:
    """Run the *current* ``flow`` in memory (virtual clock: retries do not wait) on the records of
    ``dead_df`` (rows of :func:`dead_letters`, edited or not), each starting at the step where it
    died (``from_step``: at this step instead; a record that died at the trigger starts at the first
    action). ``until``: stop after this step. Dry like ``flow.test``: an action with outside effects
    (``http.request``, ``sql.upsert``, ``csv.write`` …) is not run, what it would send is in
    ``frame.attrs["effects"]`` and the record goes on; ``live=True`` runs them for real. Returns
    one row per record, same index: ``_id, _step,
    from_step, old_error_type, old_error, outcome`` (delivered / filtered / dead), ``new_error_type,
    new_error, output`` (the last step's bodies) and ``changed``."""
    import pandas as pd


    rows = _frame_rows(dead_df)
    index = list(dead_df.index) if hasattr(dead_df, "index") else list(range(len(rows)))
    originals = getattr(dead_df, "attrs", {}).get(_ORIGINALS) or {}
    names = [s.name for s in flow.actions]
    if not names:
        raise SpecError(f"flow '{flow.name}' has no action steps to retest")
    if until is not None:
        flow.step(until)  # SpecError with a suggestion
        top = [s.name for s in flow.steps]
        if until not in top:
            what = "the trigger" if until == flow.trigger.name else "a step inside a route branch"
            raise SpecError(f"until='{until}' is {what}; pass a step of the flow's main line: {', '.join(top)}")
        flow = flow.model_copy(update={"steps": flow.steps[:top.index(until) + 1]})
        names = [s.name for s in flow.actions]
    if from_step is not None:
        flow.step(from_step)
        if from_step not in names:
            raise SpecError(f"from_step='{from_step}' is not an action step of the flow as retested; "
                            f"steps: {', '.join(names)}")

    starts: list[str | None] = []
    msgs: list[Message | None] = []
    refused: dict[int, tuple[str, str]] = {}
    for i, r in enumerate(rows):
        if from_step is not None:
            start = from_step
        elif r["_step"] in names:
            start = r["_step"]
        elif r["_step"] == flow.trigger.name:  # a record over max_message_bytes: from the first action
            start = names[0]
        else:
            refused[i] = ("SpecError", (f"step '{r['_step']}' is not in the flow as retested "
                                        f"(steps: {', '.join(names)}); pass from_step="))
            starts.append(None)
            msgs.append(None)
            continue
        listed = originals.get(r["_id"])
        if listed is not None:
            body, _ = edited_body(listed[1].body, None, r)
            headers = dict(listed[1].headers)
        else:  # a frame that lost its attrs: the row's columns by the records convention
            from .records import to_records
            body = to_records([{k: v for k, v in r.items() if k not in META_COLUMNS}])[0]
            headers = {}
        m = Message(body=body, headers=headers, flow=flow.name, step=start, trace=new_id())
        starts.append(start)
        msgs.append(m)

    finals: dict[str, list] = {}
    from .runtime.local.flow_test import in_memory
    rt, effects = in_memory(flow, live=live)  # as flow.test: quiet, dry unless live
    try:
        rt.add_final_listener(lambda trace, bodies: finals.__setitem__(trace, bodies))
        for step_name in names:
            chosen = [(i, m) for i, m in enumerate(msgs) if m is not None and starts[i] == step_name]
            ok = []
            for i, m in chosen:
                try:
                    m.to_json()
                    ok.append(m)
                except FlownbError as exc:
                    refused[i] = (type(exc).__name__, str(exc))
            if ok:
                rt.inject(step_name, ok)
        rt.drain()
        dead: dict[str, Any] = {}
        for d in rt.dead_letters():
            dead.setdefault(d.message.trace, d)
        delivered = dict(rt.delivered or {})
    finally:
        rt.close()

    out = []
    for i, r in enumerate(rows):
        old = (r.get("_error_type"), r.get("_error"))
        rec = {"_id": r["_id"], "_step": r["_step"], "from_step": starts[i],
               "old_error_type": old[0], "old_error": old[1]}
        if i in refused:
            rec.update(outcome="dead", new_error_type=refused[i][0], new_error=refused[i][1], output=[])
        else:
            sent = msgs[i]
            assert sent is not None  # None only for a refused row
            letter = dead.get(sent.trace)
            bodies = finals.get(sent.trace, [])
            if letter is not None:
                rec.update(outcome="dead", new_error_type=letter.error.type,
                           new_error=f"{letter.step}: {letter.error.message}", output=bodies)
            else:
                rec.update(outcome="delivered" if delivered.get(sent.trace) else "filtered", new_error_type=None,
                           new_error=None, output=bodies)
        rec["changed"] = rec["outcome"] != "dead" or rec["new_error_type"] != old[0]
        out.append(rec)
    columns = ["_id", "_step", "from_step", "old_error_type", "old_error", "outcome", "new_error_type",
               "new_error", "output", "changed"]
    frame = _retest_frame(pd.DataFrame(out, index=index, columns=columns))
    frame.attrs["effects"] = effects
    frame.attrs["live"] = live
    return frame


# -- replay ----------------------------------------------------------------------------------------

def read_edits(path: str | Path) -> list[dict]:
    """The rows of a JSONL file of edits (``flownb dlq replay --edit FILE``): one JSON object per line
    with ``_id`` (and ``_step``, needed when ids repeat across steps) and the body's fields, nested
    (``{"customer": {"email": …}}``) or dotted (``{"customer.email": …}``: a line of
    ``df.to_json(orient="records", lines=True)``). A bad line is an error naming it; nothing is
    replayed then."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the edits file '{path}': {exc}; pass a UTF-8 JSONL file") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise SpecError(f"{path}:{n}: not JSON ({exc}); write one JSON object per line") from None
        if not isinstance(obj, dict) or _missing(obj.get("_id")):
            raise SpecError(f"{path}:{n}: each line is a JSON object with the dead letter's \"_id\" "
                            f"(see 'flownb dlq list') and its body's fields")
        row = {k: v for k, v in obj.items() if k in ("_id", "_step")}
        body = {k: v for k, v in obj.items() if not k.startswith("_")}
        row.update({col: value for col, (_p, value) in flatten(body).items()})
        row["_id"] = str(row["_id"])
        rows.append(row)
    if not rows:
        raise SpecError(f"the edits file '{path}' has no lines; nothing to replay")
    return rows


def replay_rows(flow: Flow, rows: Sequence[Mapping[str, Any]], *, state_dir: str | Path | None = None,
                broker: str | None = None, listed: Mapping[str, tuple] | None = None,
                step: str | None = None) -> list[dict]:
    """Replay the dead letters named by ``rows`` (dicts with ``_id``, optionally ``_step``, and body
    fields that edit the stored body: see the module docstring) to their step, attempt 1, with the
    provenance headers. All rows are checked first (unknown id or step: nothing is replayed).
    Returns per replayed dead letter ``{"_id", "_step", "edited", "message_id"}``."""
    if state_dir is not None and broker is not None:
        raise SpecError("pass state_dir (the embedded runtime) or broker (RabbitMQ), not both")
    actions = {s.name for s in flow.actions}
    wanted: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        rid, rstep = str(r["_id"]), r.get("_step")
        if step is not None and rstep is not None and rstep != step:
            continue
        if rstep is not None and not _missing(rstep):
            if rstep == flow.trigger.name:
                raise SpecError(f"dead letter {rid} is the trigger's ('{rstep}'): a record over "
                                f"max_message_bytes, stored cut short; it cannot be replayed — read it "
                                f"again from the source ('flownb state rewind')")
            if rstep not in actions:
                raise SpecError(f"dead letter {rid}: the flow has no action step '{rstep}' any more"
                                f"{did_you_mean(rstep, actions)} steps: {', '.join(sorted(actions))}")
        wanted[rid] = r
    if not wanted:
        return []  # nothing selected: no store is opened
    stamp = {REPLAY_SPEC: spec_hash(flow),
             REPLAYED_AT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def rebuild(dead_step: str, dead_id: str, stored: Message) -> tuple[bytes, bool]:
        r = wanted[dead_id]
        shown = (listed or {}).get(dead_id)
        body, changed = edited_body(stored.body, shown[1].body if shown else _masked(flow, stored.body), r)
        m = Message.from_dict(stored.to_dict())
        m.body = body
        m.attempt = 1
        m.spec = flow.spec_hash(short=True)  # the short form of the header's hash: the spec it was replayed under
        m.headers = {**m.headers, **stamp, REPLAYED_FROM: f"{dead_step}/{dead_id}"}
        if changed:
            m.headers[REPLAY_EDITED] = "true"
        else:
            m.headers.pop(REPLAY_EDITED, None)
        return m.to_json(), changed

    if broker is not None:
        from .runtime.amqp.replay import replay_edited
        return replay_edited(flow, broker, wanted, rebuild, step=step)
    from .runtime.local.replay import replay_edited as local_replay
    return local_replay(flow, Path(state_dir if state_dir is not None else ".flownb"), wanted, rebuild,
                        step=step)


def _masked(flow: Flow, body: dict) -> dict:
    """A body as ``dead_letters`` listed it (secrets masked), to compare edits with."""
    from .secrets import Redactor, active_redactor
    return (Redactor.from_flow(flow) | active_redactor()).redact_obj(body)


def replay(dead_df: Any, spec: Flow | str | Path, state_dir: str | Path | None = None,
           broker: str | None = None) -> pd.DataFrame:
    """Replay the rows of ``dead_df`` (rows of :func:`dead_letters`: select with pandas, edit cells)
    to the steps they died at, with attempt 1, on the runtime they are stored in (``state_dir`` or
    ``broker``). Each replayed message carries ``x-flownb-replayed-from`` (``<step>/<id>``),
    ``x-flownb-replay-spec`` (:func:`spec_hash` of ``spec``) and ``x-flownb-replayed-at`` headers
    (and ``x-flownb-replay-edited: true`` when its body was edited). A dead letter is removed only
    once its message is durably queued: on the embedded runtime in the same SQLite transaction, on
    RabbitMQ after the broker confirmed the publish (a crash in between leaves a duplicate, never a
    loss). Returns one row per replayed dead letter: ``_id, _step, edited, message_id``."""
    import pandas as pd
    flow = _as_flow(spec)
    flow.validate_components()
    rows = _frame_rows(dead_df)
    listed = getattr(dead_df, "attrs", {}).get(_ORIGINALS)
    done = replay_rows(flow, rows, state_dir=state_dir, broker=broker, listed=listed)
    return pd.DataFrame(done, columns=["_id", "_step", "edited", "message_id"])

