"""``flow.sample()`` (flownb.cursor.sample): the source read by the trigger's own poll, no cursor
moved, as a DataFrame whose records are exactly the bodies production emits — and the raw pandas
readers' differences kept visible (docs/notebook.md, "Sample data as the trigger reads it")."""

from __future__ import annotations

import json
import uuid
import warnings

import pandas as pd
import pytest
import sqlalchemy as sa

import flownb
from flownb.errors import SpecError
from flownb.records import NULL, to_records
from flownb.rules import Mapping

CSV = """id,email,qty,price,coupon,zip,updated_at
1,Ann@X.org,2,9.5,,01234,2024-05-01T10:00:00
2,bob@x.org,1,4.25,SPRING,10115,2024-05-01T10:05:00
3,carol@x.org,10,1,,75001,2024-05-01T10:05:00
4,dan@x.org,3,,WINTER,02110,2024-05-02T08:00:00
"""
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SHAPE = {"id": "id", "total": "qty * price", "has_coupon": "$exists(coupon)", "zip": "$string(zip)"}


def _csv_flow(tmp_path, **config) -> flownb.Flow:
    path = tmp_path / "orders.csv"
    path.write_text(CSV)
    return flownb.Flow(name="orders", trigger=flownb.step("orders", "csv.poll", path=str(path), cursor="updated_at",
                                                          key="id", **config),
                       steps=[flownb.step("shape", "mapping", fields=SHAPE),
                              flownb.step("all", "filter", condition="true")])


def _emitted(flow: flownb.Flow) -> list[dict]:
    """What the trigger emits on the embedded runtime (flow.test polls it once), by id: the bodies
    its first step receives, read back through a filter that keeps everything."""
    probe = flow.model_copy(update={"steps": [flownb.step("all", "filter", condition="true")]}).revalidated()
    return sorted(probe.test().last, key=lambda b: b["id"])


def test_a_csv_sample_is_what_csv_poll_emits_null_kept_and_strings_kept(tmp_path):
    flow = _csv_flow(tmp_path)
    df = flow.sample()
    records = to_records(df)
    assert records == _emitted(flow)
    assert records[0]["coupon"] is None and "coupon" in records[0]  # an empty cell: null, not missing
    assert records[0]["zip"] == "01234" and records[3]["price"] is None and type(records[2]["price"]) is int
    assert df.loc[0, "coupon"] is NULL and df.attrs["flownb.sample"] == "csv.poll"
    assert df.attrs["next_state"]["cursor"] == "2024-05-02T08:00:00"
    assert flow.sample(frame=False) == records
    # the mapping previews on it as the flow runs: the null price fails (T2002), the null coupon exists
    view = flow.preview("shape", df)
    result = flow.test(df)
    shaped = to_records(view[view["_error"].isna()].drop(columns="_error"))
    assert shaped == sorted(result.outputs["shape"], key=lambda b: b["id"])
    assert [d.message.body["id"] for d in result.dead_letters] == [4] and "T2002" in view.loc[3, "_error"]
    assert view["has_coupon"].tolist() == [True, True, True, True] and view.loc[0, "zip"] == "01234"


def test_raw_read_csv_differs_and_the_preview_of_the_first_step_warns_about_it(tmp_path):
    flow = _csv_flow(tmp_path)
    raw = pd.read_csv(tmp_path / "orders.csv")
    got = to_records(raw)
    assert "coupon" not in got[0] and got[0]["zip"] == 1234 and got[2]["price"] == 1.0  # NaN: missing
    assert got != to_records(flow.sample())
    with pytest.warns(UserWarning, match=r"did not come from flow.sample\(\): pandas.read_csv reads an empty "
                                         r"cell as NaN.*'01234'.*flow.sample\(n\)"):
        flow.preview("shape", raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shaped = flow.preview("shape", flow.sample())  # the trigger's own reading: no warning
        Mapping(fields={"keep": "true"}).preview(shaped, flow=flow, step="all")  # a later step: none either
        Mapping(fields=SHAPE).preview(raw)  # no flow given: no trigger to compare with


def test_sample_moves_no_cursor_and_reads_pages_up_to_n(tmp_path):
    flow = _csv_flow(tmp_path, batch_size=2)
    state = {"cursor": "2024-05-01T10:00:00", "seen": [1]}
    assert [r["id"] for r in flow.sample(3, frame=False)] == [1, 2, 3]  # two polls of two rows
    assert [r["id"] for r in flow.sample(state=state, frame=False)] == [2, 3, 4]  # after that cursor
    assert state == {"cursor": "2024-05-01T10:00:00", "seen": [1]}  # the given state is not changed
    state_dir = tmp_path / "state"
    with flownb.LocalRuntime(flow, state_dir) as rt:  # nothing was saved by the samples: all 4 rows are new
        assert rt.poll_once() == 2


def test_a_sql_sample_is_what_sql_poll_emits_not_what_read_sql_table_reads(tmp_path):
    db = tmp_path / "shop.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY, email TEXT, amount NUMERIC(10, 2), "
                             "note TEXT, shipped_on DATE, updated_at DATETIME)")
        conn.exec_driver_sql("INSERT INTO orders VALUES (1, 'a@x', 2.5, NULL, '2024-05-02', '2024-05-01 10:00:00')")
        conn.exec_driver_sql("INSERT INTO orders VALUES (2, 'b@x', 10, 'gift', NULL, '2024-05-01 10:05:00')")
    flow = flownb.Flow(name="shop", trigger=flownb.step("orders", "sql.poll", url=f"sqlite:///{db}", table="orders",
                                                        cursor="updated_at", key="id"),
                       steps=[flownb.step("all", "filter", condition="true")])
    records = to_records(flow.sample())
    assert records == _emitted(flow) == [
        {"id": 1, "email": "a@x", "amount": 2.5, "note": None, "shipped_on": "2024-05-02",
         "updated_at": "2024-05-01T10:00:00"},
        {"id": 2, "email": "b@x", "amount": 10, "note": "gift", "shipped_on": None,
         "updated_at": "2024-05-01T10:05:00"}]
    raw = to_records(pd.read_sql_table("orders", f"sqlite:///{db}"))
    assert raw[0]["updated_at"] == "2024-05-01T10:00:00.000" and raw[0]["shipped_on"] == "2024-05-02T00:00:00.000"
    assert "note" not in raw[0] and "shipped_on" not in raw[1]
    engine.dispose()


