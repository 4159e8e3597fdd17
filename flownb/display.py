"""Rich display of flows, messages, test results and dead letters in Jupyter.

Contract used by ``flownb export``: a displayed Flow's bundle carries
``application/vnd.flownb.flow+json`` = ``flow.spec()`` (the dict that is flow.yaml), besides its
picture (``image/svg+xml``, drawn here: no front-end build) and ``text/plain``.

Tables are plain HTML; test results use CSS-only tabs (radio buttons), so they work in JupyterLab,
in nbviewer and in an exported HTML file without any JavaScript.
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from ._duration import format_duration

__all__ = ["FLOW_MIME", "flow_mimebundle", "flow_svg", "flow_text", "records_html", "frame_html",
           "messages_html", "dead_letters_html", "test_result_html", "test_result_mimebundle", "tabs_html",
           "retry_label", "timings_html", "Table"]

FLOW_MIME = "application/vnd.flownb.flow+json"

_BOX_W, _BOX_H, _GAP, _PAD, _PER_ROW = 190, 74, 44, 16, 4
_TRIGGER_FILL, _STEP_FILL, _STROKE = "#e8f1fb", "#f6f6f6", "#5b6b7b"
_ERROR_STROKE = "#c0392b"
_ROUTE_FILL, _BRANCH_STROKE = "#fff6e0", "#b07d12"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def retry_label(step) -> str:
    """``retry 5× 1s…5m`` for a step's effective retry policy."""
    p = step.retry_policy
    return f"retry {p.max_attempts}× {format_duration(p.initial)}…{format_duration(p.max)}"


def _step_text(s) -> str:
    if getattr(s, "route", None) is None:
        return f"{s.name} ({s.component})"
    branches = [f"{b}: " + (" → ".join(_step_text(c) for c in chain) or "(no steps)")
                for b, chain in s.route.chains()]
    return f"{s.name} (route, {s.route.mode}: " + " | ".join(branches) + ")"


def flow_text(flow) -> str:
    steps = " → ".join(_step_text(s) for s in [flow.trigger, *flow.steps])
    text = f"Flow '{flow.name}': {steps}"
    if getattr(flow, "on_error", None) is not None:
        text += "\non_error: " + " → ".join(f"{s.name} ({s.component})" for s in flow.error_steps)
    return text


def _clip(text: str, n: int = 26) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _box(x: int, y: int, step, is_trigger: bool, note: str | None = None) -> str:
    route = getattr(step, "route", None)
    fill = _TRIGGER_FILL if is_trigger else (_ROUTE_FILL if route is not None else _STEP_FILL)
    kind = note or ("trigger" if is_trigger else f"×{step.replicas} replica{'s' if step.replicas != 1 else ''}")
    what = step.component if route is None else \
        f"route ({route.mode}): {len(route.branches)} branch{'es' if len(route.branches) != 1 else ''}" \
        + (" + default" if route.default is not None else "")
    lines = [
        f'<rect x="{x}" y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="8" fill="{fill}" '
        f'stroke="{_STROKE}" stroke-width="1.2"/>',
        f'<text x="{x + 10}" y="{y + 20}" font-weight="bold">{_e(_clip(step.name))}</text>',
        f'<text x="{x + 10}" y="{y + 38}" fill="#1f5fa8">{_e(_clip(what))}</text>',
        f'<text x="{x + 10}" y="{y + 55}" fill="#555" font-size="11">{_e(kind)}</text>',
    ]
    if not is_trigger and note is None:
        lines.append(f'<text x="{x + 10}" y="{y + 68}" fill="#555" font-size="11">{_e(retry_label(step))}</text>')
    return "\n".join(lines)


def _position(i: int) -> tuple[int, int]:
    row, col = divmod(i, _PER_ROW)
    return _PAD + col * (_BOX_W + _GAP), _PAD + 24 + row * (_BOX_H + _GAP)


