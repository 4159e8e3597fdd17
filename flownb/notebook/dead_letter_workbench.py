"""DeadLetterWorkbench: a flow's dead letters grouped by error, rows to select, a cell to edit,
"retest with current rules" and "replay selected" — the functions of :mod:`flownb.workbench` behind
buttons, on either runtime (docs/debugging.md).

``DeadLetterWorkbench(spec, state_dir=… | broker=…)``; ``Monitor.workbench()`` opens one for the
monitored flow. ``wb.rules`` is the flow that "retest" runs (the notebook's fixed flow: assign it,
or pass ``rules=``); ``wb.frame`` is the DataFrame, edits included. Every error — bad input, a
broker that does not answer, a dead letter replayed meanwhile — is a message in the widget, never a
traceback, a spec that does not load or a state directory without dead letters included (the
message is in the status area).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, TypedDict

import ipywidgets as w

from ..errors import FlownbError
from ..flow import Flow, load
from ..workbench import META_COLUMNS, dead_letters, replay, retest
from ._common import error_html, log, ok_html

__all__ = ["DeadLetterWorkbench"]

_ALL = "(all errors)"
_SHOWN = ["_id", "_step", "_error_type", "_attempt"]


def _label(row: Any, body: list[str]) -> str:
    fields = ", ".join(f"{c}={row[c]!r}" for c in body[:4] if c in row and row[c] is not None
                       and row[c] == row[c])
    return f"{row['_step']}/{row['_id']}: {fields}"[:120]


class _Where(TypedDict):
    """Where the dead letters are stored: the embedded runtime's state dir or a broker."""

    state_dir: str | Path | None
    broker: str | None


