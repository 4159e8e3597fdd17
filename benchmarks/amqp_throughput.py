"""Throughput of flownb's RabbitMQ workers against a hand-written pika pipeline, in one invocation.

Both pipelines run the same 3 steps (decode the message, add a field, encode, hand on), one process
per step, with the same durability: persistent messages, a durable hand-off (flownb: batched
publisher confirms, input acked after its outputs are confirmed; pika: batched transactions that
publish the outputs and ack the inputs in one commit). ``N`` messages are preloaded into the first
queue; the clock runs from "the first step is consuming" to "the last step has handled all N".

Also measured: a step that waits 20 ms per message with 1 vs 4 replicas, a worker's RSS after the
run, and a worker's start-up time (process start → consuming), with the first queue type.

Quorum against classic queues in the same run: the rounds are interleaved over the queue types
(``--queue-types``, default ``classic,quorum``: each round runs pika and flownb on classic queues, then
on quorum queues; both pipelines use the queue type flownb declares, ``FLOWNB_QUEUE_TYPE``, set per
run), and the summary gives each type's best and the ratio quorum / classic.

    .venv/bin/python benchmarks/amqp_throughput.py [--messages 20000] [--queue-types classic,quorum]
        [--cluster]

``--cluster``: on the three-node cluster of ``scripts/rabbitmq-cluster`` (started and stopped by the
benchmark; the machine's broker on 5672 is not used): every process connects to node 1, and a quorum
queue is replicated on all three nodes (a message is written on a majority before it is confirmed),
which is what quorum queues cost in production; a classic queue lives on node 1 alone.

Last line: one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import orjson
import pika

import flownb
from flownb.message import Message
from flownb.runtime.amqp import names
from flownb.runtime.amqp.topology import connect, declare_flow, queue_type

ROOT = "amqp://guest:guest@127.0.0.1:5672/"
CTL = ["rabbitmqctl", "-q"]  # --cluster: node 1 of scripts/rabbitmq-cluster
CLUSTER = Path(__file__).resolve().parents[1] / "scripts" / "rabbitmq-cluster"
STEP_SRC = "def f(body, ctx):\n    body['{field}'] = body['n'] * 2\n    return body\n"
SLOW_SRC = "import time\ndef f(body, ctx):\n    time.sleep(0.02)\n    return body\n"


def ctl(*args: str) -> None:
    subprocess.run([*CTL, *args], check=True, capture_output=True, timeout=60)


def new_vhost() -> tuple[str, str]:
    vhost = f"flownb-bench-{uuid.uuid4().hex[:8]}"
    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost, ROOT + vhost


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def preload(url: str, exchange: str, key: str, n: int) -> None:
    conn = connect(url)
    ch = conn.channel()
    ch.tx_select()
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    for i in range(n):
        ch.basic_publish(exchange, key, Message(body={"n": i}, flow="bench", step="src").to_json(), props)
        if i % 1000 == 999:
            ch.tx_commit()
    ch.tx_commit()
    conn.close()


# -- flownb workers ---------------------------------------------------------------------------

class Worker:
    """A ``flownb worker`` subprocess with a metrics port."""

    def __init__(self, spec: Path, step: str, url: str, prefetch: int | None = None):
        self.port = free_port()
        cmd = [sys.executable, "-m", "flownb.cli", "worker", str(spec), "--step", step, "--broker", url,
               "--metrics-port", str(self.port)]
        if prefetch:
            cmd += ["--prefetch", str(prefetch)]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.ready = threading.Event()
        self.ready_at = 0.0
        self.step = step
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            if "consuming" in line and not self.ready.is_set():
                self.ready_at = time.perf_counter()
                self.ready.set()

    def wait_ready(self) -> float:
        if not self.ready.wait(30):
            raise RuntimeError(f"worker for {self.step} did not start")
        return self.ready_at - self.started

    def processed(self) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read().decode()
        m = re.search(rf'flownb_messages_processed_total{{flow="[^"]+",step="{self.step}"}} ([0-9.e+]+)', text)
        return float(m.group(1)) if m else 0.0

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def wait_processed(workers: list[Worker], n: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while sum(w.processed() for w in workers) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting for the workers")
        time.sleep(0.02)


def bench_flownb(n: int, tmp: Path) -> dict:
    vhost, url = new_vhost()
    try:
        flow = flownb.Flow(name="bench", trigger=flownb.step(
            "src", "python.poll", source="def p(state, ctx):\n    return []\n", function="p"),
            steps=[flownb.step(s, "python", source=STEP_SRC.format(field=s), function="f") for s in "abc"])
        spec = flow.save(tmp / "bench.yaml")
        conn = connect(url)
        declare_flow(conn.channel(), flow)
        conn.close()
        preload(url, names.exchange("bench"), "a", n)
        later = [Worker(spec, s, url) for s in ("c", "b")]
        startup = [w.wait_ready() for w in later]
        first = Worker(spec, "a", url)
        startup.append(first.wait_ready())
        t0 = time.perf_counter()
        wait_processed([later[0]], n)
        elapsed = time.perf_counter() - t0
        rss = max(w.rss_mb() for w in [first, *later])
        codes = [w.stop() for w in [first, *later]]
        return {"rate": n / elapsed, "seconds": elapsed, "rss_mb": rss, "startup_s": min(startup),
                "startup_max_s": max(startup), "exit_codes": codes}
    finally:
        ctl("delete_vhost", vhost)


# -- the hand-written pika pipeline ------------------------------------------------------------

def pika_stage(url: str, src: str, dst: str | None, field: str, n: int, prefetch: int, ready) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    ch.tx_select()
    props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    buf: list = []
    ch.basic_consume(src, lambda c, m, p, b: buf.append((m.delivery_tag, b)))
    ready.set()
    done = 0
    while done < n:
        conn.process_data_events(time_limit=0.005 if not buf else 0)
        if not buf:
            continue
        batch, buf[:] = list(buf), []
        for _tag, body in batch:
            msg = orjson.loads(body)
            msg["body"][field] = msg["body"]["n"] * 2
            if dst:
                ch.basic_publish("", dst, orjson.dumps(msg), props)
        ch.basic_ack(batch[-1][0], multiple=True)
        ch.tx_commit()
        done += len(batch)
    conn.close()


def bench_pika(n: int, prefetch: int = 200) -> dict:
    vhost, url = new_vhost()
    try:
        conn = connect(url)
        ch = conn.channel()
        queues = [f"pika.{s}" for s in "abc"]
        args = {"x-queue-type": "quorum"} if queue_type() == "quorum" else None
        for q in queues:
            ch.queue_declare(q, durable=True, arguments=args)
        conn.close()
        preload(url, "", queues[0], n)
        ctx = mp.get_context("fork")
        procs = []
        for i in (2, 1, 0):
            ev = ctx.Event()
            dst = queues[i + 1] if i < 2 else None
            p = ctx.Process(target=pika_stage, args=(url, queues[i], dst, "abc"[i], n, prefetch, ev))
            p.start()
            ev.wait(30)
            procs.append(p)
        t0 = time.perf_counter()
        procs[0].join()  # the last stage exits after handling n messages
        elapsed = time.perf_counter() - t0
        for p in procs[1:]:
            p.join(30)
        return {"rate": n / elapsed, "seconds": elapsed}
    finally:
        ctl("delete_vhost", vhost)


# -- replicas of a slow step ---------------------------------------------------------------------

def bench_replicas(replicas: int, n: int, tmp: Path) -> float:
    vhost, url = new_vhost()
    try:
        flow = flownb.Flow(name="slow", trigger=flownb.step(
            "src", "python.poll", source="def p(state, ctx):\n    return []\n", function="p"),
            steps=[flownb.step("wait", "python", source=SLOW_SRC, function="f", prefetch=2)])
        spec = flow.save(tmp / "slow.yaml")
        workers = [Worker(spec, "wait", url) for _ in range(replicas)]
        for w in workers:
            w.wait_ready()
        t0 = time.perf_counter()
        preload(url, names.exchange("slow"), "wait", n)
        wait_processed(workers, n)
        elapsed = time.perf_counter() - t0
        for w in workers:
            w.stop()
        return n / elapsed
    finally:
        ctl("delete_vhost", vhost)


def best(runs: list[dict]) -> dict:
    return max(runs, key=lambda x: x["rate"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--slow-messages", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each is kept "
                    "(the machine is shared: this damps noise equally for both)")
    ap.add_argument("--queue-types", default="classic,quorum",
                    help="comma-separated queue types measured in the same run (interleaved)")
    ap.add_argument("--cluster", action="store_true", help="run on a three-node cluster started with "
                    "scripts/rabbitmq-cluster (127.0.0.1:5673-5675) instead of the broker on 5672")
    args = ap.parse_args()
    if args.cluster:
        global ROOT, CTL
        env = {**os.environ, "RABBITMQ_CLUSTER_OWNER": str(os.getpid())}  # gone with this process
        subprocess.run([str(CLUSTER), "start"], check=True, env=env, timeout=600)
        ROOT, CTL = "amqp://guest:guest@127.0.0.1:5673/", [str(CLUSTER), "ctl", "1", "-q"]
    try:
        run(args)
    finally:
        if args.cluster:
            subprocess.run([str(CLUSTER), "stop"], timeout=300)


def run(args: argparse.Namespace) -> None:
    types = [t.strip() for t in args.queue_types.split(",") if t.strip()]
    pks: dict[str, list[dict]] = {t: [] for t in types}
    fbs: dict[str, list[dict]] = {t: [] for t in types}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for r in range(args.rounds):
            for t in types:
                os.environ["FLOWNB_QUEUE_TYPE"] = t  # the workers (subprocesses) and pika's queues follow it
                assert queue_type() == t
                pks[t].append(bench_pika(args.messages))
                print(f"[{r + 1}] {t:7} pika, batched tx, 3 steps:  {pks[t][-1]['rate']:8.0f} msg/s "
                      f"({pks[t][-1]['seconds']:.2f}s)")
                fbs[t].append(bench_flownb(args.messages, tmp))
                print(f"[{r + 1}] {t:7} flownb workers, 3 steps:    {fbs[t][-1]['rate']:8.0f} msg/s "
                      f"({fbs[t][-1]['seconds']:.2f}s)")
        figures: dict = {"messages": args.messages, "rounds": args.rounds, "queue_types": types,
                         "broker": "3-node cluster (scripts/rabbitmq-cluster)" if args.cluster else "one node"}
        for t in types:
            pk, fb = best(pks[t]), best(fbs[t])
            ratio = fb["rate"] / pk["rate"]
            print(f"{t}: best pika {pk['rate']:.0f} msg/s, flownb {fb['rate']:.0f} msg/s, flownb / pika "
                  f"{ratio:.2f}x  (target >= 0.9x and >= 3500 msg/s)")
            figures[t] = {"pika_rounds_msg_s": [round(x["rate"], 1) for x in pks[t]],
                          "flownb_rounds_msg_s": [round(x["rate"], 1) for x in fbs[t]],
                          "pika_batched_tx_msg_s": round(pk["rate"], 1), "flownb_msg_s": round(fb["rate"], 1),
                          "ratio_flownb_over_pika": round(ratio, 3),
                          "worker_exit_codes": [c for x in fbs[t] for c in x["exit_codes"]]}
        if "classic" in figures and "quorum" in figures:
            q_over_c = figures["quorum"]["flownb_msg_s"] / figures["classic"]["flownb_msg_s"]
            p_over_c = figures["quorum"]["pika_batched_tx_msg_s"] / figures["classic"]["pika_batched_tx_msg_s"]
            print(f"quorum / classic:               flownb {q_over_c:.2f}x, pika {p_over_c:.2f}x")
            figures["quorum_over_classic_flownb"] = round(q_over_c, 3)
            figures["quorum_over_classic_pika"] = round(p_over_c, 3)
        first = types[0]
        os.environ["FLOWNB_QUEUE_TYPE"] = first
        fb_all = fbs[first]
        startup, startup_max = min(x["startup_s"] for x in fb_all), max(x["startup_max_s"] for x in fb_all)
        rss = max(x["rss_mb"] for x in fb_all)
        one = bench_replicas(1, args.slow_messages, tmp)
        four = bench_replicas(4, args.slow_messages, tmp)
        print(f"20 ms step, 1 replica ({first}):    {one:8.1f} msg/s")
        print(f"20 ms step, 4 replicas ({first}):   {four:8.1f} msg/s  speed-up {four / one:.2f}x (target >= 3.5x)")
        print(f"worker RSS after the run:       {rss:8.1f} MB (target <= 80 MB)")
        print(f"worker start-up to consuming:   {startup:8.2f} s (max of 3: {startup_max:.2f} s; target <= 1 s)")
        figures.update({"replicas_1_msg_s": round(one, 2), "replicas_4_msg_s": round(four, 2),
                        "replica_speedup": round(four / one, 2), "worker_rss_mb": round(rss, 1),
                        "worker_startup_s": round(startup, 3), "worker_startup_max_s": round(startup_max, 3)})
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
