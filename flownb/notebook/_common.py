"""Small helpers shared by the notebook widgets: sample checking, paths, debouncing, error HTML, CSS."""

from __future__ import annotations

import asyncio
import html
import logging
import re
from collections.abc import Callable
from typing import Any

log = logging.getLogger("flownb.notebook")

#: CSS the widgets need beyond ipywidgets' own, scoped to flownb's classes: a checkbox centred on its
#: label's line (ipywidgets lays the box on the text's baseline, a few pixels high) and never cut to
#: "…" when its row has room
_CSS = """
.flownb-flow-builder .widget-checkbox .widget-label-basic { display: flex; align-items: center; }
.flownb-flow-builder .widget-checkbox input[type="checkbox"] { margin-top: 0; margin-bottom: 0; }
.flownb-flow-builder .flownb-live, .flownb-flow-builder .flownb-live .widget-label-basic { width: auto; }
"""


def style_widget():
    """A hidden HTML widget holding flownb's CSS (a ``<style>`` applies to the whole page); put it
    into a widget's root box."""
    import ipywidgets as w

    box = w.HTML(f"<style>{_CSS}</style>", layout=w.Layout(display="none"))
    box.add_class("flownb-style")
    return box

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def as_sample(sample: Any):
    """``(sample, None)`` for a DataFrame or a list of dicts, kept as given (the widgets turn it
    into records with :func:`flownb.records.to_records`, as ``flow.test`` does), else
    ``(None, message)``. A DataFrame whose columns collide (``customer`` and ``customer.email``)
    gets a message too."""
    from ..errors import FlownbError
    from ..records import column_paths, is_frame

    if is_frame(sample):
        try:
            column_paths(sample)
        except FlownbError as exc:
            return None, str(exc)
        return sample, None
    if isinstance(sample, list) and all(isinstance(r, dict) for r in sample):
        return sample, None
    kind = type(sample).__name__
    return None, (f"the sample must be a pandas DataFrame (or a list of dicts), got {kind}; "
                  f"load one with pd.read_csv(...) / pd.read_json(...) and pass it as the sample")


def sample_fields(sample: Any) -> dict[str, str]:
    """One output field per column (or top-level key) of a sample: name → its JSONata path
    (a dotted column ``customer.email`` → ``customer.email``, a path into the record)."""
    from ..records import column_paths, is_frame

    if is_frame(sample):
        return {".".join(parts): ".".join(quote(p) for p in parts) for parts in column_paths(sample)}
    keys = dict.fromkeys(str(k) for r in sample[:50] for k in r)
    return {k: quote(k) for k in keys}


def quote(name: str) -> str:
    """A JSONata path segment: ``name`` or ```odd name``` (backticks) when not an identifier."""
    return name if _IDENT.match(name) else f"`{name}`"


def sample_paths(records: list[dict], *, depth: int = 4) -> list[str]:
    """Keys and nested paths of sample records (dicts → ``a.b``; lists of dicts → ``items.qty``),
    key by key in first-seen order."""
    out: list[str] = []
    for key in dict.fromkeys(k for r in records for k in r):
        base = quote(str(key))
        out.append(base)
        for r in records:
            if key in r:
                _walk(r[key], base, out, depth)
    return list(dict.fromkeys(out))


def _walk(value: Any, prefix: str, out: list[str], depth: int) -> None:
    if depth <= 0:
        return
    if isinstance(value, list):
        for item in value[:20]:
            _walk(item, prefix, out, depth)
    elif isinstance(value, dict):
        for k, v in value.items():
            path = f"{prefix}.{quote(str(k))}"
            if path not in out:
                out.append(path)
            _walk(v, path, out, depth - 1)


def error_html(message: str, *, expression: str = "", position: int | None = None) -> str:
    """A red message; with an expression and a position, the expression with a caret under it."""
    text = html.escape(message.split("\n")[0], quote=False)
    pointer = ""
    if expression and position is not None:
        pos = max(0, min(position, len(expression)))
        pointer = (f'<pre style="margin:2px 0;color:#333">{html.escape(expression)}\n'
                   f'{" " * pos}<span style="color:#b00020">^</span></pre>')
    return f'<div class="flownb-error" style="color:#b00020;font-size:12px">{text}{pointer}</div>'


def ok_html(message: str) -> str:
    return f'<div class="flownb-ok" style="color:#2a7a2a;font-size:12px">{html.escape(message, quote=False)}</div>'


class Debouncer:
    """Call ``fn`` once, ``delay`` seconds after the last ``trigger()``. Without a running asyncio
    loop (plain Python, tests) or with ``delay <= 0`` it calls ``fn`` at once."""

    def __init__(self, fn: Callable[[], None], delay: float):
        self.fn = fn
        self.delay = delay
        self._handle: asyncio.TimerHandle | None = None

    def trigger(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        loop = None
        if self.delay > 0:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        if loop is None:
            self.fn()
        else:
            self._handle = loop.call_later(self.delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self.fn()

    def flush(self) -> None:
        """Run a pending call now."""
        if self._handle is not None:
            self._handle.cancel()
            self._fire()