def _arrow(i: int) -> str:
    (x1, y1), (x2, y2) = _position(i), _position(i + 1)
    if y1 == y2:  # same row: left box's right edge → right box's left edge
        a, b = (x1 + _BOX_W, y1 + _BOX_H // 2), (x2, y2 + _BOX_H // 2)
        path = f"M{a[0]},{a[1]} L{b[0] - 2},{b[1]}"
    else:  # next row: down from the last box, back to the first column
        a, b = (x1 + _BOX_W // 2, y1 + _BOX_H), (x2 + _BOX_W // 2, y2)
        mid = y1 + _BOX_H + _GAP // 2
        path = f"M{a[0]},{a[1]} L{a[0]},{mid} L{b[0]},{mid} L{b[0]},{b[1] - 2}"
    return f'<path d="{path}" fill="none" stroke="{_STROKE}" stroke-width="1.5" marker-end="url(#flownb-arrow)"/>'


def _branch_rows(flow) -> list[tuple[str, str, list]]:
    """(route step, label, steps) per branch of every route step, in flow order."""
    rows = []
    links = flow.links()
    for s in flow.steps:
        if getattr(s, "route", None) is None:
            continue
        conds = {b.name: b.when for b in s.route.branches}
        for b, chain in s.route.chains():
            label = f"{b}: {conds[b]}" if b in conds else f"{b}: no branch matched"
            rows.append((s.name, label, chain))
        if s.route.default is None:
            rows.append((s.name, "no branch matched: filtered", []))
        then = links[s.name]
        rows.append((s.name, f"→ every branch rejoins at {then}" if then else "→ every branch ends the flow", []))
    return rows


def _branches_svg(flow, top: int) -> tuple[list[str], int, int]:
    """The branches of the flow's route steps under its main line: per branch a label (its name and
    condition) and its steps, one row each. Returns (SVG parts, height used, width needed)."""
    parts: list[str] = []
    y = top
    width = 0
    current = None
    for route, label, chain in _branch_rows(flow):
        if route != current:
            current = route
            parts.append(f'<text x="{_PAD}" y="{y + 4}" fill="{_BRANCH_STROKE}" font-size="12" '
                         f'font-weight="bold">{_e(f"route {route} — branches")}</text>')
            y += 12
        if not chain:  # a note: filtered, rejoin, or a branch without steps
            parts.append(f'<text x="{_PAD + 10}" y="{y + 12}" fill="#555" font-size="12">{_e(_clip(label, 90))}'
                         f'{"" if label.startswith(("→", "no branch")) else " (no steps)"}</text>')
            y += 22
            continue
        parts.append(f'<text x="{_PAD + 10}" y="{y + _BOX_H // 2 + 4}" fill="{_BRANCH_STROKE}" '
                     f'font-size="12">{_e(_clip(label, 30))}</text>')
        x0 = _PAD + _BOX_W + _GAP // 2
        for i, st in enumerate(chain):
            x = x0 + i * (_BOX_W + _GAP)
            box = _box(x, y + 6, st, False)
            parts.append(box.replace(f'stroke="{_STROKE}"', f'stroke="{_BRANCH_STROKE}"', 1))
            left = x - _GAP if i else x0 - _GAP // 2 + 4
            parts.append(f'<path d="M{left},{y + 6 + _BOX_H // 2} L{x - 2},{y + 6 + _BOX_H // 2}" fill="none" '
                         f'stroke="{_BRANCH_STROKE}" stroke-width="1.5" marker-end="url(#flownb-arrow)"/>')
            width = max(width, x + _BOX_W + _PAD)
        y += _BOX_H + 12
    return parts, y - top, width


def flow_svg(flow) -> str:
    """The flow as an SVG diagram: trigger → steps, each box with component, replicas and retry;
    the branches of route steps (name, condition, steps) in rows under the main line."""
    steps = [flow.trigger, *flow.steps]  # a route's branch steps are drawn under the main line
    n = len(steps)
    cols = min(n, _PER_ROW)
    rows = (n + _PER_ROW - 1) // _PER_ROW
    width = _PAD * 2 + cols * _BOX_W + (cols - 1) * _GAP
    height = _PAD * 2 + 24 + rows * _BOX_H + (rows - 1) * _GAP
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13" class="flownb-flow">',
        '<defs><marker id="flownb-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{_STROKE}"/></marker></defs>',
        f'<text x="{_PAD}" y="{_PAD + 8}" font-weight="bold" font-size="14">flow {_e(flow.name)}</text>',
    ]
    for i, s in enumerate(steps):
        x, y = _position(i)
        parts.append(_box(x, y, s, i == 0))
        if i + 1 < n:
            parts.append(_arrow(i))
    if any(getattr(s, "route", None) is not None for s in flow.steps):
        lanes, used, wide = _branches_svg(flow, height - _PAD + _GAP // 2)
        parts.extend(lanes)
        height += used + _GAP // 2
        width = max(width, wide)
        parts[0] = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                    f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13" class="flownb-flow">')
    errors = flow.error_steps if getattr(flow, "on_error", None) is not None else []
    if errors:  # the error flow: its own row(s) under the flow, dashed, fed by every step's failures
        from ._duration import format_duration
        top = height - _PAD + _GAP // 2
        label = (f"on_error — failures of every step, at most one delivery per "
                 f"{format_duration(float(flow.on_error.every))}, {flow.on_error.batch} listed")
        parts.append(f'<text x="{_PAD}" y="{top + 4}" fill="{_ERROR_STROKE}" font-size="12">{_e(label)}</text>')
        for i, s in enumerate(errors):
            x, y = _position(i)
            y += top - _PAD
            box = _box(x, y, s, False, note="on_error action (no retries)")
            parts.append(box.replace(f'stroke="{_STROKE}"', f'stroke="{_ERROR_STROKE}" stroke-dasharray="5,3"'))
            if i + 1 < len(errors):
                (ax, ay), (bx, by) = _position(i), _position(i + 1)
                if ay == by:
                    parts.append(f'<path d="M{ax + _BOX_W},{y + _BOX_H // 2} L{bx - 2},{y + _BOX_H // 2}" '
                                 f'fill="none" stroke="{_ERROR_STROKE}" stroke-width="1.5" '
                                 f'marker-end="url(#flownb-arrow)"/>')
        erows = (len(errors) + _PER_ROW - 1) // _PER_ROW
        extra = _GAP // 2 + 8 + erows * _BOX_H + (erows - 1) * _GAP + _PAD
        height += extra
        width = max(width, _PAD * 2 + min(len(errors), _PER_ROW) * (_BOX_W + _GAP) - _GAP, 560)
        parts[0] = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                    f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13" class="flownb-flow">')
    parts.append("</svg>")
    return "\n".join(parts)


def flow_mimebundle(flow) -> dict:
    return {FLOW_MIME: flow.spec(), "image/svg+xml": flow_svg(flow), "text/plain": flow_text(flow)}


# -- tables ---------------------------------------------------------------------------------------

_TABLE_CSS = ("border-collapse:collapse;font-size:12px;font-family:var(--jp-code-font-family,monospace);"
              "margin:4px 0")
# words never break inside: a header stays on one line, a long value wraps at its spaces (a long
# token without any, e.g. an id, breaks only when it alone is wider than the cell)
_CELL = "border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top;max-width:40em;" \
        "word-break:normal;overflow-wrap:break-word"


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, default=str)
    elif value is None:
        text = ""
    else:
        text = str(value)
    if len(text) > 300:
        text = text[:299] + "…"
    return _e(text)


def records_html(records: list[dict], *, columns: list[str] | None = None, limit: int = 50,
                 error_column: str = "_error", css_class: str = "flownb-table") -> str:
    """An HTML table of dicts; rows with a non-empty ``error_column`` are tinted red."""
    if not records:
        return '<div class="flownb-empty" style="color:#777;font-style:italic">(no rows)</div>'
    if columns is None:
        columns = []
        for r in records[:limit]:
            columns.extend(k for k in r if k not in columns)
    head = "".join(f'<th style="{_CELL};background:#eef;white-space:nowrap">{_e(c)}</th>' for c in columns)
    body = []
    for r in records[:limit]:
        bad = bool(r.get(error_column))
        style = ' style="background:#fde8e8"' if bad else ""
        cells = "".join(f'<td style="{_CELL}">{_cell(r.get(c))}</td>' for c in columns)
        body.append(f"<tr{style}>{cells}</tr>")
    more = ""
    if len(records) > limit:
        more = f'<div style="color:#777">… {len(records) - limit} more rows</div>'
    # a table wider than the output area scrolls sideways instead of squeezing its columns
    return (f'<div class="flownb-scroll" style="overflow-x:auto;max-width:100%">'
            f'<table class="{css_class}" style="{_TABLE_CSS}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>{more}')


def frame_html(df, *, limit: int = 50, css_class: str = "flownb-table") -> str:
    """An HTML table of a DataFrame (NaN shown empty; nested values as JSON)."""
    records = [{k: (None if _isnan(v) else v) for k, v in row.items()}
               for row in df.head(limit).to_dict(orient="records")]
    table = records_html(records, columns=[str(c) for c in df.columns], limit=limit, css_class=css_class)
    if len(df) > limit:
        table += f'<div style="color:#777">… {len(df) - limit} more rows</div>'
    return table


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and v != v


def messages_html(messages: Iterable, *, limit: int = 50) -> str:
    """A table of messages: id, step, attempt, then the body's fields."""
    rows = []
    for m in messages:
        rows.append({"id": m.id[:8], "step": m.step, "attempt": m.attempt, **m.body})
    return records_html(rows, limit=limit)


def dead_letters_html(dead_letters: Iterable, *, limit: int = 50) -> str:
    """A table of dead letters: step, error type and message, attempt, body."""
    rows = [{"id": d.id, "step": d.step, "error": f"{d.error.type}: {d.error.message}",
             "attempt": d.error.attempt, "retryable": d.error.retryable, "body": d.message.body}
            for d in dead_letters]
    if not rows:
        return '<div class="flownb-empty" style="color:#2a7a2a">no dead letters</div>'
    return records_html(rows, limit=limit, error_column="error", css_class="flownb-table flownb-dead-letters")


class Table:
    """Wrap messages / dead letters / dicts so a notebook shows them as a table: ``Table(msgs)``."""

    def __init__(self, items: Iterable, limit: int = 50):
        self.items = list(items)
        self.limit = limit

    def _repr_html_(self) -> str:
        if self.items and hasattr(self.items[0], "error") and hasattr(self.items[0], "message"):
            return dead_letters_html(self.items, limit=self.limit)
        if self.items and hasattr(self.items[0], "body"):
            return messages_html(self.items, limit=self.limit)
        return records_html([dict(i) for i in self.items], limit=self.limit)


# -- test results ---------------------------------------------------------------------------------

_TABS_CSS = """
.{id} > input {{ display:none }}
.{id} > label {{ display:inline-block; padding:3px 10px; margin-right:2px; border:1px solid #bbb;
  border-bottom:none; border-radius:4px 4px 0 0; background:#f2f2f2; cursor:pointer; font-size:12px }}
.{id} > .flownb-tab-panel {{ display:none; border-top:1px solid #bbb; padding:4px 0 }}
{checked}
"""


def tabs_html(tabs: list[tuple[str, str]]) -> str:
    """CSS-only tabs (no JavaScript): ``[(title, html), …]``. Without CSS every panel shows in turn."""
    uid = "flownb-tabs-" + uuid.uuid4().hex[:8]
    checked = "\n".join(
        f".{uid} > #{uid}-{i}:checked ~ #{uid}-p{i} {{ display:block }}\n"
        f".{uid} > #{uid}-{i}:checked + label {{ background:#fff; font-weight:bold }}"
        for i in range(len(tabs)))
    parts = [f"<style>{_TABS_CSS.format(id=uid, checked=checked)}</style>", f'<div class="{uid} flownb-tabs">']
    for i, (title, _) in enumerate(tabs):
        on = " checked" if i == 0 else ""
        parts.append(f'<input type="radio" name="{uid}" id="{uid}-{i}"{on}>'
                     f'<label for="{uid}-{i}">{_e(title)}</label>')
    for i, (title, body) in enumerate(tabs):
        parts.append(f'<div class="flownb-tab-panel" id="{uid}-p{i}" data-title="{_e(title)}">{body}</div>')
    parts.append("</div>")
    return "".join(parts)


def _fmt_seconds(v: Any) -> str:
    if isinstance(v, (int, float)):
        return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"
    return str(v)


def timings_html(result) -> str:
    timings = getattr(result, "timings", None) or {}
    counts = getattr(result, "counts", None) or {}
    names = list(dict.fromkeys([*counts, *timings]))
    rows = []
    for name in names:
        t = timings.get(name) if isinstance(timings, dict) else None
        c = counts.get(name) if isinstance(counts, dict) else None
        row: dict[str, Any] = {"step": name}
        if isinstance(c, dict):  # {"in", "out", "retried", "dead", "seconds", …}: one time column, formatted
            row.update({k: v for k, v in c.items() if k != "seconds"})
            if t is None:
                t = c.get("seconds")
        elif c is not None:
            row["count"] = c
        row["time"] = _fmt_seconds(t) if t is not None else ""
        rows.append(row)
    return records_html(rows) if rows else '<div style="color:#777">(no timings)</div>'


_F = TypeVar("_F", bound=Callable[..., Any])


def _not_a_test(fn: _F) -> _F:
    """``fn`` marked as no pytest test despite its name (``__test__ = False``)."""
    cast(Any, fn).__test__ = False
    return fn


@_not_a_test
def test_result_tabs(result) -> list[tuple[str, str]]:
    """(title, html) per step output, then dead letters and timings."""
    tabs = []
    for name, rows in (getattr(result, "outputs", None) or {}).items():
        tabs.append((f"{name} ({len(rows)})", records_html(list(rows))))
    for name, rows in (getattr(result, "routes", None) or {}).items():  # the branch each row took
        tabs.append((f"{name}: branches ({len(rows)})", records_html(list(rows), columns=_branch_first(rows))))
    dead = list(getattr(result, "dead_letters", None) or [])
    tabs.append((f"dead letters ({len(dead)})", dead_letters_html(dead)))
    tabs.extend(effects_tabs(result))
    tabs.append(("timings", timings_html(result)))
    return tabs


def _branch_first(rows: list[dict], limit: int = 50) -> list[str]:
    """The columns of a route step's rows, ``_branch`` first."""
    columns = ["_branch"]
    for r in rows[:limit]:
        columns.extend(k for k in r if k not in columns)
    return columns


def effects_tabs(result) -> list[tuple[str, str]]:
    """One tab per action run dry: what it would have sent (the request, the row, the line)."""
    tabs = []
    for name, effects in (getattr(result, "effects", None) or {}).items():
        note = (f'<div style="color:#8a5a00">dry run: nothing was sent by step {_e(name)}; '
                f'<code>flow.test(sample, live=True)</code> sends it</div>')
        tabs.append((f"{name}: would send ({len(effects)})", note + records_html(list(effects))))
    return tabs


def _summary(result) -> str:
    outputs = getattr(result, "outputs", None) or {}
    dead = list(getattr(result, "dead_letters", None) or [])
    parts = [f"{name}: {len(rows)}" for name, rows in outputs.items()]
    text = f"test run — {', '.join(parts) or 'no outputs'}; {len(dead)} dead letter{'s' if len(dead) != 1 else ''}"
    dry = getattr(result, "effects", None) or {}
    if dry:
        text += f"; dry run: {', '.join(dry)} sent nothing (live=True sends)"
    return text


@_not_a_test
def test_result_html(result) -> str:
    colour = "#b00020" if getattr(result, "dead_letters", None) else "#2a7a2a"
    return (f'<div class="flownb-test-result"><div style="color:{colour};font-weight:bold">'
            f'{_e(_summary(result))}</div>{tabs_html(test_result_tabs(result))}</div>')


@_not_a_test
def test_result_mimebundle(result) -> dict:
    """Display bundle of ``flownb.runtime.local.TestResult``: tabs per step output, dead letters,
    timings (HTML), and a one-line text summary."""
    return {"text/html": test_result_html(result), "text/plain": _summary(result)}

