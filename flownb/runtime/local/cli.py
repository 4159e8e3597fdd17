"""``flownb run``: run a flow on the local runtime, with a rich progress display and summary.

- default: poll when due, process queues, until SIGINT/SIGTERM; then print the summary.
- ``--until-idle``: poll once, drain every queue, print the summary, exit 0 — or 1 when the run
  dead-lettered messages (``--allow-dead-letters`` keeps 0); the summary has one line per step and
  error kind and the exact ``flownb dlq list`` command. Retries due within
  ``FLOWNB_RETRY_WAIT`` seconds (total waiting, default 60) are waited for; retries scheduled later
  stay queued (they survive in the state directory) and the summary reports them as pending, with
  the time until the next one: run again to deliver them.
- ``FLOWNB_MAX_QUEUE`` (default 10,000): ``submit`` raises QueueFull (HTTP 429) above this depth.
- a webhook trigger with ``--port``: ``flownb.webhook.server.serve_local(runtime, host, port)``
  serves requests in the main thread (blocking until the server stops) and runs ``runtime.run`` in
  a background thread.
- no zombies: a step or thread that dies of an exception the runtime cannot turn into a dead letter
  (a ``BaseException`` such as a pyo3 panic) is logged with its step and ends the process with
  status 70 within a few seconds (``/healthz`` answers 503 meanwhile); its batch stays queued.
  SIGTERM/SIGINT finish the current batch; if that takes longer than ``FLOWNB_STOP_GRACE`` seconds
  (default 45) the process exits 124, and a second signal ends it at once.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...errors import FlownbError, RuntimeFailure
from ...flow import Flow
from ...secrets import check_env
from ..health import EXIT_CRASHED, HEALTH, exit_on_failure, hang_watchdog, step_timeout, stop_deadline
from .runtime import LocalRuntime, Progress, RunSummary

__all__ = ["add_parser", "run_cli", "print_summary"]

log = logging.getLogger("flownb.runtime.local")


def add_parser(sub: Any) -> None:
    from ..._cli import add_spec
    p = sub.add_parser("run", help="run a flow on the embedded runtime (SQLite queues)")
    add_spec(p)
    p.add_argument("--state-dir", default=".flownb", help="where queues, cursors and dead letters live")
    p.add_argument("--until-idle", action="store_true",
                   help="poll once, drain every queue, exit (1 if the run dead-lettered messages)")
    p.add_argument("--port", type=int, default=None, help="serve a webhook trigger on this port")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--reset-state", action="store_true",
                   help="start over: move this flow's state (cursor, queues, dead letters) aside first")
    p.add_argument("--allow-dead-letters", action="store_true",
                   help="with --until-idle: exit 0 even when the run dead-lettered messages (default: 1)")
    p.add_argument("--no-fuse", action="store_true",
                   help="commit every step's outputs to the next step's queue (default: consecutive steps "
                        "without outside effects run as one fused stage; docs/local.md)")
    p.set_defaults(handler=_run)


def _run(args) -> int:
    from ..._cli import redacted
    return redacted(run_cli, args)


def _console():
    from rich.console import Console
    return Console(highlight=False)


def print_summary(summary: RunSummary, console=None, dlq_command: str | None = None,
                  cursor: dict | None = None) -> None:
    """The per-step table, then what a reader counts: records in from the trigger and how many
    reached the last step; ``cursor`` (the trigger's saved state) says where a poll that found
    nothing new stands."""
    from rich.table import Table
    con = console or _console()
    t = Table(title=f"flow '{summary.flow}'")
    for col in ("step", "in", "out", "retried", "dead", "time (s)", "msg/s"):
        t.add_column(col, justify="left" if col == "step" else "right")
    for name, s in summary.steps.items():
        rate = f"{s.inputs / s.seconds:,.0f}" if s.seconds > 0 and s.inputs else "-"
        t.add_row(name, f"{s.inputs:,}" if s.inputs else "-", f"{s.outputs:,}", f"{s.retried:,}",
                  f"{s.dead:,}", f"{s.seconds:.3f}", rate)
    con.print(t)
    names = list(summary.steps)
    if names:
        trigger, first = names[0], summary.steps[names[0]]
        if first.outputs == 0 and cursor and "cursor" in cursor and not summary.messages:
            con.print(f"'{trigger}': no new records since cursor {cursor['cursor']!r}")
        elif len(names) > 1:
            last = names[-1]
            con.print(f"{first.outputs:,} record(s) in from '{trigger}'; {summary.steps[last].outputs:,} "
                      f"came out of the last step '{last}' ({summary.messages:,} step inputs in "
                      f"{summary.elapsed:.2f}s, {summary.msg_per_s:,.0f}/s)")
    for name, st in summary.steps.items():  # a route step: messages per branch, and the unmatched ones
        if st.branches is not None:
            taken = ", ".join(f"{b} {n:,}" for b, n in st.branches.items()) or "none"
            con.print(f"route '{name}': branches {taken}; unmatched (filtered) {st.unmatched:,}")
    kinds = [(name, kind, n, example) for name, st in summary.steps.items()
             for kind, (n, example) in st.dead_kinds.items()]
    for name, kind, n, example in kinds:  # one line per step and error kind, not one per message
        con.print(f"[yellow]dead-lettered[/yellow] step '{name}': {n:,} × {kind}: {example}", soft_wrap=True)
    if summary.dead_letters:
        con.print(f"[yellow]{summary.dead_letters:,} dead letter(s) stored[/yellow]: see "
                  f"'{dlq_command or 'flownb dlq list SPEC --state-dir DIR'}'", soft_wrap=True)
    if summary.pending:
        wait = f"; next retry due in {summary.next_retry_in:.1f}s" if summary.next_retry_in else ""
        pend = ", ".join(f"{k}: {v}" for k, v in summary.pending.items())
        con.print(f"[yellow]pending (scheduled retries)[/yellow] {pend}{wait}; run again to deliver them")
    for err in summary.poll_errors:
        con.print(f"[red]poll failed[/red]: {err}")


@contextmanager
def _progress(runtime: LocalRuntime, console) -> Iterator[Progress]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar
    bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
              console=console, transient=True)
    total = runtime.stats[runtime.flow.trigger.name].outputs or None
    tasks = {name: bar.add_task(name, total=total) for name in runtime.steps}

    def update(step: str, n: int) -> None:
        bar.update(tasks[step], advance=n)
    with bar:
        yield update


@contextmanager
def _signals(runtime: LocalRuntime, stop: threading.Event) -> Iterator[None]:
    deadline = stop_deadline()

    def handler(signum, frame):  # noqa: ARG001
        log.info("received signal %s: finishing the current batch and stopping", signum)
        deadline(signum)
        stop.set()
        runtime.stop()
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _more_now(runtime: LocalRuntime) -> bool:
    """The trigger said more of its source is ready now (a full batch) and was not polled for it."""
    due = runtime.next_poll_at()
    return runtime.trigger.kind == "poll" and due is not None and due <= runtime.clock()


def _poll(runtime: LocalRuntime) -> int:
    try:
        return runtime.poll_backlog(raise_errors=True)
    except FlownbError:
        raise
    except Exception as exc:
        raise RuntimeFailure(f"trigger '{runtime.flow.trigger.name}' ({runtime.flow.trigger.component}) "
                             f"failed to poll: {type(exc).__name__}: {exc}; nothing of that poll was queued (batches "
                             f"polled before it stay queued with their cursor: run again once the source "
                             f"is fixed)") from exc


def _serve(runtime: LocalRuntime, args: Any) -> RunSummary:
    from ...webhook.server import serve_local  # serves in this thread, runs the runtime in another
    serve_local(runtime, args.host, args.port)
    return runtime.summary()


def _banner(flow: Flow, args: Any, what: str) -> str:
    """What a long-running ``flownb run`` does, where its state is, and how to stop it."""
    return (f"flow '{flow.name}' on the embedded runtime: {what}; {len(flow.actions)} step(s); state in "
            f"{args.state_dir}; stop with Ctrl-C or SIGTERM (the current batch finishes, then a summary)")


def _dlq_command(args: Any) -> str:
    import shlex
    spec = getattr(args, "spec", None) or "SPEC"
    return f"flownb dlq list {shlex.quote(str(spec))} --state-dir {shlex.quote(str(args.state_dir))}"


def _print_on_error(runtime: LocalRuntime, console: Any) -> None:
    errors = runtime.errors
    assert errors is not None
    steps = ", ".join(f"'{s.name}'" for s in runtime.flow.error_steps)
    if errors.delivered:
        console.print(f"on_error: {errors.delivered:,} failure(s) delivered to {steps}", soft_wrap=True,
                      highlight=False)
    if errors.failed_deliveries:
        console.print(f"[red]on_error: {errors.failed_deliveries} delivery(ies) to {steps} failed (see the "
                      f"log); {errors.pending():,} failure(s) stay pending for the next run[/red]", soft_wrap=True)


def run_cli(flow: Flow, args: Any) -> int:
    """``flownb run`` (args: state_dir, until_idle, port, host). Returns the exit code."""
    console = _console()
    check_env(flow)  # an unset secret stops the run before anything is polled or consumed
    retry_wait = float(os.environ.get("FLOWNB_RETRY_WAIT", "60"))
    max_queue = int(os.environ.get("FLOWNB_MAX_QUEUE", "10000"))
    hang = step_timeout()  # a bad value stops the run before anything is polled
    runtime = LocalRuntime(flow, Path(args.state_dir), retry_wait=retry_wait, max_queue=max_queue,
                           reset_state=bool(getattr(args, "reset_state", False)),
                           fuse=not getattr(args, "no_fuse", False))
    # what start-up made (modules, config models, compiled rules) lives as long as the process: out
    # of the cyclic collector's sight, so that its full collections do not walk it again and again
    gc.freeze()
    restore = exit_on_failure()
    if hang is not None:  # a poll or batch that hangs ends the run with 70, nothing of it committed
        hang_watchdog(lambda: runtime.busy, hang)
    stop = threading.Event()
    try:
        from ..upgrade import check_no_orphans
        check_no_orphans(flow, runtime.store, str(args.spec))  # exit 2: a renamed step's messages wait
        with _signals(runtime, stop):
            webhook = runtime.trigger.kind == "webhook"
            if args.until_idle:
                try:
                    emitted = _poll(runtime)
                    with _progress(runtime, console) as progress:
                        summary = runtime.drain(progress)
                        # polling stops when the first queue cannot be made room for (only retries
                        # waiting): once they are drained the rest of the source is read, not left for
                        # a later run with exit 0
                        while emitted and not stop.is_set() and _more_now(runtime):
                            emitted = _poll(runtime)
                            summary = runtime.drain(progress)
                finally:  # the run's failures reach the on_error actions before it exits
                    runtime.notify_errors(force=True)
            elif webhook and getattr(args, "port", None):
                console.print(_banner(flow, args, f"serving POST http://{args.host}:{args.port}/hooks/"
                                                  f"{flow.name}/<token>"), soft_wrap=True, highlight=False)
                summary = _serve(runtime, args)
            else:
                if webhook:
                    console.print("[yellow]webhook trigger without --port: only queued messages are "
                                  "processed; pass --port to receive requests[/yellow]")
                else:
                    from ..._duration import format_duration
                    cron = flow.trigger.config.get("cron")
                    what = (f"'{flow.trigger.name}' ({flow.trigger.component}) on cron '{cron}'" if cron else
                            f"polling '{flow.trigger.name}' ({flow.trigger.component}) every "
                            f"{format_duration(float(getattr(runtime.trigger.component, 'interval', 60.0)))}")
                    console.print(_banner(flow, args, what), soft_wrap=True, highlight=False)
                    console.file.flush()  # a pipe (| tee, a log collector) sees it now, not at exit
                summary = runtime.run(stop_event=stop)
        cursor = runtime.store.get_state(flow.trigger.name)[0] if runtime.trigger.kind == "poll" else None
        print_summary(summary, console, _dlq_command(args), cursor=cursor)
        if runtime.errors is not None:
            _print_on_error(runtime, console)
        if HEALTH.failed.is_set():
            return EXIT_CRASHED
        new_dead = sum(s.dead for s in summary.steps.values())  # dead-lettered by this run
        if args.until_idle and new_dead and not getattr(args, "allow_dead_letters", False):
            console.print(f"[red]{new_dead:,} message(s) were dead-lettered by this run[/red]; exit "
                          f"status 1 (pass --allow-dead-letters to accept them)", soft_wrap=True)
            return 1
        return 0
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, FlownbError)):
            raise
        if not HEALTH.failed.is_set():
            HEALTH.fail("the embedded runtime", exc)
        failure = HEALTH.failures[0]
        if runtime.running_poll:  # the records were never queued: the cursor did not move
            console.print(f"[red]flownb: {failure.where} crashed: {failure.error}[/red]; the cursor did not "
                          f"move (in {args.state_dir}): the poll's records are read again and processed "
                          f"again on the next run")
        else:
            console.print(f"[red]flownb: {failure.where} crashed: {failure.error}[/red]; its batch stays "
                          f"queued in {args.state_dir} and is processed again on the next run")
        return EXIT_CRASHED
    finally:
        runtime.close()
        restore()