class DeadLetterWorkbench:
    """The dead letters of one flow, to retest and replay from a notebook."""

    def __init__(self, spec: Flow | str | Path, *, state_dir: str | Path | None = None,
                 broker: str | None = None, step: str | None = None, rules: Flow | None = None):
        #: why the workbench cannot show dead letters (a spec that does not load, a state directory or
        #: broker without them): shown in its status area instead of raised in the notebook
        self.problem: str | None = None
        flow: Flow | None = None
        try:
            flow = spec if isinstance(spec, Flow) else load(spec if isinstance(spec, Path) else str(spec))
        except (FlownbError, OSError) as exc:
            self.problem = f"cannot load the flow spec '{spec}': {exc}"
        self._flow = flow
        self.rules: Flow | None = rules or flow
        self.where: _Where = {"state_dir": state_dir, "broker": broker}
        self.step = step
        self.frame: Any = None  # the dead letters' DataFrame, read by reload() below (pandas is untyped)
        self.last_retest: Any = None  # the DataFrame of the last retest
        self._build(flow.name if flow is not None else str(spec))
        if flow is not None:
            try:
                self.reload()
            except Exception as exc:  # a missing state dir, a broker that does not answer: a message
                log.debug("workbench could not read the dead letters", exc_info=True)
                self.problem = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
        if self.problem is not None:
            self.status.value = error_html(self.problem)
            for b in (self.set_button, self.retest_button, self.replay_button):
                b.disabled = True  # nothing to act on; "reload" stays for a flow that has run since
            self.reload_button.disabled = flow is None

    @property
    def flow(self) -> Flow:
        """The flow whose dead letters are shown."""
        if self._flow is None:
            raise FlownbError(self.problem or "the workbench has no flow")
        return self._flow

    # -- widgets ----------------------------------------------------------------------------------
    def _build(self, name: str) -> None:
        place = self.where["broker"] or f"state dir {self.where['state_dir'] or '.flownb'}"
        self.title = w.HTML(f"<b>dead letters of {html.escape(name)}</b> "
                            f"<code>{html.escape(_safe(str(place)))}</code>")
        self.groups = w.Dropdown(description="error", options=[_ALL])
        self.groups.observe(lambda _c: self._show_group(), names="value")
        self.rows = w.SelectMultiple(description="rows", rows=8, layout=w.Layout(width="95%"))
        self.table = w.HTML()
        self.table.add_class("flownb-dead-letter-table")
        self.field = w.Combobox(description="field", placeholder="amount or customer.email",
                                ensure_option=False)
        self.value = w.Text(description="value", placeholder="JSON or text; empty removes the field",
                            layout=w.Layout(width="30em"))  # the placeholder is read whole
        self.field.add_class("flownb-edit-field")
        self.value.add_class("flownb-edit-value")
        self.rows.add_class("flownb-rows")
        self.groups.add_class("flownb-groups")
        self.set_button = w.Button(description="set in selected rows", icon="pencil",
                                   layout=w.Layout(width="auto"))
        self.set_button.add_class("flownb-set")
        self.set_button.on_click(lambda _b: self._guard(self.set_cell))
        self.retest_button = w.Button(description="retest with current rules", icon="flask",
                                      button_style="info", layout=w.Layout(width="auto"))
        self.retest_button.add_class("flownb-retest-button")
        self.retest_button.on_click(lambda _b: self._guard(self.retest))
        self.replay_button = w.Button(description="replay selected", icon="redo", button_style="warning",
                                      layout=w.Layout(width="auto"))
        self.replay_button.add_class("flownb-replay-selected")
        self.replay_button.on_click(lambda _b: self._guard(self.replay))
        self.reload_button = w.Button(description="reload", icon="refresh")
        self.reload_button.on_click(lambda _b: self._guard(self._reload_clicked))
        self.result = w.HTML()
        self.result.add_class("flownb-retest-result")
        self.status = w.HTML()
        self.status.add_class("flownb-status")
        self.widget = w.VBox([self.title, w.HBox([self.groups, self.reload_button]), self.table, self.rows,
                              w.HBox([self.field, self.value, self.set_button]),
                              w.HBox([self.retest_button, self.replay_button]), self.result, self.status])
        self.widget.add_class("flownb-dead-letter-workbench")

    def _ipython_display_(self) -> None:
        from IPython.display import display
        display(self.widget)

    def _guard(self, fn) -> None:
        try:
            fn()
        except Exception as exc:  # a click never raises: the message is shown in the widget
            log.debug("workbench action failed", exc_info=True)
            self.status.value = error_html(f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc))

    # -- data -------------------------------------------------------------------------------------
    @property
    def body_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c not in META_COLUMNS] if self.frame is not None else []

    def _reload_clicked(self) -> None:
        self.reload()
        if self.problem is not None:  # the flow has dead letters to show now
            self.problem = None
            for b in (self.set_button, self.retest_button, self.replay_button):
                b.disabled = False

    def reload(self) -> None:
        """Read the dead letters again (edits not replayed are dropped)."""
        self.frame = dead_letters(self.flow, step=self.step, **self.where)
        counts = self.frame.groupby("_error_type").size().to_dict() if len(self.frame) else {}
        self.groups.options = [f"{_ALL} ({len(self.frame)})"] + [f"{k} ({v})" for k, v in counts.items()]
        self.groups.value = self.groups.options[0]
        self.field.options = self.body_columns
        self._show_group()
        self.status.value = ok_html(f"{len(self.frame)} dead letter(s)")

    def group(self):
        """The rows of the chosen error group."""
        label = self.groups.value or _ALL
        if label.startswith(_ALL):
            return self.frame
        kind = label.rsplit(" (", 1)[0]
        return self.frame[self.frame["_error_type"] == kind]

    def _show_group(self) -> None:
        if self.frame is None:
            return
        g = self.group()
        body = self.body_columns
        self.rows.options = [(_label(r, body), i) for i, r in g.iterrows()]
        self.rows.rows = max(2, min(len(self.rows.options), 8))  # as tall as its rows: no empty box below
        self.rows.value = tuple(i for _l, i in self.rows.options)  # the whole group, until narrowed
        shown = g[[*_SHOWN, "_error", *body]].head(50)
        self.table.value = shown.to_html(max_cols=20, na_rep="", escape=True, classes="flownb-table")

    def selected(self):
        """The selected rows (edits included)."""
        if not self.rows.value:
            raise ValueError("no rows selected: pick rows in the list (shift/ctrl-click) first")
        return self.frame.loc[list(self.rows.value)]

    def set_cell(self) -> None:
        """Set ``field`` to ``value`` in the selected rows (JSON when it parses, else the text; an
        empty value removes the field)."""
        from ..cursor import parse_value
        name = (self.field.value or "").strip()
        if not name:
            raise ValueError("name the field to set (a column such as amount or customer.email)")
        if name in META_COLUMNS or name.startswith("_"):
            raise ValueError(f"'{name}' says where the dead letter came from and cannot be edited; "
                             f"edit a field of the body")
        rows = self.selected()
        raw = self.value.value
        value = None if raw.strip() == "" else parse_value(raw)
        if name not in self.frame.columns:
            self.frame[name] = None
            self.field.options = self.body_columns
        self.frame[name] = self.frame[name].astype(object)
        for i in rows.index:
            self.frame.at[i, name] = value
        self._show_group()
        self.rows.value = tuple(rows.index)
        what = "removed" if value is None else f"set to {raw!r}"
        self.status.value = ok_html(f"'{name}' {what} in {len(rows)} row(s); retest or replay them")

    def retest(self) -> None:
        """Run ``rules`` on the selected rows in memory; the coloured before/after below."""
        rows = self.selected()
        self.last_retest = retest(self.rules or self.flow, rows)
        self.result.value = self.last_retest._repr_html_()
        counts = self.last_retest["outcome"].value_counts().to_dict()
        self.status.value = ok_html("retest: " + ", ".join(f"{k} {v}" for k, v in counts.items()))

    def replay(self) -> None:
        """Replay the selected rows (edited bodies) on the runtime they are stored in."""
        rows = self.selected()
        done = replay(rows, self.rules or self.flow, **self.where)
        edited = int(done["edited"].sum()) if len(done) else 0
        self.reload()
        self.status.value = ok_html(f"replayed {len(done)} dead letter(s), {edited} edited")


def _safe(text: str) -> str:
    """A broker URL without its password."""
    import urllib.parse
    try:
        u = urllib.parse.urlsplit(text)
    except ValueError:
        return text
    if u.password:
        return text.replace(f":{u.password}@", ":***@")
    return text
