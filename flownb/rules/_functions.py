"""The built-in JSONata functions the compiler supports (others go to the fallback engine).

``FUNCTIONS`` maps a name to ``(python function, min args, max args, context-default)``; with
context-default, a call with fewer than ``min`` arguments gets the context as first argument
(``name.$uppercase()``), as the ``-`` in the JSONata signature says.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from ._runtime import EvalError, Fallback, Seq, U, boolean, collapse, is_num, lookup, norm, string

_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([Ee][-+]?[0-9]+)?")  # jsonata-js $number: leading zeros
_RADIX = re.compile(r"0[xXoObB]")
_WS = re.compile(r"[ \t\n\r]+")


def _arg_error(fn: str, i: int, what: str) -> EvalError:
    return EvalError("T0410", f"Argument {i} of function ${fn} does not match function signature "
                              f"(must be {what})")


def _str(v: Any, fn: str, i: int = 1) -> Any:
    if type(v) is str or v is U:
        return v
    raise _arg_error(fn, i, "a string")


def _nums(v: Any, fn: str) -> list | None:
    if v is U:
        return None
    if not isinstance(v, list):
        v = [v]
    for x in v:
        t = type(x)
        if t is not float and t is not int:
            raise EvalError("T0412", f"Argument 1 of function ${fn} must be an array of numbers")
    return v


def f_string(v: Any, prettify: Any = U) -> Any:
    if prettify is not U:
        raise Fallback
    if callable(v):
        return ""
    return string(v)


def f_lowercase(v: Any) -> Any:
    if type(v) is str:
        return v.lower()
    return _str(v, "lowercase")  # undefined, or the signature error


def f_uppercase(v: Any) -> Any:
    if type(v) is str:
        return v.upper()
    return _str(v, "uppercase")  # undefined, or the signature error


def f_trim(v: Any) -> Any:
    v = _str(v, "trim")
    if v is U:
        return U
    v = _WS.sub(" ", v)
    return v.strip(" ")


def f_length(v: Any) -> Any:
    v = _str(v, "length")
    return v if v is U else len(v)


def _int_arg(v: Any, fn: str, i: int) -> int:
    if not is_num(v):
        raise _arg_error(fn, i, "a number")
    return math.trunc(v)


def f_substring(v: Any, start: Any = U, length: Any = U) -> Any:
    # the signature is checked before undefined in gives undefined out (as jsonata-js does)
    if start is not U and not is_num(start):
        raise _arg_error("substring", 2, "a number")
    if length is not U and not is_num(length):
        raise _arg_error("substring", 3, "a number")
    v = _str(v, "substring")
    if v is U:
        return U
    if start is U:
        raise Fallback
    start = _int_arg(start, "substring", 2)
    n = len(v)
    if n + start < 0:
        start = 0
    if length is not U:
        length = _int_arg(length, "substring", 3)
        if length <= 0:
            return ""
        end = start + length if start >= 0 else n + start + length
        return v[start:end] if end != 0 or start >= 0 else ""
    return v[start:]


def f_contains(v: Any, pattern: Any) -> Any:
    if type(pattern) is not str:
        raise Fallback  # a regex, or a signature error: jsonatapy
    v = _str(v, "contains")
    if v is U:
        return U
    return pattern in v


def f_split(v: Any, sep: Any, limit: Any = U) -> Any:
    if type(sep) is not str:
        raise Fallback  # a regex, or a signature error: jsonatapy
    if limit is not U:
        if not is_num(limit):
            raise _arg_error("split", 3, "a number")
        if limit < 0:
            raise EvalError("D3020", "Third argument of split function must evaluate to a positive number")
    v = _str(v, "split")
    if v is U:
        return U
    parts = list(v) if sep == "" else v.split(sep)
    if limit is not U:
        parts = parts[:math.floor(limit)]
    return parts


def f_join(v: Any, sep: Any = "") -> Any:
    if sep is U:
        sep = ""
    elif type(sep) is not str:
        raise _arg_error("join", 2, "a string")
    if v is U:
        return U
    if not isinstance(v, list):
        v = [v]
    for x in v:
        if type(x) is not str:
            raise EvalError("T0412", "Argument 1 of function $join must be an array of strings")
    return sep.join(v)


def f_number(v: Any) -> Any:
    t = type(v)
    if t is int or t is float or v is U:
        return v
    if t is bool:
        return 1 if v else 0
    if t is str:
        s = v
        if _NUMBER.fullmatch(s):
            x = float(s)
            if math.isfinite(x):
                return norm(x)
        if _RADIX.search(s) or s.strip() != s:
            raise Fallback  # hexadecimal, octal, binary: jsonatapy
    else:
        raise _arg_error("number", 1, "a number, string or boolean")
    raise EvalError("D3030", f"Unable to cast value to a number: {string(v)}")


def f_boolean(v: Any) -> Any:
    return U if v is U else boolean(v)


def f_not(v: Any) -> Any:
    return U if v is U else not boolean(v)


def f_exists(v: Any) -> bool:
    return v is not U


def f_count(v: Any) -> int:
    if v is U:
        return 0
    return len(v) if isinstance(v, list) else 1


def f_sum(v: Any) -> Any:
    xs = _nums(v, "sum")
    if xs is None:
        return U
    x = sum(xs)
    return x if type(x) is int else norm(x)


def f_max(v: Any) -> Any:
    xs = _nums(v, "max")
    return U if not xs else max(xs)


def f_min(v: Any) -> Any:
    xs = _nums(v, "min")
    return U if not xs else min(xs)


def f_average(v: Any) -> Any:
    xs = _nums(v, "average")
    return U if not xs else norm(sum(xs) / len(xs))


def _shift(x: float, places: int) -> float:
    m, _, e = repr(float(x)).partition("e")
    return float(f"{m}e{int(e or 0) + places}")


def f_round(v: Any, precision: Any = U) -> Any:
    if precision is not U and not is_num(precision):
        raise _arg_error("round", 2, "a number")
    if v is U:
        return U
    if not is_num(v):
        raise _arg_error("round", 1, "a number")
    p = 0 if precision is U else _int_arg(precision, "round", 2)
    x = _shift(v, p) if p else float(v)
    result = math.floor(x + 0.5)
    if abs(result - x) == 0.5 and abs(result % 2) == 1:
        result -= 1
    out = _shift(result, -p) if p else result
    return norm(float(out)) if out != 0 else 0


def f_abs(v: Any) -> Any:
    if v is U:
        return U
    if not is_num(v):
        raise _arg_error("abs", 1, "a number")
    return abs(v)


def f_floor(v: Any) -> Any:
    if v is U:
        return U
    if not is_num(v):
        raise _arg_error("floor", 1, "a number")
    return math.floor(v)


def f_ceil(v: Any) -> Any:
    if v is U:
        return U
    if not is_num(v):
        raise _arg_error("ceil", 1, "a number")
    return math.ceil(v)


def f_keys(v: Any) -> Any:
    out = Seq()
    if isinstance(v, list):
        seen: dict = {}
        for item in v:
            if type(item) is dict:
                for k in item:
                    seen[k] = True
        out.extend(seen)
    elif type(v) is dict:
        out.extend(v)
    return collapse(out)


def f_lookup(v: Any, key: Any) -> Any:
    if type(key) is not str:
        raise _arg_error("lookup", 2, "a string")
    return collapse(lookup(v, key))


_URI_COMPONENT_SAFE = "-_.!~*'()"  # JavaScript's encodeURIComponent leaves these (and letters, digits)
_URI_SAFE = _URI_COMPONENT_SAFE + ";,/?:@&=+$#"  # encodeURI also leaves the reserved characters


def _encode_uri(v: Any, fn: str, safe: str) -> Any:
    v = _str(v, fn)
    if v is U:
        return U
    try:
        return quote(v, safe=safe, encoding="utf-8", errors="strict")
    except UnicodeEncodeError:  # a lone surrogate: JavaScript's URIError
        raise EvalError("D3140", f"Malformed URL passed to ${fn}(): {v!r}") from None


def f_encodeUrl(v: Any) -> Any:
    return _encode_uri(v, "encodeUrl", _URI_SAFE)


def f_encodeUrlComponent(v: Any) -> Any:
    return _encode_uri(v, "encodeUrlComponent", _URI_COMPONENT_SAFE)


def f_now(picture: Any = U, tz: Any = U) -> str:
    if picture is not U or tz is not U:
        raise Fallback
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def with_ctx(fn: Any, c: Any, *args: Any) -> Any:
    """Call ``fn`` with the context as first argument; a context of the wrong type is T0411."""
    try:
        return fn(c, *args)
    except EvalError as exc:
        if exc.code == "T0410" and "Argument 1 " in str(exc):
            raise EvalError("T0411", f"Context value is not a compatible type with argument 1 of "
                                     f"function ${fn.__name__[2:]}") from None
        raise


FUNCTIONS: dict[str, tuple] = {
    "string": (f_string, 1, 2, True), "lowercase": (f_lowercase, 1, 1, True),
    "uppercase": (f_uppercase, 1, 1, True), "trim": (f_trim, 1, 1, True),
    "length": (f_length, 1, 1, True), "substring": (f_substring, 2, 3, True),
    "contains": (f_contains, 2, 2, True), "split": (f_split, 2, 3, True),
    "join": (f_join, 1, 2, False), "number": (f_number, 1, 1, True),
    "boolean": (f_boolean, 1, 1, True), "not": (f_not, 1, 1, True), "exists": (f_exists, 1, 1, False),
    "count": (f_count, 1, 1, False), "sum": (f_sum, 1, 1, False), "max": (f_max, 1, 1, False),
    "min": (f_min, 1, 1, False), "average": (f_average, 1, 1, False), "round": (f_round, 1, 2, True),
    "abs": (f_abs, 1, 1, True), "floor": (f_floor, 1, 1, True), "ceil": (f_ceil, 1, 1, True),
    "keys": (f_keys, 1, 1, True), "lookup": (f_lookup, 2, 2, True), "now": (f_now, 0, 2, False),
    "encodeUrl": (f_encodeUrl, 1, 1, True), "encodeUrlComponent": (f_encodeUrlComponent, 1, 1, True),
}
