"""MappingEditor: write JSONata field rules against a sample DataFrame and see the output as you type.

``editor = flownb.MappingEditor(sample_df)`` shows one row per output field (name + expression), a
list of the sample's columns and nested paths (click one to insert it at the caret of the expression
last edited or clicked into: two clicks with `` * `` typed between them give ``items.qty * items.price``),
and a preview of the first rows with an ``_error`` column and a count of failing rows. Expression
errors are shown once, at their field, with their position (the field's preview column stays, marked);
nothing the user types raises a traceback. ``editor.mapping`` is the
:class:`flownb.rules.Mapping` that the spec uses (``editor.mapping.step("to-contact")``).

``MappingEditor(flow.sample(), flow=flow, step="shape")`` edits a mapping step of a flow (its
fields to start with) and previews in the flow's context, as ``Mapping.preview(flow=, step=)``: a
row over the flow's ``max_message_bytes`` fails as the runtimes fail it, and a sample that raw
pandas read for a ``csv.poll``/``sql.poll`` flow is flagged under the preview.
"""

from __future__ import annotations

import uuid
import warnings
from typing import Any

import ipywidgets as w

from ..display import frame_html
from ..errors import ConfigError, ExpressionError, FlownbError
from ._caret import CaretText, insert_at
from ._common import Debouncer, as_sample, error_html, log, ok_html, sample_fields, sample_paths

__all__ = ["MappingEditor"]

CHECK_ROWS = 5000  # rows of the sample the failing-row count covers
PATH_ROWS = 50  # rows of the sample the list of paths comes from


class _FieldRow:
    """One output field: name, expression, remove button, error label."""

    def __init__(self, editor: MappingEditor, name: str, expression: str):
        self.editor = editor
        self.name = w.Text(value=name, placeholder="field name", continuous_update=True,
                           layout=w.Layout(width="14em"))
        self.name.add_class("flownb-name")
        # the caret is synced (CaretText): a clicked sample path goes where the user's cursor is
        self.expr = CaretText(value=expression, placeholder="JSONata expression, e.g. $lowercase(email)",
                              refocus_from=f".{editor._paths_class} .flownb-path",
                              layout=w.Layout(flex="1 1 auto", width="auto"))
        self.expr.add_class("flownb-expr")
        self.remove = w.Button(icon="trash", tooltip="remove this field", layout=w.Layout(width="3em"))
        self.remove.add_class("flownb-remove")
        self.error = w.HTML()
        self.error.add_class("flownb-row-error")
        self.box = w.VBox([w.HBox([self.name, self.expr, self.remove]), self.error])
        self.box.add_class("flownb-field")
        self.name.observe(self._changed, names="value")
        self.expr.observe(self._changed, names="value")
        self.expr.observe(self._focused, names="selection")
        self.remove.on_click(lambda _b: editor.remove_field(self))

    def _changed(self, change: dict) -> None:
        self.editor._active = self
        self.editor._schedule()

    def _focused(self, change: dict) -> None:  # clicked into or moved the caret: the next path goes here
        self.editor._active = self


