"""Monitor: queue depths, message rates and dead letters of a flow deployed on RabbitMQ.

``flownb.Monitor("flow.yaml", broker="amqp://guest:guest@127.0.0.1:5672/")`` shows, per action step,
the ready / retrying / dead messages and the in/out rates, refreshed every ``interval`` seconds, a
small throughput-over-time plot (SVG) and a button that replays the dead letters.

Figures come from the RabbitMQ management API (``http://127.0.0.1:15672`` by default: rates and
consumers too) when it answers, otherwise from passive queue declares (depths only).
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ipywidgets as w

from ..display import records_html
from ..errors import BrokerError, FlownbError
from ..flow import Flow, load
from ..runtime.amqp import names
from ._common import error_html, log, ok_html

__all__ = ["Monitor", "Snapshot", "management_snapshot"]

DEFAULT_MANAGEMENT = "http://127.0.0.1:15672"


@dataclass
class Snapshot:
    """Figures of one refresh: per step ``ready``, ``retry``, ``dead``, ``consumers``, ``in_rate``,
    ``out_rate`` (msg/s; None without the management API)."""

    at: float
    source: str  # "management" | "amqp"
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    def total(self, key: str) -> float:
        return sum((v.get(key) or 0) for v in self.steps.values())


def _vhost(broker: str) -> str:
    path = urllib.parse.urlparse(broker).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


def _credentials(broker: str) -> tuple[str, str]:
    u = urllib.parse.urlparse(broker)
    return urllib.parse.unquote(u.username or "guest"), urllib.parse.unquote(u.password or "guest")


def _rate(stats: dict, key: str) -> float:
    return float(((stats or {}).get(f"{key}_details") or {}).get("rate") or 0.0)


def management_snapshot(flow: Flow, broker: str, management_url: str = DEFAULT_MANAGEMENT,
                        timeout: float = 3.0) -> Snapshot:
    """Figures from the management API (one request for the vhost's queues); BrokerError if it fails."""
    import httpx

    vhost = urllib.parse.quote(_vhost(broker), safe="")
    url = f"{management_url.rstrip('/')}/api/queues/{vhost}"
    params = {"columns": "name,messages_ready,messages_unacknowledged,consumers,message_stats"}
    try:
        r = httpx.get(url, params=params, auth=_credentials(broker), timeout=timeout)
        r.raise_for_status()
        queues = {q["name"]: q for q in r.json()}
    except (httpx.HTTPError, ValueError) as exc:
        raise BrokerError(f"RabbitMQ management API at {management_url} did not answer ({exc}); enable "
                          f"it with 'rabbitmq-plugins enable rabbitmq_management'") from exc
    snap = Snapshot(at=time.time(), source="management")
    for s in flow.actions:
        q = queues.get(names.step_queue(flow.name, s.name), {})
        prefix = names.step_queue(flow.name, s.name) + ".retry."
        retry = sum(v.get("messages_ready", 0) or 0 for k, v in queues.items() if k.startswith(prefix))
        dlq = queues.get(names.dead_letter_queue(flow.name, s.name), {})
        stats = q.get("message_stats") or {}
        snap.steps[s.name] = {
            "ready": q.get("messages_ready", 0) or 0, "unacked": q.get("messages_unacknowledged", 0) or 0,
            "retry": retry, "dead": dlq.get("messages_ready", 0) or 0, "consumers": q.get("consumers", 0),
            "in_rate": _rate(stats, "publish"), "out_rate": _rate(stats, "ack"),
        }
    return snap


def amqp_snapshot(flow: Flow, broker: str) -> Snapshot:
    """Depths from passive declares (no rates)."""
    from ..runtime.amqp.topology import queue_depths

    snap = Snapshot(at=time.time(), source="amqp")
    for step, d in queue_depths(flow, broker).items():
        snap.steps[step] = {"ready": d.get("ready", 0), "unacked": None, "retry": d.get("retry", 0),
                            "dead": d.get("dead", 0), "consumers": None, "in_rate": None, "out_rate": None}
    return snap


def throughput_svg(history: list[Snapshot], *, width: int = 420, height: int = 120) -> str:
    """A small line plot: messages processed per second (management) or total ready (amqp) over time."""
    if len(history) < 2:
        return '<div style="color:#777;font-size:12px">(the plot appears after two refreshes)</div>'
    use_rate = history[-1].source == "management"
    key = "out_rate" if use_rate else "ready"
    ys = [h.total(key) for h in history]
    t0, t1 = history[0].at, history[-1].at
    top = max(max(ys), 1e-9)
    span = max(t1 - t0, 1e-9)
    pad = 24
    pts = " ".join(f"{pad + (h.at - t0) / span * (width - 2 * pad):.1f},"
                   f"{height - pad - (y / top) * (height - 2 * pad):.1f}" for h, y in zip(history, ys, strict=True))
    label = "processed msg/s" if use_rate else "messages waiting"
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="flownb-throughput" '
            f'font-family="sans-serif" font-size="11">'
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa" stroke="#ddd"/>'
            f'<text x="{pad}" y="14">{label} (max {max(ys):,.{1 if use_rate else 0}f}) over {span:.0f}s</text>'
            f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#999"/>'
            f'<polyline points="{pts}" fill="none" stroke="#1f5fa8" stroke-width="1.5"/></svg>')


