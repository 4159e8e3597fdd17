"""A one-line text box that tells Python where its caret is (``CaretText``).

ipywidgets' ``Text`` syncs its value but not the caret, so a click on a sample path could only be
appended at the end. ``CaretText`` is an anywidget: a tiny ES module renders an ``<input>`` and
tells Python its ``value`` and ``selection`` (``[start, end]``, in Python characters — code points,
not the browser's UTF-16 units) on every key, click, selection and input; Python sets ``selection``
to move the caret (e.g. after an insertion). It works wherever anywidget does (JupyterLab, Notebook
7, VS Code, Colab), with no extension of our own to install.

The browser's changes travel as custom messages, not as state syncs: ipywidgets throttles a model's
syncs (one in flight until the kernel is idle, the rest buffered), while a button's click goes at
once — so a caret moved just before a click on a sample path could reach Python after the click
and the path would go in at the old caret (seen in CI on a loaded machine). Custom messages keep
the browser's order. Python applies them under the property lock ipywidgets uses for its own syncs
(``Widget._lock_property``, the one private API used here), so they are not sent back to the
browser, where a late echo would undo newer typing.

``refocus_from``: a CSS selector; when the box loses the focus to an element it matches (the
mapping editor's sample paths), it takes the focus back at once, its caret where it was, so the
user can type on right after a click without waiting for the kernel.
"""

from __future__ import annotations

import anywidget
import traitlets

__all__ = ["CaretText", "insert_at"]

_ESM = r"""
// code points before UTF-16 index i of s, and back: Python counts code points, the DOM UTF-16 units
const toCp = (s, i) => Array.from(s.slice(0, i)).length;
const toU16 = (s, n) => Array.from(s).slice(0, n).join("").length;

function render({ model, el }) {
  el.classList.add("flownb-caret-text");
  const input = document.createElement("input");
  input.type = "text";
  input.spellcheck = false;
  input.autocomplete = "off";
  input.value = model.get("value");
  input.placeholder = model.get("placeholder");
  el.appendChild(input);

  // while this view writes the model, its own change events must not move the caret back
  let writing = false;
  const report = () => {
    const v = input.value;
    const start = toCp(v, input.selectionStart ?? v.length);
    const end = toCp(v, input.selectionEnd ?? v.length);
    const old = model.get("selection") || [];
    if (old[0] !== start || old[1] !== end) model.set("selection", [start, end]);
  };
  // the model is changed here and Python told by a custom message (never throttled: see the docstring)
  const write = (fn) => {
    const before = JSON.stringify([model.get("value"), model.get("selection")]);
    writing = true;
    try { fn(); } finally { writing = false; }
    const state = { value: model.get("value"), selection: model.get("selection") };
    if (JSON.stringify([state.value, state.selection]) !== before) model.send({ flownb_caret: state });
  };
  const onInput = () => write(() => { model.set("value", input.value); report(); });
  const onCaret = () => write(report);
  input.addEventListener("input", onInput);
  for (const ev of ["keyup", "mouseup", "select", "focus"]) input.addEventListener(ev, onCaret);
  // a click on an element refocus_from names (a sample path) gives the focus straight back
  input.addEventListener("blur", (e) => {
    const sel = model.get("refocus_from");
    const to = e.relatedTarget;
    if (sel && to instanceof Element && to.closest(sel)) setTimeout(() => input.focus({ preventScroll: true }), 0);
  });

  // Python changed the value and/or the caret (one message may carry both: apply the value first)
  const apply = () => {
    if (writing) return;
    const v = model.get("value");
    if (input.value !== v) input.value = v;
    const sel = model.get("selection");
    if (sel && sel.length === 2) {
      const a = toU16(v, sel[0]), b = toU16(v, sel[1]);
      if (input.selectionStart !== a || input.selectionEnd !== b) input.setSelectionRange(a, b);
    }
  };
  model.on("change:value", apply);
  model.on("change:selection", apply);
  model.on("change:placeholder", () => { input.placeholder = model.get("placeholder"); });
  // focus(): the user clicked something that writes into this box (a sample path): typing goes on here
  const onMsg = (msg) => {
    if (msg && msg.focus) { input.focus({ preventScroll: true }); apply(); }
  };
  model.on("msg:custom", onMsg);
  return () => {
    model.off("change:value", apply);
    model.off("change:selection", apply);
    model.off("msg:custom", onMsg);
  };
}
export default { render };
"""

