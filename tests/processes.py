"""Child processes in tests: stopping one the way an operator does, never leaving it behind."""

from __future__ import annotations

import signal
import subprocess


def stop(proc: subprocess.Popen, timeout: float = 60.0, sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` (SIGTERM: a graceful stop) unless the process has ended, wait up to ``timeout``
    seconds, then SIGKILL it if it is still there; its exit code (negative: the signal that ended it)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
