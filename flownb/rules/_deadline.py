"""Evaluation deadlines: stop an evaluation that runs too long, in either engine.

- **jsonatapy** holds the GIL for the whole of an evaluation (measured: no other Python thread runs
  meanwhile, signal handlers included); it is given ``timeout=`` (the time left, in ms) and stops
  itself with ``D1012``.
- **compiled** code is Python: a watchdog thread raises :class:`_Interrupt` *in* the evaluating
  thread (``PyThreadState_SetAsyncExc``) once the deadline has passed. Nothing is added to the
  generated code or its loops; starting and ending a guarded region costs two lock operations.

:func:`run` is the only entry point: it runs ``fn(*args)`` with a deadline and raises
:class:`Expired` (an ``Exception``) if the deadline passed. The protocol makes sure the interrupt
never escapes the guarded region: the watchdog fires at most once per region, only while the region
is running and under a lock that the region takes before it ends; a region that ends with an
interrupt pending clears it (``SetAsyncExc(thread, NULL)``) before leaving, and an interrupt
delivered anywhere between the call and the end of the region is caught by the region.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["run", "each", "remaining", "pause", "resume", "Expired", "MAX_TIMEOUT"]

#: the longest deadline (seconds) handed to jsonatapy (its timeout is an int of milliseconds)
MAX_TIMEOUT = 7 * 24 * 3600.0

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)
_set_async_exc.restype = ctypes.c_int
# the same C function, to clear a pending exception: NULL (None as a void pointer), not Py_None
_clear_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi))
_monotonic = time.monotonic
_get_ident = threading.get_ident


class _Interrupt(BaseException):
    """Raised asynchronously in a thread whose guarded evaluation passed its deadline (a
    BaseException: no ``except Exception`` in the evaluated code swallows it)."""


class Expired(Exception):
    """The deadline of a :func:`run` passed (the interrupt, or jsonatapy's own ``D1012`` given the
    time left); the caller of :func:`run` knows which deadline and reports it."""


_RUNNING, _FIRED, _DONE, _PAUSED = 0, 1, 2, 3


class _Region:
    __slots__ = ("tid", "deadline", "state", "outer")

    def __init__(self, tid: int, deadline: float, outer: _Region | None):
        self.tid = tid
        self.deadline = deadline
        self.state = _RUNNING
        self.outer = outer


_LOCK = threading.Lock()
_WAKE = threading.Condition(_LOCK)
_REGIONS: set = set()  # running regions, every thread
_CURRENT = threading.local()  # .region: this thread's innermost running region
_watchdog: threading.Thread | None = None
_idle = False  # the watchdog waits for a region to start (not polling)
_started = 0  # regions started (the watchdog polls while it changes)
_POLL = 0.25  # seconds between the watchdog's looks while regions run


def _watch() -> None:
    global _idle
    seen = -1
    with _LOCK:
        while True:
            if not _REGIONS:
                if _started == seen:  # nothing started for a poll interval: sleep until one does
                    _idle = True
                    _WAKE.wait()
                    _idle = False
                else:
                    seen = _started
                    _WAKE.wait(_POLL)
                continue
            seen = _started
            now = _monotonic()
            first = min(r.deadline for r in _REGIONS)
            if first > now:
                # a region that starts meanwhile with an earlier deadline is seen within _POLL
                _WAKE.wait(min(first - now, _POLL))
                continue
            postponed = False
            for r in [r for r in _REGIONS if r.deadline <= now]:
                if r.state != _RUNNING:  # paused (jsonatapy keeps its own time) or ending
                    _REGIONS.discard(r)
                elif r.tid == _MAIN and _in_signal_handler():
                    postponed = True  # its handler must run to the end (SIGTERM: stop the runtime)
                else:
                    _REGIONS.discard(r)
                    r.state = _FIRED
                    _set_async_exc(r.tid, _Interrupt)
            if postponed:
                _WAKE.wait(0.005)


def _in_signal_handler() -> bool:
    """Whether the main thread is running a Python signal handler (one installed now for a signal
    that stops or interrupts a process), which an interrupt would cut short."""
    codes = set()
    for sig in _SIGNALS:
        try:
            h = signal.getsignal(sig)
        except (ValueError, OSError):
            continue
        code = getattr(getattr(h, "__func__", h), "__code__", None)
        if code is not None:
            codes.add(code)
    frame = sys._current_frames().get(_MAIN) if _MAIN is not None else None
    while frame is not None and codes:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


_MAIN: int | None = threading.main_thread().ident  # None only before the main thread starts
_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1",
                                              "SIGUSR2") if hasattr(signal, n))


def _start_watchdog() -> None:
    global _watchdog
    with _LOCK:
        if _watchdog is None or not _watchdog.is_alive():
            _watchdog = threading.Thread(target=_watch, name="flownb-rules-deadline", daemon=True)
            _watchdog.start()


def _begin(region: _Region) -> None:
    """Start watching ``region`` (this thread's innermost from now on). Called inside the caller's
    ``try``, with ``region`` made before it: an interrupt that lands here is caught there."""
    global _started
    if _watchdog is None:
        _start_watchdog()
    _CURRENT.region = region
    with _LOCK:
        _REGIONS.add(region)
        _started += 1
        if _idle:
            _WAKE.notify()


def _end(region: _Region) -> bool:
    """End ``region`` (idempotent); True if its interrupt fired (one still pending is cleared)."""
    with _LOCK:
        if region.state == _FIRED:
            _clear_async_exc(region.tid, None)  # not delivered yet: cleared (no-op if it was)
            fired = True
        else:
            region.state = _DONE
            _REGIONS.discard(region)
            fired = False
    _CURRENT.region = region.outer
    return fired


def _after_fork() -> None:  # the child has no watchdog thread, and a lock may be left held
    global _LOCK, _WAKE, _REGIONS, _watchdog, _idle
    _LOCK = threading.Lock()
    _WAKE = threading.Condition(_LOCK)
    _REGIONS = set()
    _watchdog = None
    _idle = False
    _CURRENT.region = None


os.register_at_fork(after_in_child=_after_fork)


def pause() -> _Region | None:
    """Before a call that holds the GIL and keeps its own time (jsonatapy with ``timeout=``): the
    watchdog leaves this thread's region alone until :func:`resume`. Otherwise its interrupt,
    due at the same moment as jsonatapy's own timeout, would be delivered as the call returns —
    into whatever runs first, such as a signal handler (SIGTERM) that has been waiting meanwhile."""
    region = getattr(_CURRENT, "region", None)
    if region is not None:
        with _LOCK:
            if region.state == _RUNNING:
                region.state = _PAUSED
    return region


def resume(region: _Region | None) -> bool:
    """After :func:`pause`: the region runs on. True if its deadline has passed meanwhile (the
    caller raises :class:`Expired`: the watchdog no longer watches a region past its deadline)."""
    if region is None:
        return False
    with _LOCK:
        if region.state == _PAUSED:
            region.state = _RUNNING
    return _monotonic() >= region.deadline


def remaining() -> float | None:
    """Seconds left before this thread's innermost deadline (None: no deadline)."""
    region = getattr(_CURRENT, "region", None)
    return None if region is None else region.deadline - _monotonic()


def run(seconds: float | None, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, interrupted with :class:`Expired` once ``seconds`` have passed (None: no
    deadline of its own; an enclosing one still applies). Regions nest: the innermost deadline that
    passes is the one reported (an outer one passing first is reported by the outer region)."""
    if seconds is None:
        return fn(*args)
    region = _Region(_get_ident(), _monotonic() + min(seconds, MAX_TIMEOUT),
                     getattr(_CURRENT, "region", None))
    try:
        try:
            _begin(region)
            return fn(*args)
        finally:
            fired = _end(region)
    except _Interrupt:
        fired = _end(region)
        if not fired:  # an enclosing region's interrupt
            raise
        raise Expired() from None


def each(seconds: float, fn: Callable[[Any], Any], items: list, expired: Callable[[], Any]) -> list:
    """``[fn(x) for x in items]``, each call within ``seconds`` of its start; a call that raises an
    ``Exception`` gives that exception, one that passes its deadline gives ``expired()`` (called
    at once, while what it reports — such as the field being evaluated — is current).

    One region for the whole list (the per-item cost is a clock read); after an interrupt a new
    region goes on with the next item. An interrupt that lands after its item finished is ignored,
    one that lands before its item's deadline (the deadline was renewed as it fired) evaluates the
    item again: evaluations are pure, so the result is the same."""
    seconds = min(seconds, MAX_TIMEOUT)
    out: list = []
    append = out.append
    n = len(items)
    outer = getattr(_CURRENT, "region", None)
    while len(out) < n:
        i = len(out)
        region = _Region(_get_ident(), _monotonic() + seconds, outer)
        try:
            try:
                _begin(region)
                while i < n:
                    region.deadline = _monotonic() + seconds
                    try:
                        append(fn(items[i]))
                    except Expired:  # jsonatapy's own timeout, given the time left (expression.py)
                        append(expired())
                        break  # the watchdog let this region go (paused past its deadline): a new one
                    except Exception as exc:  # handed back, as the actions' process_batch does
                        append(exc)
                    i = len(out)
            finally:
                fired = _end(region)
        except _Interrupt:
            fired = _end(region)
            if not fired:  # an enclosing region's interrupt
                raise
            if len(out) == i and _monotonic() >= region.deadline:
                append(expired())
    return out