@pytest.mark.integration
@pytest.mark.postgres
def test_a_postgres_sample_is_what_sql_poll_emits():
    table = "sample_" + uuid.uuid4().hex[:10]
    engine = sa.create_engine(PG_URL)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE {table} (id int PRIMARY KEY, amount numeric(10,2), doc jsonb, "
                                 f"day date, at timestamptz, note text)")
            conn.exec_driver_sql(f"INSERT INTO {table} VALUES (1, 2.50, '{{\"a\": null, \"b\": [1]}}', "
                                 f"'2024-05-02', '2024-05-01 10:00:00+02', NULL), "
                                 f"(2, 3, NULL, NULL, '2024-05-01 11:00:00+00', 'x')")
        flow = flownb.Flow(name="pg", trigger=flownb.step("src", "sql.poll", url=PG_URL, table=table, cursor="at",
                                                          key="id"),
                           steps=[flownb.step("all", "filter", condition="true")])
        records = to_records(flow.sample())
        assert records == _emitted(flow)
        assert records[0]["note"] is None and records[1]["doc"] is None and records[0]["doc"] == {"a": None, "b": [1]}
        assert json.dumps(records)  # plain JSON
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        engine.dispose()


def test_a_record_over_max_message_bytes_is_left_out_with_a_warning(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("id,text\n1,short\n2," + "x" * 5000 + "\n")
    flow = flownb.Flow(name="big", max_message_bytes="4KiB",
                       trigger=flownb.step("src", "csv.poll", path=str(path), cursor="id"),
                       steps=[flownb.step("all", "filter", condition="true")])
    with pytest.warns(UserWarning, match=r"1 record\(s\) .* left out .*a record of this trigger is 5.1 KiB"):
        assert flow.sample(frame=False) == [{"id": 1, "text": "short"}]


def test_what_cannot_be_sampled_says_what_to_do(tmp_path):
    hook = flownb.Flow(name="h", trigger=flownb.step("in", "webhook", token_env="T"),
                       steps=[flownb.step("all", "filter", condition="true")])
    with pytest.raises(SpecError, match=r"does not poll.*pass your own sample"):
        hook.sample()
    mqtt = flownb.Flow(name="m", trigger=flownb.step("in", "mqtt.subscribe", topic="a/b"),
                       steps=[flownb.step("all", "filter", condition="true")])
    with pytest.raises(SpecError, match=r"does more than read when it polls.*flow.preview_poll"):
        mqtt.sample()
    with pytest.raises(SpecError, match="a whole number ≥ 1"):
        _csv_flow(tmp_path).sample(0)
    dotted = tmp_path / "dotted.csv"
    dotted.write_text("id,customer.email\n1,a@x\n")
    flow = flownb.Flow(name="d", trigger=flownb.step("src", "csv.poll", path=str(dotted), cursor="id"),
                       steps=[flownb.step("all", "filter", condition="true")])
    with pytest.raises(SpecError, match=r"'customer.email'.*frame=False"):
        flow.sample()
    assert flow.sample(frame=False) == [{"id": 1, "customer.email": "a@x"}]


def test_flow_test_of_a_raw_read_csv_sample_warns_and_of_flow_sample_does_not(tmp_path):
    flow = _csv_flow(tmp_path)
    with pytest.warns(UserWarning, match=r"did not come from flow.sample\(\)"):
        flow.test(pd.read_csv(tmp_path / "orders.csv"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flow.test(flow.sample())
        flow.test(flow.sample(frame=False))  # records: what the trigger emits, nothing to warn about
