"""flownb.records.to_records: sample data → message bodies, one table of cases (docs/records.md)."""

from __future__ import annotations

import datetime as dt
import enum
import subprocess
import sys
import uuid
from decimal import Decimal

import numpy as np
import pandas as pd
import pytest

from flownb.errors import SpecError
from flownb.records import NULL, column_paths, to_frame, to_records

UTC = dt.UTC
PARIS = dt.timezone(dt.timedelta(hours=1))


class Color(enum.Enum):
    RED = "red"


def frame(**cols) -> pd.DataFrame:
    return pd.DataFrame(cols)


# (id, sample, expected records)
CASES = [
    # -- column names
    ("dotted columns nest, in column order",
     pd.DataFrame({"id": [1], "customer.email": ["a@x"], "n": [2], "customer.address.city": ["Oslo"]}),
     [{"id": 1, "customer": {"email": "a@x", "address": {"city": "Oslo"}}, "n": 2}]),
    ("MultiIndex columns are paths",
     pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("price", "min"), ("price", "max")])),
     [{"price": {"min": 1, "max": 2}}]),
    ("a name with an empty segment is one key", frame(**{"a..b": [1], ".c": [2], "d.": [3]}),
     [{"a..b": 1, ".c": 2, "d.": 3}]),
    ("non-string column names are str()", pd.DataFrame([[1, 2]], columns=[0, 1]), [{"0": 1, "1": 2}]),
    # -- missing cells
    ("None/NaN/NaT/NA cells are left out",
     frame(s=["a", None], f=[np.nan, 1.5], t=pd.to_datetime([None, "2024-01-02"]),
           i=pd.array([None, 3], dtype="Int64"), o=[pd.NA, "x"], b=[None, True]),
     [{"s": "a"}, {"f": 1.5, "t": "2024-01-02T00:00:00.000", "i": 3, "o": "x", "b": True}]),
    ("±inf is not a JSON number: left out", frame(f=[np.inf, -np.inf, 1.0], o=[float("inf"), "x", 2]),
     [{}, {"o": "x"}, {"f": 1.0, "o": 2}]),
    ("missing at every depth; an all-missing group is {}",
     frame(**{"a.b.c": [1, None, None], "a.b.d": ["x", "y", None], "f": [0, 1, None]}),
     # an int column with holes is float64 in pandas: 1.0 (Int64 keeps ints)
     [{"a": {"b": {"c": 1.0, "d": "x"}}, "f": 0.0}, {"a": {"b": {"d": "y"}}, "f": 1.0}, {"a": {"b": {}}}]),
    # -- numbers and booleans
    ("numpy scalars become Python values",
     frame(i=np.array([1], dtype=np.int64), u=np.array([2], dtype=np.uint8), f=np.array([0.5]),
           f32=np.array([0.1], dtype=np.float32), b=np.array([True]),
           o=pd.Series([np.int64(7)], dtype=object)),
     [{"i": 1, "u": 2, "f": 0.5, "f32": 0.1, "b": True, "o": 7}]),
    ("nullable Int64/Float64/boolean", frame(i=pd.array([1, None], dtype="Int64"),
                                             f=pd.array([None, 2.5], dtype="Float64"),
                                             b=pd.array([True, None], dtype="boolean")),
     [{"i": 1, "b": True}, {"f": 2.5}]),
    ("Decimal: int when integral, else float", frame(d=[Decimal("2.00"), Decimal("1.25"), Decimal("NaN")]),
     [{"d": 2}, {"d": 1.25}, {}]),
    # -- timestamps, dates, durations
    ("tz-aware → UTC with Z; naive → no zone; milliseconds",
     frame(aware=pd.to_datetime(["2024-01-02T04:04:05.123456"]).tz_localize("Europe/Paris"),
           utc=pd.to_datetime(["2024-01-02T03:04:05"], utc=True),
           naive=pd.to_datetime(["2024-01-02T03:04:05.9999"]),
           seconds=pd.Series(pd.to_datetime(["2024-01-02T03:04:05"])).astype("datetime64[s]")),
     [{"aware": "2024-01-02T03:04:05.123Z", "utc": "2024-01-02T03:04:05.000Z",
       "naive": "2024-01-02T03:04:05.999", "seconds": "2024-01-02T03:04:05.000"}]),
    ("a tz-aware column in seconds past 2262 (no ns overflow)",
     frame(t=pd.Series(pd.to_datetime(["2500-01-02T03:04:05", None]).astype("datetime64[s]"))
           .dt.tz_localize("Asia/Tokyo")),
     [{"t": "2500-01-01T18:04:05.000Z"}, {}]),
    ("Python datetimes, dates and times in object columns",
     frame(o=[dt.datetime(2024, 1, 2, 4, 4, 5, tzinfo=PARIS), dt.datetime(2024, 1, 2, 3, 4, 5),
              dt.date(2024, 1, 2), dt.time(3, 4, 5), pd.Timestamp("2024-01-02T03:04:05Z"),
              np.datetime64("2024-01-02T03:04:05.5")]),
     [{"o": "2024-01-02T03:04:05.000Z"}, {"o": "2024-01-02T03:04:05.000"}, {"o": "2024-01-02"},
      {"o": "03:04:05.000"}, {"o": "2024-01-02T03:04:05.000Z"}, {"o": "2024-01-02T03:04:05.500"}]),
    ("durations are seconds", frame(td=pd.to_timedelta(["1s", None, "1m30.5s"]),
                                    o=[dt.timedelta(minutes=1), np.timedelta64(2, "s"), None]),
     [{"td": 1.0, "o": 60.0}, {"o": 2.0}, {"td": 90.5}]),
    # -- categoricals
    ("categoricals are their values", frame(c=pd.Categorical(["b", None, "a"]),
                                            n=pd.Categorical([1, 2, 1]),
                                            t=pd.Categorical(pd.to_datetime(["2024-01-02", None, None]))),
     [{"c": "b", "n": 1, "t": "2024-01-02T00:00:00.000"}, {"n": 2}, {"c": "a", "n": 1}]),
    # -- nested cells
    ("nested cells stay JSON; missing inside → null",
     frame(items=[[{"qty": np.int64(2), "price": np.nan, "at": pd.Timestamp("2024-01-02", tz="UTC")}],
                  {"k": (1, 2), "n": None, 3: pd.NaT, "arr": np.array([1.5, np.nan])}, []]),
     [{"items": [{"qty": 2, "price": None, "at": "2024-01-02T00:00:00.000Z"}]},
      {"items": {"k": [1, 2], "n": None, "3": None, "arr": [1.5, None]}}, {"items": []}]),
    # -- other scalars
    ("bytes → base64, UUID/Period → str, Enum → value",
     frame(by=[b"hi", bytearray(b"\x00")], u=[uuid.UUID(int=1), None],
           p=pd.Series(pd.period_range("2024-01", periods=2, freq="M")), e=[Color.RED, None]),
     [{"by": "aGk=", "u": "00000000-0000-0000-0000-000000000001", "p": "2024-01", "e": "red"},
      {"by": "AA==", "p": "2024-02"}]),
    # -- shapes and order
    ("row order and values kept; the index is not part of the record",
     pd.DataFrame({"v": [3, 1, 2]}, index=["z", "a", "m"]), [{"v": 3}, {"v": 1}, {"v": 2}]),
    ("an empty frame", pd.DataFrame({"a": []}), []),
    ("rows without columns", pd.DataFrame(index=[0, 1]), [{}, {}]),
    # -- dict records
    ("dicts: as they are; top-level None is null, NaN & co left out, nothing unflattened",
     [{"customer.email": "a", "n": None, "x": float("nan"), "t": pd.NaT, "na": pd.NA,
       "i": np.int64(1), "ts": pd.Timestamp("2024-01-02T03:04:05+01:00"), "l": [np.nan, None]}, {}],
     [{"customer.email": "a", "n": None, "i": 1, "ts": "2024-01-02T02:04:05.000Z", "l": [None, None]}, {}]),
    ("one dict is one record", {"a": 1}, [{"a": 1}]),
    ("a generator of dicts", ({"i": i} for i in range(3)), [{"i": 0}, {"i": 1}, {"i": 2}]),
]


