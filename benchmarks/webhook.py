"""Webhook ingestion benchmark: accepted requests/s and latency with durable enqueue, against a plain
starlette endpoint that queues nothing — all in one invocation, each server in its own process.

    .venv/bin/python benchmarks/webhook.py [--duration 10] [--connections 64] [--rate 500]

Servers (uvicorn, uvloop + httptools, one process each):
  plain     starlette endpoint answering 202 {"id": …}; queues nothing (the baseline)
  amqp      flownb webhook → RabbitMQ (persistent, publisher confirms) at amqp://…@127.0.0.1:5672/
  embedded  flownb webhook → the local runtime's SQLite queue (when flownb.runtime.local has it)

Load: wrk (closed loop, max throughput: ``apt-get install wrk``) and an open-loop Python generator at a
fixed rate for p50/p99 (latency measured from the scheduled send time, so a stall is not hidden).
Every response is checked: only 202 counts as accepted. ``server_cpu_us_per_req`` is the server
process's CPU time (user + system, all its threads) during the wrk run divided by the requests: on a
busy shared machine it moves much less than req/s does. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BROKER = os.environ.get("FLOWNB_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
BODY = b'{"order": 1234, "customer": {"email": "A@B.example", "name": "Ann"}, "items": [{"qty": 2, "price": 9.5}]}'
TOKEN_ENV = "FLOWNB_BENCH_TOKEN"


# -- servers (run in child processes) -----------------------------------------------------------

def _flow(name: str, state_dir: str | None = None):
    from flownb.flow import Flow, step
    return Flow(name=name, trigger=step("hook", "webhook", token_env=TOKEN_ENV),
                steps=[step("sink", "log", level="debug")])


def _serve(kind: str, port: int, name: str, state_dir: str) -> None:
    import logging
    logging.basicConfig(level=logging.WARNING)
    if kind == "plain":
        import uuid as _uuid

        import uvicorn
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        async def hook(request):
            await request.body()
            return Response(b'{"id":"%s"}' % _uuid.uuid4().hex.encode(), 202, media_type="application/json")
        app = Starlette(routes=[Route("/hooks/{flow}/{token}", hook, methods=["POST"])])
        uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning",
                    access_log=False)
    elif kind == "amqp":
        from flownb.webhook.server import serve_amqp
        serve_amqp(_flow(name), BROKER, "127.0.0.1", port)
    else:
        from flownb.runtime.local import LocalRuntime
        from flownb.webhook.server import serve_local
        serve_local(LocalRuntime(_flow(name), Path(state_dir)), "127.0.0.1", port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(kind: str, name: str, state_dir: str, env: dict) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port), "--name", name,
                             "--state-dir", state_dir], env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{kind} server did not start")


# -- load ---------------------------------------------------------------------------------------

_WRK_LUA = """wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
"""


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` (all threads) so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, duration: int, connections: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_LUA % BODY.decode())
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", f.name, url],
                         capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    secs = float(re.search(r"requests in ([\d.]+)(s|m)", out).group(1))
    lat = {p: _ms(v) for p, v in re.findall(r"\s(50|99)(?:\.000)?%\s+([\d.]+\w+)", out)}
    return {"accepted_rps": round((total - non2xx) / secs, 1), "requests": total, "rejected": non2xx,
            "socket_errors": errors, "p50_ms": lat.get("50"), "p99_ms": lat.get("99")}


async def _fixed_rate(port: int, path: str, rate: float, duration: float, conns: int = 32) -> dict:
    """Open-loop load: request i is due at start + i/rate on the next free keep-alive connection."""
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
    total = int(rate * duration)
    start = time.perf_counter() + 0.2
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))

    async def one(due: float) -> None:
        reader, writer = await pool.get()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
        await reader.readexactly(length)
        latencies.append((time.perf_counter() - due) * 1000)
        status = int(head[9:12])
        statuses[status] = statuses.get(status, 0) + 1
        pool.put_nowait((reader, writer))

    tasks = []
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait()[1].close()
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)  # noqa: E731
    return {"rate": rate, "sent": total, "statuses": statuses, "p50_ms": pick(0.50), "p99_ms": pick(0.99)}


def _cleanup_amqp(name: str) -> None:
    from flownb.runtime.amqp.topology import connect
    conn = connect(BROKER)
    ch = conn.channel()
    for q in ("sink", "sink.retry.ready", "sink.dlq", "hook.state"):
        ch.queue_delete(f"flownb.{name}.{q}")
    for lvl in (1000, 2000, 4000, 8000):
        ch.queue_delete(f"flownb.{name}.sink.retry.{lvl}")
    ch.exchange_delete(f"flownb.{name}")
    conn.close()


def _embedded_available() -> bool:
    try:
        from flownb.runtime.local import LocalRuntime  # noqa: F401
        return True
    except ImportError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--serve", choices=["plain", "amqp", "embedded"])
    ap.add_argument("--port", type=int)
    ap.add_argument("--name", default="")
    ap.add_argument("--state-dir", default="")
    args = ap.parse_args()
    if args.serve:
        return _serve(args.serve, args.port, args.name, args.state_dir)
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install -y wrk")
    token = secrets.token_urlsafe(24)
    env = {**os.environ, TOKEN_ENV: token}
    kinds = ["plain", "amqp"] + (["embedded"] if _embedded_available() else [])
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            name = f"bench-{uuid.uuid4().hex[:8]}"
            proc, port = _start(kind, name, os.path.join(tmp, kind), env)
            path = f"/hooks/{name}/{token}"
            try:
                fixed = asyncio.run(_fixed_rate(port, path, args.rate, min(args.duration, 5)))
                cpu = _cpu_seconds(proc.pid)
                peak = run_wrk(f"http://127.0.0.1:{port}{path}", args.duration, args.connections)
                used = _cpu_seconds(proc.pid) - cpu
                peak["server_cpu_us_per_req"] = round(used / max(1, peak["requests"]) * 1e6, 1)
                results[kind] = {"max": peak, f"at_{int(args.rate)}_rps": fixed}
            finally:
                proc.terminate()
                proc.wait(30)
                if kind == "amqp":
                    _cleanup_amqp(name)
            print(f"{kind:9s} max {peak['accepted_rps']:>8.1f} accepted req/s (p50 {peak['p50_ms']} ms, "
                  f"p99 {peak['p99_ms']} ms, rejected {peak['rejected']}, server CPU "
                  f"{peak['server_cpu_us_per_req']} µs/req) | at {args.rate:g} req/s: "
                  f"p50 {fixed['p50_ms']} ms, p99 {fixed['p99_ms']} ms, statuses {fixed['statuses']}")
    base = results["plain"]["max"]["accepted_rps"]
    summary = {"benchmark": "webhook", "duration_s": args.duration, "connections": args.connections,
               "cpus": os.cpu_count(), "results": results,
               "ratio_vs_plain": {k: round(v["max"]["accepted_rps"] / base, 3) for k, v in results.items()},
               "targets": {"durable_rps": 3300, "p99_ms_at_500": 50}}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
