"""Mapping preview throughput: flownb's compiled JSONata against hand-written Python (same process).

    .venv/bin/python benchmarks/mapping_preview.py [--rows 100000]

Figures (rows or records per second, best of 3 runs):
- preview_rows_s: ``Mapping.preview(df)`` on a nested DataFrame (dotted columns + a list-of-objects
  column) — DataFrame → records, three fields per row, result DataFrame with ``_error``;
- handwritten_rows_s: the same three fields as hand-written Python over the same records;
- ratio: preview_rows_s / handwritten_rows_s;
- apply_records_s: ``Mapping.apply`` per record (what the mapping component does per message);
- jsonatapy_records_s (20,000-record slice) and jsonata_python_records_s (2,000-record slice): the
  same fields evaluated by those engines, one compiled expression per field.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import pandas as pd

from flownb.rules import Mapping, to_records

FIELDS = {"email": "$lowercase(customer.email)", "name": 'customer.first & " " & customer.last',
          "total": "$sum(items.(qty * price))", "big": "$count(items[qty > 2]) > 0"}


def make_frame(n: int) -> pd.DataFrame:
    rnd = random.Random(42)
    return pd.DataFrame({
        "id": range(n),
        "customer.email": [f"User{i}@Example.COM" for i in range(n)],
        "customer.first": [rnd.choice(["Ann", "Bob", "Cy", "Dee"]) for _ in range(n)],
        "customer.last": [rnd.choice(["Lee", "Ng", "Ray"]) for _ in range(n)],
        "items": [[{"sku": f"s{j}", "qty": rnd.randint(1, 4), "price": round(rnd.uniform(1, 50), 2)}
                   for j in range(rnd.randint(0, 3))] for _ in range(n)],
    })


def handwritten(rec: dict) -> dict:
    c = rec.get("customer") or {}
    out = {}
    if "email" in c:
        out["email"] = c["email"].lower()
    out["name"] = f"{c.get('first', '')} {c.get('last', '')}"
    items = rec.get("items") or []
    if items:
        out["total"] = sum(i["qty"] * i["price"] for i in items)
    out["big"] = any(i["qty"] > 2 for i in items)
    return out


def best(fn, n: int, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    n = ap.parse_args().rows
    df = make_frame(n)
    m = Mapping(fields=FIELDS)
    assert set(m.engines.values()) == {"compiled"}, m.engines
    records = to_records(df)

    def preview() -> None:
        out = m.preview(df)
        assert len(out) == n and out["_error"].isna().all()

    def hand() -> None:
        out = [handwritten(r) for r in records]
        assert len(out) == n

    def apply() -> None:
        out = [m.apply(r) for r in records]
        assert len(out) == n

    preview_rs = best(preview, n)
    hand_rs = best(hand, n)
    apply_rs = best(apply, n)
    # the compiled engine and the hand-written code agree
    assert [m.apply(r) for r in records[:1000]] == [handwritten(r) for r in records[:1000]] or all(
        abs(m.apply(r).get("total", 0) - handwritten(r).get("total", 0)) < 1e-9 for r in records[:1000])

    import jsonatapy
    ja = [(k, jsonatapy.compile(v)) for k, v in FIELDS.items()]
    slice_a = records[:20_000]
    ja_rs = best(lambda: [{k: e.evaluate(r) for k, e in ja} for r in slice_a], len(slice_a), 1)

    import jsonata
    jp = [(k, jsonata.Jsonata(v)) for k, v in FIELDS.items()]
    slice_p = records[:2_000]
    jp_rs = best(lambda: [{k: e.evaluate(r) for k, e in jp} for r in slice_p], len(slice_p), 1)

    result = {
        "rows": n, "fields": len(FIELDS),
        "preview_rows_s": round(preview_rs), "handwritten_rows_s": round(hand_rs),
        "ratio": round(preview_rs / hand_rs, 3),
        "apply_records_s": round(apply_rs), "apply_vs_handwritten": round(apply_rs / hand_rs, 3),
        "jsonatapy_records_s": round(ja_rs), "jsonata_python_records_s": round(jp_rs),
        "apply_vs_jsonatapy": round(apply_rs / ja_rs, 2),
    }
    print(f"preview {preview_rs:,.0f} rows/s | hand-written {hand_rs:,.0f} | apply {apply_rs:,.0f} "
          f"| jsonatapy {ja_rs:,.0f} | jsonata-python {jp_rs:,.0f} records/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
