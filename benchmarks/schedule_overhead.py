"""Cost of a scheduled run (claim + child process + papermill + history + retention) against the
baseline of papermill.execute_notebook called in this process on the same notebook.

    .venv/bin/python benchmarks/schedule_overhead.py [--runs N]

Last line: JSON with the median seconds of each and their ratio (scheduled / in-process).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import papermill

from flownb.schedule import ScheduleStore, add_schedule, run_now

NOTEBOOK = Path(__file__).resolve().parents[1] / "tests" / "schedule" / "data" / "params.ipynb"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = ScheduleStore(Path(tmp) / "state")
        add_schedule(store, NOTEBOOK, cron="0 3 * * *", name="bench", parameters={"n": 2}, keep=2)
        base, sched = [], []
        for i in range(args.runs):  # interleaved, so machine load affects both alike
            t = time.perf_counter()
            papermill.execute_notebook(str(NOTEBOOK), str(Path(tmp) / f"b{i}.ipynb"), parameters={"n": 2},
                                       progress_bar=False, cwd=str(NOTEBOOK.parent))
            base.append(time.perf_counter() - t)
            t = time.perf_counter()
            rec = run_now(store, "bench")
            sched.append(time.perf_counter() - t)
            assert rec.status == "ok", rec
    b, s = statistics.median(base), statistics.median(sched)
    print(f"in-process papermill: median {b:.2f}s; scheduled run: median {s:.2f}s")
    print(json.dumps({"benchmark": "schedule_overhead", "runs": args.runs, "papermill_in_process_s": round(b, 3),
                      "scheduled_run_s": round(s, 3), "ratio": round(s / b, 2)}))


if __name__ == "__main__":
    main()