class MappingEditor:
    """Edit a mapping (output field → JSONata expression) against ``sample``; see ``.mapping``."""

    def __init__(self, sample: Any, mapping: Any = None, *, rows: int = 10, debounce: float = 0.3,
                 flow: Any = None, step: str | None = None):
        self.rows = rows
        #: the flow and its mapping step the preview runs in the context of (None: no flow)
        self.flow, self.step = flow, step
        if flow is not None:
            if step is None:
                raise ConfigError("MappingEditor(sample, flow=flow, step='…'): name the mapping step of the "
                                  "flow this editor previews")
            config = flow.step(step).config  # SpecError naming the flow's steps when there is no such step
            if mapping is None and isinstance(config.get("fields"), dict):
                mapping = config["fields"]
        self.notes: list[str] = []  # what the last preview warned about (a raw pandas sample)
        self.sample, self.sample_error = as_sample(sample)
        self._rows: list[_FieldRow] = []
        self._active: _FieldRow | None = None
        self._preview = None
        self._failing = 0
        self.errors: dict[str, str] = {}
        self._paths_class = f"flownb-paths-{uuid.uuid4().hex[:12]}"  # this editor's sample paths (CSS)
        self._debouncer = Debouncer(self._refresh_safely, debounce)
        self._build_widgets()
        for name, expr in self._initial_fields(mapping).items():
            self._append_row(name, expr)
        self.refresh()

    # -- construction -----------------------------------------------------------------------------
    def _initial_fields(self, mapping: Any) -> dict[str, str]:
        if mapping is None:
            if self.sample is None:
                return {"": ""}
            return sample_fields(self.sample)
        if isinstance(mapping, dict):
            return {str(k): str(v) for k, v in mapping.items()}
        fields = getattr(mapping, "fields", None)
        if isinstance(fields, dict) and fields:
            return {str(k): str(v) for k, v in fields.items()}
        self._set_status(error_html(f"mapping must be a flownb.rules.Mapping with fields or a dict "
                                    f"{{name: expression}}, got {type(mapping).__name__}; starting empty"))
        return {"": ""}

    def _build_widgets(self) -> None:
        self.status = w.HTML()
        self.status.add_class("flownb-status")
        self.fields_box = w.VBox()
        self.add_button = w.Button(description="add field", icon="plus")
        self.add_button.add_class("flownb-add-field")
        self.add_button.on_click(lambda _b: self.add_field())
        self.summary = w.HTML()
        self.summary.add_class("flownb-summary")
        self.preview_html = w.HTML()
        self.preview_html.add_class("flownb-preview")
        paths = self._paths()
        buttons = []
        for p in paths:
            b = w.Button(description=p, tooltip=f"insert {p} at the cursor of the expression last clicked into",
                         layout=w.Layout(width="auto"))
            b.add_class("flownb-path")
            b.on_click(lambda _b, p=p: self.insert(p, focus=True))
            buttons.append(b)
        self.paths_box = w.Box(buttons, layout=w.Layout(flex_flow="row wrap"))
        self.paths_box.add_class(self._paths_class)
        helper = w.VBox([w.HTML("<b>sample columns and paths</b> (click to insert at the cursor)"), self.paths_box])
        header = w.HTML("<b>output fields</b> — name and JSONata expression")
        self.widget = w.VBox([self.status, header, self.fields_box, self.add_button, helper,
                              self.summary, self.preview_html])
        self.widget.add_class("flownb-mapping-editor")

    def _paths(self) -> list[str]:
        """The sample's paths, from the records the preview sees (``customer.email`` columns
        nested); a sample that cannot become records is shown by the preview instead."""
        from ..records import to_records

        if self.sample is None:
            return []
        try:
            return sample_paths(to_records(self.sample, PATH_ROWS))
        except FlownbError:
            return []

    def _append_row(self, name: str, expression: str) -> _FieldRow:
        row = _FieldRow(self, name, expression)
        self._rows.append(row)
        self.fields_box.children = [r.box for r in self._rows]
        self._active = row
        return row

    # -- public actions ---------------------------------------------------------------------------
    def add_field(self, name: str = "", expression: str = "") -> None:
        """Add an output field (empty by default) and refresh the preview."""
        self._append_row(name, expression)
        self._schedule()

    def remove_field(self, which: _FieldRow | str | int) -> None:
        """Remove a field by row, name or index."""
        row = self._row(which)
        self._rows.remove(row)
        if self._active is row:
            self._active = self._rows[-1] if self._rows else None
        self.fields_box.children = [r.box for r in self._rows]
        self._schedule()

    def set_field(self, name: str, expression: str) -> None:
        """Set the expression of field ``name`` (added when missing)."""
        for r in self._rows:
            if r.name.value == name:
                r.expr.value = expression
                return
        self.add_field(name, expression)

    def insert(self, path: str, *, focus: bool = False) -> None:
        """Insert ``path`` into the expression of the row last edited or clicked into (a new row when
        none), at its caret — replacing a selection; at the end when the browser has not reported a
        caret — and put the caret after it, so a second click goes on from there; ``focus`` (a click
        on a path) gives the box the keyboard back, so typing goes on there too."""
        row = self._active or (self._rows[-1] if self._rows else self._append_row("", ""))
        text, caret = insert_at(row.expr.value, row.expr.selection, path)
        with row.expr.hold_sync():  # one message: the value, then the caret after the insertion
            row.expr.value = text
            row.expr.selection = [caret, caret]
        if focus:
            row.expr.focus()
        if not row.name.value.strip():
            row.name.value = path.split(".")[-1].strip("`")

    def refresh(self) -> None:
        """Recompute errors and the preview now (typing triggers it after a short pause)."""
        self._debouncer.flush()
        self._refresh_safely()

    @property
    def fields(self) -> dict[str, str]:
        return {r.name.value.strip(): r.expr.value for r in self._rows if r.name.value.strip()}

    @property
    def mapping(self):
        """The :class:`flownb.rules.Mapping` of the fields; ExpressionError when one is invalid."""
        from ..rules import Mapping
        from ..rules import compile as compile_expr
        from ..rules.functions_check import check_functions

        fields = self.fields
        if not fields:
            raise ExpressionError("the mapping has no fields; add one with a name and an expression")
        for name, expr in fields.items():
            try:
                check_functions(expr)
                compile_expr(expr)
            except ExpressionError as exc:
                exc.at(field=name)
                raise
        return Mapping(fields=fields)

    @property
    def preview(self):
        """The last preview DataFrame (first ``rows`` rows, with ``_error``), or None."""
        return self._preview

    @property
    def failing(self) -> int:
        return self._failing

    def _ipython_display_(self) -> None:
        from IPython.display import display
        display(self.widget)

    # -- internals --------------------------------------------------------------------------------
    def _row(self, which: _FieldRow | str | int) -> _FieldRow:
        if isinstance(which, _FieldRow):
            return which
        if isinstance(which, int):
            return self._rows[which]
        for r in self._rows:
            if r.name.value == which:
                return r
        raise FlownbError(f"no field named '{which}'; fields: {', '.join(self.fields)}")

    def _schedule(self) -> None:
        self._debouncer.trigger()

    def _set_status(self, html_text: str) -> None:
        self.status.value = html_text

    def _refresh_safely(self) -> None:
        try:
            self._refresh()
        except Exception as exc:  # a widget callback must never show a traceback; say what failed
            log.exception("mapping preview failed")
            self._set_status(error_html(f"preview failed: {type(exc).__name__}: {exc}"))

    def _check_rows(self) -> dict[str, str]:
        """Validate names and compile expressions; set each row's error label; return good fields."""
        from ..rules import compile as compile_expr
        from ..rules.functions_check import check_functions

        good: dict[str, str] = {}
        self.errors = {}
        seen: set[str] = set()
        for r in self._rows:
            name, expr = r.name.value.strip(), r.expr.value
            msg = None
            if not name:
                msg = error_html("give this field a name") if expr.strip() else ""
            elif name in seen:
                msg = error_html(f"field name '{name}' is used twice; rename one")
            elif not expr.strip():
                msg = error_html("write an expression, e.g. a column name from the list below")
            else:
                try:
                    check_functions(expr)
                    compile_expr(expr)
                except ExpressionError as exc:
                    msg = error_html(str(exc), expression=expr, position=exc.position)
            seen.add(name)
            r.error.value = msg or ""
            if msg:
                self.errors[name or f"#{self._rows.index(r) + 1}"] = msg
            else:
                good[name] = expr
        return good

    def _refresh(self) -> None:
        self._failing = 0
        if self.sample is None:
            self._set_status(error_html(self.sample_error or "no sample"))
            self._check_rows()
            self.preview_html.value = ""
            return
        good = self._check_rows()
        if not good:
            self._preview = None
            self.summary.value = error_html("no valid field yet: the preview appears when one compiles")
            self.preview_html.value = ""
            self._set_status("")
            return
        from ..rules import Mapping

        checked = min(len(self.sample), CHECK_ROWS)
        context: dict[str, Any] = {"flow": self.flow, "step": self.step} if self.flow is not None else {}
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                full = Mapping(fields=good).preview(self.sample, CHECK_ROWS, **context)
        except FlownbError as exc:
            self._set_status(error_html(str(exc)))
            return
        self.notes = [str(c.message) for c in caught if issubclass(c.category, UserWarning)]
        self._set_status(error_html(self.notes[0]) if self.notes else "")
        self._preview = full.head(self.rows)
        errs = full["_error"] if "_error" in full.columns else None
        self._failing = int(errs.fillna("").astype(str).str.len().gt(0).sum()) if errs is not None else 0
        scope = f" (first {checked} checked)" if len(self.sample) > checked else ""
        bad = f"; {len(self.errors)} field{'s' if len(self.errors) != 1 else ''} with errors" if self.errors else ""
        text = f"{self._failing} of {checked} rows fail{scope}{bad}"
        self.summary.value = (error_html(text) if self._failing or self.errors else ok_html(text))
        self.preview_html.value = self._preview_table(good)

    def _preview_table(self, good: dict[str, str]) -> str:
        """The preview's HTML: the computed columns, and in its place each named field whose
        expression does not compile, shown as '—' under a line naming it (its error is at its field,
        once), so a column never vanishes without a word."""
        assert self._preview is not None
        names = list(dict.fromkeys(r.name.value.strip() for r in self._rows if r.name.value.strip()))
        broken = [n for n in names if n not in good and n in self.errors]
        if not broken:
            return frame_html(self._preview, limit=self.rows)
        shown = self._preview.copy()
        for name in broken:
            at = sum(1 for n in names[:names.index(name)] if n in shown.columns)
            shown.insert(at, name, "—")
        few = "s" if len(broken) != 1 else ""
        note = error_html(f"not computed: {', '.join(broken)} — the expression{few} above ha{'ve' if few else 's'} "
                          f"an error; the column{few} fill{'' if few else 's'} in once it compiles")
        return note.replace('class="flownb-error"', 'class="flownb-error flownb-not-computed"', 1) + \
            frame_html(shown, limit=self.rows)