_CSS = """
.flownb-caret-text { display: flex; align-items: center; min-width: 0; height: var(--jp-widgets-inline-height, 28px);
  margin: var(--jp-widgets-margin, 2px); box-sizing: border-box; }
.flownb-caret-text input { flex: 1 1 auto; min-width: 0; height: 100%; box-sizing: border-box;
  padding: var(--jp-widgets-input-padding, 4px) 8px; font-family: var(--jp-code-font-family, monospace);
  font-size: var(--jp-widgets-font-size, 13px); color: var(--jp-widgets-input-color, #000);
  background: var(--jp-widgets-input-background-color, #fff);
  border: var(--jp-widgets-input-border-width, 1px) solid var(--jp-widgets-input-border-color, #bdbdbd);
  outline: none; }
.flownb-caret-text input:focus { border-color: var(--jp-widgets-input-focus-border-color, #64b5f6); }
"""


class CaretText(anywidget.AnyWidget):
    """A text box whose caret Python can read (``selection``) and set; ``value`` as ``w.Text``'s,
    updated on every keystroke."""

    _esm = _ESM
    _css = _CSS
    value = traitlets.Unicode("").tag(sync=True)
    placeholder = traitlets.Unicode("").tag(sync=True)
    #: ``[start, end]`` of the selection in code points (equal: a caret); None until the browser
    #: reports one (a box never focused), which insert_at reads as "at the end"
    selection = traitlets.List(traitlets.Int(), default_value=None, allow_none=True,
                               minlen=2, maxlen=2).tag(sync=True)
    #: a CSS selector: losing the focus to an element it matches, the box takes it back at once
    refocus_from = traitlets.Unicode("").tag(sync=True)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.on_msg(self._from_browser)

    def _from_browser(self, _widget: object, content: object, _buffers: object) -> None:
        """The browser's value and caret, in the order the user made them (see the docstring)."""
        state = content.get("flownb_caret") if isinstance(content, dict) else None
        if not isinstance(state, dict):
            return
        new: dict[str, object] = {}
        if isinstance(state.get("value"), str):
            new["value"] = state["value"]
        sel = state.get("selection")
        if isinstance(sel, list) and len(sel) == 2 and all(type(i) is int for i in sel):
            new["selection"] = sel
        # locked: applied here and observed, but not sent back to the browser that made them
        with self._lock_property(**new), self.hold_trait_notifications():
            for name, value in new.items():
                self.set_trait(name, value)

    def focus(self) -> None:
        """Give the box the keyboard focus in every view, its caret where ``selection`` says."""
        self.send({"focus": True})


_GLUE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_`")


def insert_at(text: str, selection: list[int] | tuple[int, int] | None, snippet: str) -> tuple[str, int]:
    """``text`` with ``snippet`` put in place of the selection (at the caret; at the end when no
    caret is known), and the caret position after it. A space is put between the snippet and a
    word it would otherwise run into (``qty`` + ``price`` → ``qty price``, never ``qtyprice``);
    next to an operator, a bracket or a space it goes in as it is."""
    n = len(text)
    if selection is None:
        start = end = n
    else:
        start, end = sorted(max(0, min(n, int(i))) for i in selection)
    before, after = text[:start], text[end:]
    if before and before[-1] in _GLUE and snippet[:1] in _GLUE:
        before += " "
    if after and after[0] in _GLUE and snippet[-1:] in _GLUE:
        after = " " + after
    return before + snippet + after, len(before) + len(snippet)
