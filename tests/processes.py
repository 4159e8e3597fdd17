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


#: where :func:`free_port` picks from: below the kernel's ephemeral range (ip_local_port_range,
#: 32768–60999 by default) and clear of the fixed ports this machine's services and a test cluster
#: use (5672–5675 AMQP, 15672 management, 25672–25675 Erlang distribution)
_PORT_RANGES = (range(10_000, 15_000), range(16_000, 25_000))


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a child process to bind later. Picked outside the kernel's
    ephemeral range: a port from ``bind(("", 0))`` or an outgoing connection comes from that range,
    so in the time between this pick and the child's bind no other socket of the machine (the other
    test groups run in parallel) is given it — the parity suite once saw a worker's metrics port
    taken in that gap when it was picked with ``bind(0)``."""
    import random
    import socket
    rng = random.Random()
    for _ in range(500):
        port = rng.choice(rng.choice(_PORT_RANGES))
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:  # in use
                continue
            return port
    raise RuntimeError(f"no free port found in {_PORT_RANGES} on {host}")