class Monitor:
    """Live figures of a deployed flow; ``.refresh()`` once, ``.start()``/``.stop()`` periodically."""

    def __init__(self, spec: Flow | str | Path, broker: str = names.DEFAULT_BROKER_URL, *,
                 management_url: str | None = DEFAULT_MANAGEMENT, interval: float = 5.0,
                 history: int = 120, autostart: bool = True):
        self.flow = spec if isinstance(spec, Flow) else load(Path(spec) if not isinstance(spec, Path) else spec)
        self.broker = broker
        self.management_url = management_url
        self.interval = interval
        self.history: deque[Snapshot] = deque(maxlen=history)
        self.snapshot: Snapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._build_widgets()
        self.refresh()
        if autostart:
            self.start()

    def _build_widgets(self) -> None:
        self.title = w.HTML(f"<b>flow {self.flow.name}</b> on <code>{_safe(self.broker)}</code>")
        self.table = w.HTML()
        self.table.add_class("flownb-monitor-table")
        self.plot = w.HTML()
        self.status = w.HTML()
        self.status.add_class("flownb-status")
        self.replay_button = w.Button(description="replay dead letters", icon="redo",
                                      layout=w.Layout(width="auto"))  # never cut to "replay dead le…"
        self.replay_button.add_class("flownb-replay")
        self.replay_button.on_click(lambda _b: self._replay_clicked())
        self.refresh_button = w.Button(description="refresh", icon="refresh")
        self.refresh_button.on_click(lambda _b: self.refresh())
        # the dead letters to look at, edit, retest and replay selectively: the workbench, opened below
        self.workbench_button = w.Button(description="dead letters…", icon="wrench", layout=w.Layout(width="auto"))
        self.workbench_button.add_class("flownb-open-workbench")
        self.workbench_button.on_click(lambda _b: self._workbench_clicked())
        self.workbench_area = w.VBox([])
        self.workbench_area.add_class("flownb-workbench-area")
        #: the workbench the "dead letters…" button opened (set ``.rules`` to retest with a fixed flow)
        self.opened = None
        self.widget = w.VBox([self.title, self.table, self.plot,
                              w.HBox([self.refresh_button, self.replay_button, self.workbench_button]), self.status,
                              self.workbench_area])
        self.widget.add_class("flownb-monitor")

    def _ipython_display_(self) -> None:
        from IPython.display import display
        display(self.widget)

    # -- figures ----------------------------------------------------------------------------------
    def sample(self) -> Snapshot:
        """Read the figures once (management API, else passive declares)."""
        if self.management_url:
            try:
                return management_snapshot(self.flow, self.broker, self.management_url)
            except BrokerError as exc:
                log.debug("management API unavailable: %s", exc)
        return amqp_snapshot(self.flow, self.broker)

    def refresh(self) -> Snapshot | None:
        """Read the figures and redraw; a broker error is shown in the widget, not raised."""
        try:
            snap = self.sample()
        except FlownbError as exc:
            self.status.value = error_html(f"cannot read the broker: {exc}")
            return None
        except Exception as exc:  # pika/network errors: show them in the widget
            log.exception("monitor refresh failed")
            self.status.value = error_html(f"cannot read the broker: {type(exc).__name__}: {exc}")
            return None
        self.snapshot = snap
        self.history.append(snap)
        self._draw(snap)
        return snap

    def _draw(self, snap: Snapshot) -> None:
        rows = []
        for step, v in snap.steps.items():
            def rate(x):
                return "—" if x is None else f"{x:.2f}"
            rows.append({"step": step, "ready": v["ready"], "retrying": v["retry"], "dead": v["dead"],
                         "consumers": "—" if v["consumers"] is None else v["consumers"],
                         "in msg/s": rate(v["in_rate"]), "out msg/s": rate(v["out_rate"]),
                         "_error": "dead letters" if v["dead"] else ""})
        self.table.value = records_html(rows, columns=["step", "ready", "retrying", "dead", "consumers",
                                                       "in msg/s", "out msg/s"])
        self.plot.value = throughput_svg(list(self.history))
        when = time.strftime("%H:%M:%S", time.localtime(snap.at))
        note = "" if snap.source == "management" else " (rates need the RabbitMQ management plugin)"
        self.status.value = ok_html(f"updated {when} from {snap.source}{note}")

    # -- periodic refresh -------------------------------------------------------------------------
    def start(self) -> None:
        """Refresh every ``interval`` seconds in a background thread until :meth:`stop`."""
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"flownb-monitor-{self.flow.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.interval + 5)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    # -- dead letters -----------------------------------------------------------------------------
    def dead_letters(self, step: str | None = None):
        from ..runtime.amqp.dlq import AmqpDeadLetters
        return AmqpDeadLetters(self.flow, self.broker).list(step)

    def workbench(self, rules: Flow | None = None):
        """A :class:`~flownb.notebook.dead_letter_workbench.DeadLetterWorkbench` on this flow's dead
        letters: grouped by error, edit, retest with ``rules`` (the fixed flow), replay selected."""
        from .dead_letter_workbench import DeadLetterWorkbench
        return DeadLetterWorkbench(self.flow, broker=self.broker, rules=rules)

    def replay(self, step: str | None = None) -> int:
        """Send the dead letters (of ``step`` or all steps) back to their step queue; return the count."""
        from ..runtime.amqp.dlq import AmqpDeadLetters
        n = AmqpDeadLetters(self.flow, self.broker).replay(step)
        self.refresh()
        return n

    def _workbench_clicked(self) -> None:
        """Open (or open again, reading the dead letters afresh) the workbench below the figures; its
        own status area says what went wrong, if anything."""
        try:
            wb = self.workbench(rules=self.opened.rules if self.opened is not None else None)
        except Exception as exc:  # shown in the widget: a click never raises a traceback
            log.exception("opening the dead-letter workbench failed")
            self.status.value = error_html(f"cannot open the dead letters: {exc}")
            return
        self.opened = wb
        self.workbench_area.children = (wb.widget,)

    def _replay_clicked(self) -> None:
        try:
            n = self.replay()
        except Exception as exc:  # shown in the widget: a click never raises a traceback
            log.exception("replay failed")
            self.status.value = error_html(f"replay failed: {exc}")
            return
        self.status.value = ok_html(f"replayed {n} dead letter{'s' if n != 1 else ''}")


def _safe(url: str) -> str:
    u = urllib.parse.urlparse(url)
    if u.password:
        return url.replace(f":{u.password}@", ":***@")
    return url