@pytest.mark.parametrize("sample, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_conversion(sample, expected):
    got = to_records(sample)
    assert got == expected
    assert _types(got) == _types(expected)  # 1 is not 1.0, True is not 1


def _types(v):
    if isinstance(v, dict):
        return {k: _types(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_types(x) for x in v]
    return type(v)


# (id, sample, SpecError text)
ERRORS = [
    ("a column and a dotted column below it", pd.DataFrame({"customer": [1], "customer.email": ["a"]}),
     "columns 'customer' and 'customer.email' collide"),
    ("the same, dotted column first", pd.DataFrame({"a.b.c": [1], "a.b": [2]}),
     "columns 'a.b' and 'a.b.c' collide"),
    ("duplicate names", pd.DataFrame([[1, 2]], columns=["x", "x"]), "two columns named 'x'"),
    ("a set in a cell", pd.DataFrame({"s": ["a", {1}]}, index=["r0", "r1"]),
     r"column 's', row 1 \(index 'r1'\): a set has no order.*map\(sorted\)"),
    ("an unknown object", pd.DataFrame({"o": [object()]}), r"'object' values have no JSON form.*astype\(str\)"),
    ("complex numbers", pd.DataFrame({"c": [1j]}), "complex numbers"),
    ("an int beyond 64 bits", [{"n": 2 ** 70}], "row 0, key 'n': the integer .* 64 bits"),
    ("a path", "orders.csv", r"load a file first, e.g. pd.read_csv"),
    ("a number", 42, "the sample is of type int"),
    ("a row that is not a dict", [{"a": 1}, "oops"], "sample row 1 is a str"),
    ("a Series", pd.Series([1, 2]), "pandas Series"),
]


@pytest.mark.parametrize("sample, match", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_errors_say_what_to_do(sample, match):
    with pytest.raises(SpecError, match=match):
        to_records(sample)


def test_limit_takes_the_first_rows():
    df = pd.DataFrame({"v": range(5)})
    assert to_records(df, limit=2) == [{"v": 0}, {"v": 1}]
    assert to_records(iter([{"v": 1}, {"v": 2}]), limit=1) == [{"v": 1}]
    assert to_records({"v": 1}, limit=0) == []


def test_plain_dicts_are_used_as_they_are():
    rows = [{"a": 1, "b": "x", "c": None, "d": 1.5}, {"a": float("nan")}]
    got = to_records(rows)
    assert got[0] is rows[0] and got[1] == {}


def test_column_paths():
    df = pd.DataFrame({"id": [1], "customer.email": ["a"], ("m", "x"): [2]})
    assert column_paths(df) == [("id",), ("customer", "email"), ("m", "x")]


def test_dataframe_and_its_dicts_agree_where_json_is_the_same():
    """``df.to_dict("records")`` gives NaN for holes; both forms make the same records."""
    df = pd.DataFrame({"a": [1.5, np.nan], "t": pd.to_datetime(["2024-01-02", None], utc=True)})
    assert to_records(df) == to_records(df.to_dict("records")) == [
        {"a": 1.5, "t": "2024-01-02T00:00:00.000Z"}, {}]


def test_no_pandas_or_numpy_import_for_dicts():
    code = ("import sys, flownb.records as r; assert r.to_records([{'a': 1, 'b': float('nan')}]) == [{'a': 1}]; "
            "assert 'pandas' not in sys.modules and 'numpy' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- NULL: JSON null in a DataFrame cell; to_frame: records → a DataFrame that converts back exactly

def test_a_null_cell_is_json_null_while_none_and_nan_stay_missing():
    df = pd.DataFrame({
        "s": pd.Series(["a", NULL, None], dtype=object),
        "n": pd.Series([1, NULL, np.nan], dtype=object),
        "c.d": pd.Series([NULL, None, pd.Timestamp("2024-01-02")], dtype=object),
        "items": pd.Series([[NULL, 1], None, {"k": NULL}], dtype=object),
    })
    assert to_records(df) == [
        {"s": "a", "n": 1, "c": {"d": None}, "items": [None, 1]},
        {"s": None, "n": None, "c": {}},
        {"c": {"d": "2024-01-02T00:00:00.000"}, "items": {"k": None}},
    ]
    assert to_records([{"a": NULL, "b": [NULL], "c": float("nan")}]) == [{"a": None, "b": [None]}]


def test_null_is_one_value_shown_as_null_that_pickles_and_copies_as_itself():
    import copy
    import pickle
    assert repr(NULL) == str(NULL) == "null" and not NULL
    assert pickle.loads(pickle.dumps(NULL)) is NULL and copy.deepcopy([NULL])[0] is NULL
    assert type(NULL)() is NULL
    assert "null" in pd.DataFrame({"a": [NULL]}).to_string()


BODIES = [  # what csv.poll / sql.poll send: strings kept, ints as ints, null as null
    {"id": 1, "zip": "01234", "price": 9.5, "coupon": None, "at": "2024-05-01T10:00:00", "ok": True,
     "tags": ["a", None], "meta": {"n": None}},
    {"id": 2, "zip": 10115, "price": 1, "coupon": "X", "at": "2024-05-01", "ok": False},
    {"id": 3, "zip": None, "price": None, "coupon": None, "at": None, "ok": True, "extra": 2 ** 63},
]


def test_to_frame_converts_back_to_exactly_the_same_records():
    df = to_frame(BODIES)
    assert list(df.columns) == ["id", "zip", "price", "coupon", "at", "ok", "tags", "meta", "extra"]
    assert str(df["id"].dtype) == "int64" and str(df["ok"].dtype) == "bool"
    assert df["price"].dtype == object and df.loc[1, "price"] == 1 and type(df.loc[1, "price"]) is int
    assert df.loc[0, "coupon"] is NULL and df.loc[0, "extra"] is None  # null vs. a key the record lacks
    back = to_records(df)
    assert back == BODIES
    for got, want in zip(back, BODIES, strict=True):  # the types too: 1 stays an int, '01234' a string
        assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in want.items()}
    assert to_records(to_frame([])) == [] and to_frame([{"a": 0.5}])["a"].dtype == np.float64


def test_to_frame_refuses_a_key_that_a_column_name_would_turn_into_a_path():
    with pytest.raises(SpecError, match=r"'customer.email'.*path customer → email.*frame=False"):
        to_frame([{"customer.email": "a"}])
    with pytest.raises(SpecError, match="record 1 is a list"):
        to_frame([{"a": 1}, [1]])
    assert to_records(to_frame([{"a..b": 1}])) == [{"a..b": 1}]  # an empty segment is one key anyway
