"""Compile a parsed JSONata tree to Python source, then to a function with ``compile()``.

The generated module defines ``_main(c, r)`` (``c`` the context, ``r`` the root ``$$``) and one
helper function per path step, predicate and object constructor. Constructs outside the supported
subset raise :class:`Unsupported`, and the caller uses the fallback engine instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _functions, _runtime
from ._parser import Node

__all__ = ["Unsupported", "compile_tree"]


class Unsupported(Exception):
    """The expression uses a construct the compiler leaves to the fallback engine."""


_BINOPS = {"+": "R.add", "-": "R.sub", "*": "R.mul", "/": "R.div", "%": "R.mod", "<": "R.lt",
           "<=": "R.le", ">": "R.gt", ">=": "R.ge", "=": "R.eq", "!=": "R.ne", "&": "R.concat",
           "in": "R.in_"}


_HOIST = 10  # JSONata levels per generated def: CPython's parser allows 200 nested parentheses
_CHAIN = 8  # a longer chain of + - * / % & is generated as statements (no nesting at all)
_INLINE_NAMES = 8  # a longer a.b.c… path is read by R.names, not inline


class _Gen:
    def __init__(self) -> None:
        self.defs: list[str] = []
        self.consts: dict[str, Any] = {}
        self.n = 0
        self.depth = 0  # nesting of expr() calls: every _HOIST levels the code moves to a def
        self.functions: set[str] = set()  # built-in functions called (a binding may shadow them)

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"_{prefix}{self.n}"

    def const(self, value: Any) -> str:
        key = self.name("k")
        self.consts[key] = value
        return key

    def fn(self, body: str, prefix: str = "s") -> str:
        """Hoist ``lambda c, r: body`` into a module-level def; return its name."""
        name = self.name(prefix)
        self.defs.append(f"def {name}(c, r):\n    return {body}\n")
        return name

    # -- expressions ------------------------------------------------------------------------------
    def expr(self, e: Node) -> str:
        # `((x))` is x: unwrapped in a loop, so thousands of nested parentheses cost no recursion
        while (e.type == "block" and len(e.expressions) == 1 and not e.get("predicate")
               and not e.get("keepArray") and e.get("group") is None):
            e = e.expressions[0]
        if e.get("group") is not None:
            raise Unsupported("group-by")
        self.depth += 1
        try:
            code = self._expr(e)
            preds = e.get("predicate")
            if preds:
                code = self.predicates(code, preds)
            if e.get("keepArray") and e.type != "path":
                code = f"R.keep_array({code})"
        finally:
            self.depth -= 1
        if self.depth % _HOIST == _HOIST - 1:  # keep the generated Python shallow
            code = f"{self.fn(code, 'h')}(c, r)"
        return code

    def predicates(self, code: str, preds: list) -> str:
        for i, p in enumerate(preds):
            if i and i % _HOIST == 0:
                code = f"{self.fn(code, 'h')}(c, r)"
            if p.type == "number" and type(p.value) is int:
                code = f"R.collapse(R.index({code}, {p.value}))"
            else:
                code = f"R.collapse(R.filt({code}, {self.fn(self.expr(p), 'p')}, r))"
        return code

    def _expr(self, e: Node) -> str:  # noqa: C901
        t = e.type
        if t in ("string", "number", "value"):
            return repr(e.value)
        if t == "path":
            return self.path(e)
        if t == "variable":
            if e.value == "":
                return "c"
            if e.value == "$":
                return "r"
            raise Unsupported(f"variable ${e.value}")
        if t == "binary":
            return self.binary(e)
        if t == "unary":
            if e.value == "-":
                return f"R.neg({self.expr(e.expression)})"
            if e.value == "[":
                return self.array(e)
            if e.value == "{":
                return self.object(e.lhs)
        if t == "condition":
            other = self.expr(e.other) if e.other is not None else "U"
            return f"({self.expr(e.then)} if R.boolean({self.expr(e.condition)}) else {other})"
        if t == "block":
            if not e.expressions:
                return "U"
            if len(e.expressions) == 1:
                return self.expr(e.expressions[0])
            return "(" + ", ".join(self.expr(x) for x in e.expressions) + ")[-1]"
        if t == "function":
            return self.call(e)
        raise Unsupported(t)

    def binary(self, e: Node) -> str:
        op = e.value
        if op in ("and", "or"):  # `a and b and c …` as one flat Python `and`
            first, spine = _spine(e, (op,))
            terms = [first] + [n.rhs for n in spine]
            return "(" + f" {op} ".join(f"R.boolean({self.expr(t)})" for t in terms) + ")"
        if op in _CHAINED:
            first, spine = _spine(e, _CHAINED)
            if len(spine) > _CHAIN:
                return self.chain(first, spine)
        if op in _COMPARE:
            inline = self.compare_literal(op, e.lhs, e.rhs)
            if inline:
                return inline
        if op in _BINOPS:
            return f"{_BINOPS[op]}({self.expr(e.lhs)}, {self.expr(e.rhs)})"
        raise Unsupported(f"operator {op}")

    def chain(self, first: Node, spine: list) -> str:
        """``a + b - c & d …`` (left-associative) as one def of statements: no nesting, no
        recursion, however long the chain."""
        name = self.name("h")
        lines = [f"def {name}(c, r):", f"    x = {self.expr(first)}"]
        for n in spine:
            lines.append(f"    x = {_BINOPS[n.value]}(x, {self.expr(n.rhs)})")
        lines.append("    return x")
        self.defs.append("\n".join(lines) + "\n")
        return f"{name}(c, r)"

    def compare_literal(self, op: str, lhs: Node, rhs: Node) -> str | None:
        """``x > 2``, ``x = "a"``: when ``x`` is a number (a string), the Python comparison, else
        the runtime operator (errors, undefined, deep equality)."""
        lit_right = _literal(rhs)
        if not lit_right and not _literal(lhs):
            return None
        lit, other = (rhs, lhs) if lit_right else (lhs, rhs)
        w = self.name("w")
        first = f"type({w} := {self.expr(other)})"
        if type(lit.value) is str:
            if op not in ("=", "!="):
                return None  # string ordering stays with the runtime (its checks)
            check = f"{first} is str"
        else:
            check = f"({first} is int or type({w}) is float)"
        a, b = (w, repr(lit.value)) if lit_right else (repr(lit.value), w)
        pyop = {"=": "==", "!=": "!="}.get(op, op)
        return f"({a} {pyop} {b} if {check} else {_BINOPS[op]}({a}, {b}))"

    def array(self, e: Node) -> str:
        items = e.expressions
        for x in items:
            if x.type == "binary" and x.value == "..":
                raise Unsupported("range")
        values = "".join(self.expr(x) + ", " for x in items)
        nested = tuple(x.type == "unary" and x.value == "[" for x in items)
        return f"R.array(({values}), {nested!r}, {bool(e.get('consarray'))})"

    def object(self, pairs: list) -> str:
        keys = [k.value if k.type == "string" else None for k, _ in pairs]
        if None in keys or len(set(keys)) != len(keys):
            spec = ", ".join(f"({self.fn(self.expr(k), 'k')}, {self.fn(self.expr(v), 'v')})"
                             for k, v in pairs)
            return f"R.group(c, r, ({spec},))" if pairs else "R.group(c, r, ())"
        name = self.name("o")
        lines = [f"def {name}(c, r):", "    if isinstance(c, list):",
                 f"        return R.group(c, r, {name}.pairs)", "    o = {}"]
        pair_fns = []
        for key, (_k, v) in zip(keys, pairs, strict=True):
            code = self.expr(v)
            lines.append(f"    v = {code}")
            lines.append(f"    if v is not U: o[{key!r}] = v")
            pair_fns.append(f"({self.fn(repr(key), 'k')}, {self.fn(code, 'v')})")
        lines.append("    return o")
        self.defs.append("\n".join(lines) + "\n")
        self.defs.append(f"{name}.pairs = ({''.join(p + ', ' for p in pair_fns)})\n")
        return f"{name}(c, r)"

    def call(self, e: Node) -> str:
        proc = e.procedure
        if proc.type != "variable" or proc.value not in _functions.FUNCTIONS:
            raise Unsupported("function")
        fn, lo, hi, ctx_default = _functions.FUNCTIONS[proc.value]
        self.functions.add(proc.value)
        n = len(e.arguments)
        if n > hi or n + (1 if ctx_default else 0) < lo:
            raise Unsupported("arity")  # the fallback reports the signature error (T0410)
        args = [self.expr(a) for a in e.arguments]
        if n < lo:  # the context is the first argument (`name.$uppercase()`)
            return f"F.with_ctx(F.f_{proc.value}, c{''.join(', ' + a for a in args)})"
        return f"F.f_{proc.value}({', '.join(args)})"

    # -- paths ------------------------------------------------------------------------------------
    def path(self, e: Node) -> str:
        steps = e.steps
        keep = bool(e.get("keepSingletonArray"))
        if (not keep and all(s.type == "name" and not s.get("stages") and not s.get("group")
                             for s in steps)):
            ks = tuple(s.value for s in steps)
            if len(ks) == 1:
                return f"(c.get({ks[0]!r}, U) if type(c) is dict else R.names(c, {ks!r}))"
            if len(ks) > _INLINE_NAMES:
                return f"R.names(c, {ks!r})"
            return self.names(ks)
        for s in steps:
            if s.get("group") is not None or s.type in ("wildcard", "descendant", "parent", "sort"):
                raise Unsupported(s.type)
        if steps[0].type == "unary" and steps[0].value == "[":
            return self.generic_path(steps, keep)
        return self.unrolled_path(steps, keep)

    def names(self, ks: tuple) -> str:
        """``a.b.c`` inline: nested objects are read with ``dict.get``; anything else (an array on
        the way, a non-dict context) goes to ``R.names``, which starts again from the context."""
        slow = f"R.names(c, {ks!r})"
        tmps = [self.name("w") for _ in ks[:-1]]
        code = f"{tmps[-1]}.get({ks[-1]!r}, U)"
        for i in range(len(ks) - 2, -1, -1):
            src = "c" if i == 0 else tmps[i - 1]
            code = f"({code} if type({tmps[i]} := {src}.get({ks[i]!r}, U)) is dict else {slow})"
        return f"({code} if type(c) is dict else {slow})"

    def generic_path(self, steps: list, keep: bool) -> str:
        specs = []
        for i, s in enumerate(steps):
            stages = s.get("stages") or []
            st = "(" + "".join(self.stage(p) + ", " for p in stages) + ")"
            if s.type == "name":
                specs.append(f"('n', {s.value!r}, {st})")
                continue
            kind = "c" if i == 0 else "e"
            body = self.expr(s)
            if kind == "e" and s.type != "path":
                body = f"R.collapse({body})"
            specs.append(f"('{kind}', {self.fn(body)}, {st})")
        return f"R.path(c, r, ({''.join(x + ', ' for x in specs)}), {keep})"

    def unrolled_path(self, steps: list, keep: bool) -> str:
        """A path as straight-line Python: one loop per step over the input sequence."""
        name = self.name("P")
        L = [f"def {name}(c, r):"]
        last = len(steps) - 1
        for i, s in enumerate(steps):
            stages = [self.stage_call(p) for p in (s.get("stages") or [])]
            staged = "".join(f"        v = R.collapse({st})\n" for st in stages)
            # a last step that always gives one plain value (a number, string, boolean) or
            # undefined: the sequence is the list of results, no flattening needed
            plain = i == last and not keep and not stages and s.type != "name" and _plain(s)
            if s.type == "name":
                get = (f"c.get({s.value!r}, U) if type(c) is dict else "
                       f"R.collapse(R.lookup(c, {s.value!r}))")
            elif s.type == "variable":
                get = f"R.collapse({self.expr(s)})"
            else:  # compiled expressions never return an uncollapsed sequence
                get = self.expr(s)
            if i == 0 and s.type == "name":
                # the usual start: the context is one object
                L.append("    if type(c) is dict:")
                L.append(f"        v = c.get({s.value!r}, U)")
                L.extend(staged.splitlines())
                if i == last:
                    if keep:
                        L.append("        return v if v is U else R.finish(R._flatten([v], True), True)")
                    else:  # one item that is not an array is the value itself
                        L.append("        return v if v is U or not isinstance(v, list) else "
                                 "R.finish(R._flatten([v], True), False)")
                else:
                    L.append("        if v is U: return U")
                    L.append("        seq = v if (type(v) is list or type(v) is R.Seq) else [v]")
                    L.append("        if not seq: return U")
                L.append("    else:")
                L.append("        seq = c if isinstance(c, list) else [c]")
                L.append("        res = []")
                L.append("        for c in seq:")
                L.append(f"            v = {get}")
                L.extend("    " + x for x in staged.splitlines())
                L.append("            if v is not U: res.append(v)")
                L.append(f"        seq = R._flatten(res, {i == last})")
                L.append("        if not seq: return R.finish(seq, False)" if i != last else
                         f"        return R.finish(seq, {keep})")
                continue
            if i == 0:  # a variable ($, $$) or an expression: evaluated once on the context
                L.append("    seq = [c]")
            L.append("    res = []")
            L.append("    for c in seq:")
            L.append(f"        v = {get}")
            L.extend(x for x in staged.splitlines())
            L.append("        if v is not U: res.append(v)")
            if plain:
                L.append("    return (res[0] if len(res) == 1 else R.Seq(res)) if res else U")
                break
            L.append(f"    seq = R._flatten(res, {i == last})")
            if i != last:
                L.append("    if not seq: return U")
        else:
            L.append(f"    return R.finish(seq, {keep})")
        self.defs.append("\n".join(L) + "\n")
        return f"{name}(c, r)"

    def stage_call(self, p: Node) -> str:
        """A stage applied to ``v`` inline (``R.index(v, 0)``, ``R.filt(v, pred, r)``)."""
        if p.type == "number" and type(p.value) is int:
            return f"R.index(v, {p.value})"
        return f"R.filt(v, {self.fn(self.expr(p), 'p')}, r)"

    def stage(self, p: Node) -> str:
        if p.type == "number" and type(p.value) is int:
            return self.fn(f"R.index(c, {p.value})", "i")
        return self.fn(f"R.filt(c, {self.fn(self.expr(p), 'p')}, r)", "f")


_PLAIN_OPS = frozenset(_BINOPS) | {"and", "or"}
_CHAINED = frozenset({"+", "-", "*", "/", "%", "&"})


def _spine(e: Node, ops: tuple | frozenset) -> tuple[Node, list]:
    """The left spine of a left-associative chain: ``a + b - c`` → (a, [node(+b), node(-c)])."""
    spine = []
    while (e.type == "binary" and e.value in ops and not e.get("predicate") and not e.get("keepArray")
           and e.get("group") is None):
        spine.append(e)
        e = e.lhs
    spine.reverse()
    return e, spine
_COMPARE = frozenset({"<", "<=", ">", ">=", "=", "!="})


def _literal(e: Node) -> bool:
    """A number or string literal without predicates (its value is the Python constant)."""
    if e.get("predicate") or e.get("keepArray") or e.get("group") is not None:
        return False
    if e.type == "string":
        return True
    return e.type == "number" and type(e.value) in (int, float) and e.value == e.value
# functions that give one number, string or boolean (or undefined), never an array or object
_PLAIN_FUNCTIONS = frozenset({"string", "lowercase", "uppercase", "trim", "substring", "length",
                              "number", "boolean", "not", "exists", "count", "sum", "max", "min",
                              "average", "round", "abs", "floor", "ceil"})


def _plain(e: Node) -> bool:
    """Whether ``e`` always evaluates to a number, string, boolean or undefined (never a list)."""
    if e.get("predicate") or e.get("keepArray") or e.get("group") is not None:
        return False
    t = e.type
    if t in ("string", "number"):
        return True
    if t == "binary":
        return e.value in _PLAIN_OPS
    if t == "unary":
        return e.value == "-"
    if t == "block":
        return bool(e.expressions) and _plain(e.expressions[-1])
    if t == "function":
        proc = e.procedure
        return proc.type == "variable" and proc.value in _PLAIN_FUNCTIONS
    return False


def compile_tree(tree: Node, source: str) -> tuple[Callable[[Any, Any], Any], str]:
    """Return ``(fn(context, root), python_source)``; raise :class:`Unsupported`. ``fn.functions``
    names the built-in functions the code calls."""
    g = _Gen()
    main = g.expr(tree)
    # an array as input is one item (jsonata-js wraps it in a sequence; `$` is the array): the
    # compiled paths iterate over it instead, so that evaluation goes to the fallback engine
    code = "".join(g.defs) + (f"def _main(c, r):\n    if type(c) is list:\n        raise R.Fallback\n"
                              f"    return {main}\n")
    namespace: dict[str, Any] = {"R": _runtime, "F": _functions, "U": _runtime.U, **g.consts}
    try:
        exec(compile(code, f"<jsonata {source[:40]!r}>", "exec"), namespace)  # noqa: S102 - our own code
    except (SyntaxError, RecursionError, MemoryError) as exc:  # too big or deep for CPython
        raise Unsupported(f"generated code: {type(exc).__name__}: {exc}") from None
    main_fn = namespace["_main"]
    main_fn.functions = frozenset(g.functions)
    return main_fn, code
