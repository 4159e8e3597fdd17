"""Run-time support of compiled JSONata: undefined, sequences, operators and built-in functions.

JSONata values map to Python as JSON does (object → dict, array → list, null → None); JSONata's
*undefined* is the sentinel :data:`U`. A :class:`Seq` is a JSONata sequence (collapsed to its only
item, or to undefined when empty, as jsonata-js does); :class:`Cons` marks an array built by an array
constructor at the start or end of a path (it is not flattened into the path's sequence).
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import orjson


class _Undefined:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "U"


U: Any = _Undefined()


class Seq(list):
    """A JSONata sequence. ``keep`` (a kept singleton array, ``a[]``) is a class default that an
    instance overrides: no Python ``__init__``, so building a sequence costs what a list does."""

    keep = False


class Cons(list):
    """An array from an array constructor that a path must not flatten."""

    __slots__ = ()


class EvalError(Exception):
    """An evaluation error with a JSONata error code (T2001 …)."""

    def __init__(self, code: str, message: str, position: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.position = position


class NonFinite(EvalError):
    """D1001: a division by zero or an overflow. jsonata-js lets the infinity flow on until it is
    used (``$string(1/0)`` is D3001): :meth:`Expression.raw` asks the fallback engine for that
    more specific error, else reports this one."""


class Fallback(Exception):
    """Raised by the compiled code on a rare case it leaves to the fallback engine."""


def collapse(v: Any) -> Any:
    if type(v) is Seq:
        n = len(v)
        if n == 0:
            return U
        if n == 1 and not v.keep:
            return v[0]
    return v


def clean(v: Any) -> Any:
    """Turn internal list subclasses into plain lists (results handed to users)."""
    t = type(v)
    if t is Seq or t is Cons:
        return [clean(x) for x in v]
    if t is list:
        if any(type(x) in CONTAINERS for x in v):
            return [clean(x) for x in v]
        return v
    if t is dict:
        if any(type(x) in CONTAINERS for x in v.values()):
            return {k: clean(x) for k, x in v.items()}
        return v
    return v


#: the container types an evaluation gives, which clean() turns into plain lists and dicts
CONTAINERS = (Seq, Cons, list, dict)


def is_num(v: Any) -> bool:
    t = type(v)
    return t is int or t is float


def norm(x: Any) -> Any:
    if type(x) is float:
        if x.is_integer():
            if -9007199254740992.0 < x < 9007199254740992.0:
                return int(x)
        elif x - x != 0.0:  # inf or nan
            raise NonFinite("D1001", f"Number out of range: {x}")
    return x


# -- paths -----------------------------------------------------------------------------------------

def lookup(x: Any, k: str) -> Any:
    t = type(x)
    if t is dict:
        return x.get(k, U)
    if isinstance(x, list):
        out = Seq()
        for item in x:
            v = lookup(item, k)
            if v is not U:
                if isinstance(v, list):
                    out.extend(v)
                else:
                    out.append(v)
        return out
    return U


def names(c: Any, ks: tuple) -> Any:
    """A path of plain field names (``customer.address.city``)."""
    v = c
    if type(v) is dict:
        last = len(ks) - 1
        for i, k in enumerate(ks):
            v = v.get(k, U)
            if i == last or v is U:
                return v
            if type(v) is not dict:
                if isinstance(v, list):
                    return _steps_names(v if type(v) is not Cons else [v], ks[i + 1:])
                return U
        return v
    return _steps_names(c if isinstance(c, list) else [c], ks)


def _steps_names(seq: list, ks: tuple) -> Any:
    last = len(ks) - 1
    for i, k in enumerate(ks):
        result = []
        for item in seq:
            r = collapse(lookup(item, k))
            if r is not U:
                result.append(r)
        seq = _flatten(result, i == last)
        if not seq:
            break
    return collapse(seq)


def _flatten(result: list, last: bool) -> list:
    if last and len(result) == 1 and isinstance(result[0], list) and type(result[0]) is not Seq:
        return result[0]
    out = Seq()
    for r in result:
        if isinstance(r, list) and type(r) is not Cons:
            out.extend(r)
        else:
            out.append(r)
    return out


def path(c: Any, r: Any, steps: tuple, keep: bool) -> Any:
    """General path: ``steps`` are (kind, fn_or_name, stages); kind 'n' name, 'e' expression,
    'v' variable (absolute first step), 'c' array constructor as first step."""
    kind0 = steps[0][0]
    seq = c if isinstance(c, list) and kind0 != "v" else [c]
    last = len(steps) - 1
    for i, (kind, fn, stages) in enumerate(steps):
        if i == 0 and kind == "c":
            res = collapse(fn(seq, r))
            seq = res if isinstance(res, list) else ([] if res is U else [res])
            if not isinstance(res, list) or type(res) is Seq:
                seq = Seq(seq)
        else:
            result = []
            for item in seq:
                v = collapse(lookup(item, fn)) if kind == "n" else fn(item, r)
                if stages:
                    for st in stages:
                        v = collapse(st(v, r))
                if v is not U:
                    result.append(v)
            seq = _flatten(result, i == last)
        if not seq:
            break
    if keep:
        if type(seq) is Cons:
            seq = Seq([seq])
        if type(seq) is Seq:
            seq.keep = True
    return collapse(seq)


def finish(seq: list, keep: bool) -> Any:
    """The end of a path: mark a kept singleton array, then collapse the sequence."""
    if keep:
        if type(seq) is Cons:
            seq = Seq([seq])
        if type(seq) is Seq:
            seq.keep = True
    return collapse(seq)


def index(v: Any, i: int) -> Any:
    """A literal numeric predicate ``[i]``."""
    if not isinstance(v, list):
        v = [v] if v is not U else []
    n = len(v)
    if i < 0:
        i += n
    if 0 <= i < n:
        item = v[i]
        return item if isinstance(item, list) else Seq([item])
    return Seq()


def filt(v: Any, pred: Any, r: Any) -> Seq:
    """A predicate ``[expr]``: keep items for which ``pred(item, r)`` is truthy or names the index."""
    if not isinstance(v, list):
        v = [v] if v is not U else []
    out = Seq()
    n = len(v)
    for idx, item in enumerate(v):
        res = pred(item, r)
        if res is True:  # the usual predicate results first
            out.append(item)
            continue
        if res is False or res is U:
            continue
        if is_num(res):
            res = [res]
        if isinstance(res, list) and res and all(is_num(x) for x in res):
            for x in res:
                j = math.floor(x)
                if j < 0:
                    j += n
                if j == idx:
                    out.append(item)
        elif boolean(res):
            out.append(item)
    return out


def keep_array(v: Any) -> Any:
    if type(v) is Seq:
        v.keep = True
    return v


# -- constructors ----------------------------------------------------------------------------------

def array(values: tuple, nested: tuple, cons: bool) -> list:
    out = Cons() if cons else []
    for v, is_arr in zip(values, nested, strict=True):
        if v is U:
            continue
        if is_arr or not isinstance(v, list):
            out.append(v)
        else:
            out.extend(v)
    return out


def group(c: Any, r: Any, pairs: tuple) -> dict:
    """The general object constructor: groups the input sequence by each key expression."""
    items = c if isinstance(c, list) else [c]
    if not items:
        items = [U]
    groups: dict[str, list] = {}
    for item in items:
        for idx, (kfn, _vfn) in enumerate(pairs):
            key = kfn(item, r)
            if key is U:
                continue
            if type(key) is not str:
                raise EvalError("T1003", f"Key in object structure must evaluate to a string; got: "
                                         f"{string(key)}")
            if key in groups:
                if groups[key][0] != idx:
                    raise EvalError("D1009", f'Multiple key definitions evaluate to same key: "{key}"')
                groups[key][1].append(item)
            else:
                groups[key] = [idx, [item]]
    out = {}
    for key, (idx, data) in groups.items():
        ctx = data[0] if len(data) == 1 else Seq(data)
        v = pairs[idx][1](ctx, r)
        if v is not U:
            out[key] = v
    return out


# -- operators ----------------------------------------------------------------------------------

_OPNAME = {"+": "+", "-": "-", "*": "*", "/": "/", "%": "%"}


def _arith_check(a: Any, b: Any, op: str) -> None:
    if a is not U and not is_num(a):
        raise EvalError("T2001", f"The left side of the {op} operator must evaluate to a number")
    if b is not U and not is_num(b):
        raise EvalError("T2002", f"The right side of the {op} operator must evaluate to a number")


def add(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if (ta is int or ta is float) and (tb is int or tb is float):
        return norm(a + b)
    _arith_check(a, b, "+")
    return U


def sub(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if (ta is int or ta is float) and (tb is int or tb is float):
        return norm(a - b)
    _arith_check(a, b, "-")
    return U


def mul(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if (ta is int or ta is float) and (tb is int or tb is float):
        return norm(a * b)
    _arith_check(a, b, "*")
    return U


def div(a: Any, b: Any) -> Any:
    if is_num(a) and is_num(b):
        if b == 0:
            raise NonFinite("D1001", "Number out of range: division by zero")
        return norm(a / b)
    _arith_check(a, b, "/")
    return U


def mod(a: Any, b: Any) -> Any:
    if is_num(a) and is_num(b):
        if b == 0:
            raise NonFinite("D1001", "Number out of range: modulo by zero")
        return norm(math.fmod(a, b)) if type(a) is float or type(b) is float or a < 0 or b < 0 else a % b
    _arith_check(a, b, "%")
    return U


def neg(a: Any) -> Any:
    if is_num(a):
        return -a
    if a is U:
        return U
    raise EvalError("D1002", "Cannot negate a non-numeric value")


def _cmp_check(a: Any, b: Any, op: str) -> bool:
    ta, tb = type(a), type(b)
    ok_a = a is U or ta is str or ta is int or ta is float
    ok_b = b is U or tb is str or tb is int or tb is float
    if not (ok_a and ok_b):
        raise EvalError("T2010", f'The expressions either side of operator "{op}" must evaluate to '
                                 f"numeric or string values")
    if a is U or b is U:
        return False
    if (ta is str) != (tb is str):
        raise EvalError("T2009", f'The expressions on either side of operator "{op}" must be of the '
                                 f"same data type")
    return True


def lt(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if (ta is int or ta is float) and (tb is int or tb is float) or (ta is str and tb is str):
        return a < b
    return a < b if _cmp_check(a, b, "<") else U


def le(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if (ta is int or ta is float) and (tb is int or tb is float) or (ta is str and tb is str):
        return a <= b
    return a <= b if _cmp_check(a, b, "<=") else U


def gt(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if (ta is int or ta is float) and (tb is int or tb is float) or (ta is str and tb is str):
        return a > b
    return a > b if _cmp_check(a, b, ">") else U


def ge(a: Any, b: Any) -> Any:
    ta, tb = type(a), type(b)
    if (ta is int or ta is float) and (tb is int or tb is float) or (ta is str and tb is str):
        return a >= b
    return a >= b if _cmp_check(a, b, ">=") else U


def deep_eq(a: Any, b: Any) -> bool:
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool or a is None or b is None:
        return ta is tb and a == b
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(deep_eq(x, y) for x, y in zip(a, b, strict=True))
    if ta is dict:
        return tb is dict and a.keys() == b.keys() and all(deep_eq(a[k], b[k]) for k in a)
    if (ta is str) != (tb is str):
        return False
    return a == b


def eq(a: Any, b: Any) -> bool:
    if a is U or b is U:
        return False
    if type(a) is str and type(b) is str:
        return a == b
    return deep_eq(a, b)


def ne(a: Any, b: Any) -> bool:
    if a is U or b is U:
        return False
    return not deep_eq(a, b)


def in_(a: Any, b: Any) -> bool:
    if a is U or b is U:
        return False
    if not isinstance(b, list):
        b = [b]
    for x in b:
        if isinstance(x, (dict, list)) or isinstance(a, (dict, list)):
            if x is a:
                return True
        elif deep_eq(a, x):
            return True
    return False


def concat(a: Any, b: Any) -> str:
    if type(a) is str and type(b) is str:
        return a + b
    return ("" if a is U else string(a)) + ("" if b is U else string(b))


def boolean(v: Any) -> bool:
    t = type(v)
    if t is bool:
        return v
    if t is str:
        return v != ""
    if t is int or t is float:
        return v != 0
    if v is None or v is U:
        return False
    if t is dict:
        return len(v) > 0
    if isinstance(v, list):
        if len(v) == 1:
            return boolean(v[0])
        return any(boolean(x) for x in v)
    return False


# -- number and string formatting ------------------------------------------------------------------

def num_str(x: Any) -> str:
    """A number as JavaScript (and so JSONata) writes it; a non-integer is first rounded to 15
    significant digits (jsonata-js's ``toPrecision(15)``), a safe integer is written exactly."""
    if type(x) is int:
        if abs(x) < 2**53:
            return str(x)
        raise Fallback  # beyond a double's exact integers: the fallback engine's doubles
    if x - x != 0:  # inf or nan inside a structure (jsonata-js: D1001 from JSON.stringify)
        raise NonFinite("D1001", f"Number out of range: {x}")
    if not x.is_integer():  # JSON.stringify's replacer in jsonata-js: integers are not rounded
        x = float(f"{x:.15g}")
    if x == 0:
        return "0"
    sign, digits, exp = Decimal(repr(x)).normalize().as_tuple()
    assert isinstance(exp, int)  # 'n', 'N' or 'F' only for nan and inf, excluded above
    ds = "".join(map(str, digits))
    k, n = len(ds), exp + len(ds)  # k digits, decimal point after n digits
    s = "-" if sign else ""
    if k <= n <= 21:
        return s + ds + "0" * (n - k)
    if 0 < n <= 21:
        return s + ds[:n] + "." + ds[n:]
    if -6 < n <= 0:
        return s + "0." + "0" * (-n) + ds
    e = n - 1
    mant = ds[0] + ("." + ds[1:] if k > 1 else "")
    return f"{s}{mant}e{'+' if e >= 0 else '-'}{abs(e)}"


def string(v: Any) -> Any:
    t = type(v)
    if t is str:
        return v
    if v is U:
        return U
    if t is int or t is float:
        if t is float and not math.isfinite(v):
            raise EvalError("D3001", "Attempting to invoke string function on Infinity or NaN")
        return num_str(v)
    if t is bool:
        return "true" if v else "false"
    if v is None:
        return "null"
    return _dumps(v)


def _dumps(v: Any) -> str:
    t = type(v)
    if t is str:
        return orjson.dumps(v).decode()
    if t is int or t is float:
        return num_str(v)
    if t is bool:
        return "true" if v else "false"
    if v is None:
        return "null"
    if t is dict:
        return "{" + ",".join(f"{orjson.dumps(k).decode()}:{_dumps(x)}" for k, x in v.items()
                              if x is not U) + "}"
    if isinstance(v, list):
        return "[" + ",".join("null" if x is U else _dumps(x) for x in v) + "]"
    return ""
