"""A JSONata tokenizer and Pratt parser (a port of the grammar of jsonata-js) with 0-based positions.

The parser accepts the whole JSONata grammar, so syntax errors carry a position even for expressions
that are later evaluated by the fallback engine. :func:`parse` returns the post-processed tree
(names and ``.`` chains become ``path`` nodes with ``steps``; predicates become ``stages``).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

__all__ = ["Node", "ParseError", "parse"]

OPERATORS = {
    ".": 75, "[": 80, "]": 0, "{": 70, "}": 0, "(": 80, ")": 0, ",": 0, "@": 80, "#": 80, ";": 80,
    ":": 80, "?": 20, "+": 50, "-": 50, "*": 60, "/": 60, "%": 60, "|": 20, "=": 40, "<": 40, ">": 40,
    "^": 40, "**": 60, "..": 20, ":=": 10, "!=": 40, "<=": 40, ">=": 40, "~>": 40, "?:": 40, "??": 40,
    "and": 30, "or": 25, "in": 40, "&": 50, "!": 0, "~": 0,
}
_TWO = ("..", ":=", "!=", ">=", "<=", "**", "~>", "?:", "??")
_NUM = re.compile(r"-?(0|([1-9][0-9]*))(\.[0-9]+)?([Ee][-+]?[0-9]+)?")
_ESC = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_WS = " \t\n\r\v"
_UNKNOWN = ("!", "~")  # tokens only as part of != and ~>: jsonata-js has no symbol for them (S0204)
_TERMINALS = (":", ";", ",", ")", "]", "}", "..", "!", "~", "|", "**")  # symbols with no left binding power
_BINARY = ("+", "-", "*", "/", "%", "=", "!=", "<", "<=", ">", ">=", "&", "and", "or", "in", "~>",
           "??", "?:", "..")


class ParseError(Exception):
    def __init__(self, code: str, message: str, position: int):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.position = position


class Node:
    """An AST node: ``type``, ``value``, ``position`` plus type-specific attributes."""

    def __init__(self, type: str, value: Any = None, position: int = 0, **kw: Any):
        self.type = type
        self.value = value
        self.position = position
        self.__dict__.update(kw)

    def get(self, name: str, default: Any = None) -> Any:
        return self.__dict__.get(name, default)

    if TYPE_CHECKING:
        # The type-specific attributes (lhs, rhs, steps, stages, expressions, procedure, ...) are set
        # from **kw and depend on ``type``: to a type checker any attribute exists and is Any. Only
        # for the checker: at run time a missing attribute still raises AttributeError.
        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        extra = {k: v for k, v in self.__dict__.items() if k not in ("type", "value", "position")}
        return f"Node({self.type}, {self.value!r}, {extra})"


class _Tokenizer:
    def __init__(self, text: str):
        self.s = text
        self.pos = 0
        self.prev: Node | None = None

    def next(self) -> Node | None:
        # a '/' starts a regex only where an operand is expected (after an operator or at the start)
        prev = self.prev
        prefix = prev is None or (prev.type == "operator" and prev.value not in (")", "]", "}"))
        self.prev = tok = self._next(prefix)
        if tok is not None and tok.type == "operator" and tok.value in _UNKNOWN:
            raise ParseError("S0204", f"Unknown operator: {tok.value!r}", tok.position)
        return tok

    def _next(self, prefix: bool) -> Node | None:  # noqa: C901 - a tokenizer is one long switch
        s, n = self.s, len(self.s)
        while self.pos < n:
            c = s[self.pos]
            if c in _WS:
                self.pos += 1
            elif s.startswith("/*", self.pos):
                end = s.find("*/", self.pos + 2)
                if end < 0:
                    raise ParseError("S0106", "Comment has no closing tag", self.pos)
                self.pos = end + 2
            else:
                break
        if self.pos >= n:
            return None
        start, c = self.pos, s[self.pos]
        if prefix and c == "/":
            return self._regex(start)
        two = s[start:start + 2]
        if two in _TWO:
            self.pos += 2
            return Node("operator", two, start)
        if c in OPERATORS:
            self.pos += 1
            return Node("operator", c, start)
        if c in "\"'":
            return self._string(start, c)
        m = _NUM.match(s, start)
        if m and c != "-":
            value = float(m.group(0))
            if not math.isfinite(value):
                raise ParseError("S0102", f"Number out of range: {m.group(0)}", start)
            self.pos = m.end()
            return Node("number", int(value) if value.is_integer() and abs(value) < 2**53 else value,
                        start)
        if c == "`":
            end = s.find("`", start + 1)
            if end < 0:
                raise ParseError("S0105", "Quoted property name must be terminated with a backquote (`)",
                                 start)
            self.pos = end + 1
            return Node("name", s[start + 1:end], start)
        i = start
        while i < n and s[i] not in _WS and s[i] not in OPERATORS:
            i += 1
        self.pos = i
        word = s[start:i]
        if c == "$":
            return Node("variable", word[1:], start)
        if word in ("and", "or", "in"):
            return Node("operator", word, start)
        if word in ("true", "false", "null"):
            return Node("value", {"true": True, "false": False, "null": None}[word], start)
        return Node("name", word, start)

    def _string(self, start: int, quote: str) -> Node:
        s, out, i = self.s, [], start + 1
        while i < len(s):
            c = s[i]
            if c == "\\":
                i += 1
                e = s[i] if i < len(s) else ""
                if e in _ESC:
                    out.append(_ESC[e])
                elif e == "'":
                    out.append("'")
                elif e == "u":
                    if not re.fullmatch(r"[0-9a-fA-F]{4}", s[i + 1:i + 5]):
                        raise ParseError("S0104", "The escape sequence \\u must be followed by 4 hex "
                                                  "digits", i - 1)
                    out.append(chr(int(s[i + 1:i + 5], 16)))
                    i += 4
                else:
                    raise ParseError("S0103", f"Unsupported escape sequence: \\{e}", i - 1)
            elif c == quote:
                self.pos = i + 1
                text = "".join(out)
                if "\\" in s[start:i]:  # \uD834\uDD1E is one character (a surrogate pair)
                    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
                return Node("string", text, start)
            else:
                out.append(c)
            i += 1
        raise ParseError("S0101", "String literal must be terminated by a matching quote", start)

    def _regex(self, start: int) -> Node:
        s, i, depth = self.s, start + 1, 0
        while i < len(s):
            c = s[i]
            if c == "\\":
                i += 2
                continue
            if c == "[":
                depth += 1
            elif c == "]" and depth:
                depth -= 1
            elif c == "/" and not depth:
                pattern = s[start + 1:i]
                if pattern == "":
                    raise ParseError("S0301", "Empty regular expressions are not supported", start)
                j = i + 1
                while j < len(s) and s[j] in "imgsuy":
                    j += 1
                self.pos = j
                return Node("regex", pattern, start, flags=s[i + 1:j])
            i += 1
        raise ParseError("S0302", "No terminating / in regular expression", start)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.lexer = _Tokenizer(text)
        self.tok: Node = Node("(end)", None, len(text))
        self.advance()

    # -- token stream ---------------------------------------------------------------------------
    def _id(self, t: Node) -> str:
        return t.value if t.type == "operator" else f"({t.type})"

    def advance(self, expect: str | None = None) -> None:
        if expect is not None and self._id(self.tok) != expect:
            if self.tok.type == "(end)":
                raise ParseError("S0203", f"Expected {expect!r} before end of expression", self.tok.position)
            raise ParseError("S0202", f"Expected {expect!r}, got {self._show(self.tok)}",
                             self.tok.position)
        t = self.lexer.next()
        self.tok = t if t is not None else Node("(end)", None, len(self.text))

    def _show(self, t: Node) -> str:
        return "end of expression" if t.type == "(end)" else repr(str(t.value))

    def lbp(self, t: Node) -> int:
        if t.type == "operator" and t.value not in _TERMINALS:
            return OPERATORS[t.value]
        return 0

    def expression(self, rbp: int) -> Node:
        t = self.tok
        self.advance()
        left = self.nud(t)
        while rbp < self.lbp(self.tok):
            t = self.tok
            self.advance()
            left = self.led(t, left)
        return left

    # -- prefix ---------------------------------------------------------------------------------
    def nud(self, t: Node) -> Node:  # noqa: C901
        if t.type in ("string", "number", "value", "name", "variable", "regex"):
            return t
        if t.type == "(end)":
            raise ParseError("S0207", "Unexpected end of expression", t.position)
        v = t.value
        if v == "-":
            return Node("unary", "-", t.position, expression=self.expression(70))
        if v == "*":
            return Node("wildcard", "*", t.position)
        if v == "**":
            return Node("descendant", "**", t.position)
        if v == "%":
            return Node("parent", "%", t.position)
        if v == "(":
            exprs = []
            while self._id(self.tok) != ")":
                exprs.append(self.expression(0))
                if self._id(self.tok) != ";":
                    break
                self.advance(";")
            self.advance(")")
            return Node("block", None, t.position, expressions=exprs)
        if v == "[":
            items = []
            if self._id(self.tok) != "]":
                while True:
                    item = self.expression(0)
                    if self._id(self.tok) == "..":
                        pos = self.tok.position
                        self.advance("..")
                        item = Node("binary", "..", pos, lhs=item, rhs=self.expression(0))
                    items.append(item)
                    if self._id(self.tok) != ",":
                        break
                    self.advance(",")
            self.advance("]")
            return Node("unary", "[", t.position, expressions=items)
        if v == "{":
            return Node("unary", "{", t.position, lhs=self.object_pairs())
        if v == "|":
            pattern = self.expression(0)
            self.advance("|")
            update = self.expression(0)
            delete = None
            if self._id(self.tok) == ",":
                self.advance(",")
                delete = self.expression(0)
            self.advance("|")
            return Node("transform", "|", t.position, pattern=pattern, update=update, delete=delete)
        raise ParseError("S0211", f"The symbol {v!r} cannot be used as a unary operator", t.position)

    def object_pairs(self) -> list:
        pairs = []
        if self._id(self.tok) != "}":
            while True:
                k = self.expression(0)
                self.advance(":")
                pairs.append((k, self.expression(0)))
                if self._id(self.tok) != ",":
                    break
                self.advance(",")
        self.advance("}")
        return pairs

    # -- infix ----------------------------------------------------------------------------------
    def led(self, t: Node, left: Node) -> Node:  # noqa: C901
        v, pos = t.value, t.position
        if v in _BINARY or v == ".":
            if v == "..":
                raise ParseError("S0201", "A range (..) is only allowed inside an array constructor", pos)
            return Node("binary", v, pos, lhs=left, rhs=self.expression(OPERATORS[v]))
        if v == ":=":
            if left.type != "variable":
                raise ParseError("S0212", "The left side of := must be a variable name (start with $)", pos)
            return Node("bind", v, pos, lhs=left, rhs=self.expression(OPERATORS[v] - 1))
        if v == "(":
            return self.call(t, left)
        if v == "[":
            if self._id(self.tok) == "]":
                step = left
                while step.type == "binary" and step.value == "[":
                    step = step.lhs
                step.keepArray = True
                self.advance("]")
                return left
            rhs = self.expression(0)
            self.advance("]")
            return Node("binary", "[", pos, lhs=left, rhs=rhs)
        if v == "{":
            return Node("binary", "{", pos, lhs=left, rhs=self.object_pairs())
        if v == "?":
            then = self.expression(0)
            other = None
            if self._id(self.tok) == ":":
                self.advance(":")
                other = self.expression(0)
            return Node("condition", "?", pos, condition=left, then=then, other=other)
        if v in ("@", "#"):
            rhs = self.expression(OPERATORS[v])
            if rhs.type != "variable":
                raise ParseError("S0214", f"The right side of {v} must be a variable name (start with $)",
                                 rhs.position)
            return Node("binary", v, pos, lhs=left, rhs=rhs)
        if v == "^":
            self.advance("(")
            terms = []
            while True:
                desc = False
                if self._id(self.tok) in ("<", ">"):
                    desc = self.tok.value == ">"
                    self.advance()
                terms.append((desc, self.expression(0)))
                if self._id(self.tok) != ",":
                    break
                self.advance(",")
            self.advance(")")
            return Node("binary", "^", pos, lhs=left, rhs=terms)
        raise ParseError("S0201", f"Syntax error: {v!r}", pos)

    def call(self, t: Node, left: Node) -> Node:
        args = []
        partial = False
        if self._id(self.tok) != ")":
            while True:
                if self.tok.type == "operator" and self.tok.value == "?":
                    partial = True
                    args.append(Node("placeholder", "?", self.tok.position))
                    self.advance("?")
                else:
                    args.append(self.expression(0))
                if self._id(self.tok) != ",":
                    break
                self.advance(",")
        self.advance(")")
        if left.type == "name" and left.value in ("function", "λ"):
            for a in args:
                if a.type != "variable":
                    raise ParseError("S0208", "Parameter of a function definition must be a variable name",
                                     a.position)
            if self._id(self.tok) == "<":  # signature: skip to the matching '>'
                self._skip_signature()
            self.advance("{")
            body = self.expression(0)
            self.advance("}")
            return Node("lambda", None, t.position, arguments=args, body=body)
        return Node("partial" if partial else "function", "(", t.position, procedure=left, arguments=args)

    def _skip_signature(self) -> None:
        s, i, depth = self.text, self.tok.position, 0
        while i < len(s):
            if s[i] == "<":
                depth += 1
            elif s[i] == ">":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        else:
            raise ParseError("S0401", "Function signature is not terminated by '>'", self.tok.position)
        _check_signature(s[self.tok.position:i + 1], self.tok.position)
        self.lexer.pos = i + 1
        self.advance()


def _closing(sig: str, i: int, open_: str, close: str) -> int:
    depth = 1
    while i < len(sig) - 1:
        i += 1
        if sig[i] == close:
            depth -= 1
            if depth == 0:
                break
        elif sig[i] == open_:
            depth += 1
    return i


def _check_signature(sig: str, offset: int) -> None:
    """The errors of jsonata-js's signature parser: S0401 (a type parameter on a type other than
    an array or a function), S0402 (a choice group with a parameterised type)."""
    i, prev = 1, ""
    while i < len(sig):
        ch = sig[i]
        if ch == ":":
            break
        if ch in "snbloafjx":
            prev = ch
        elif ch == "(":
            end = _closing(sig, i, "(", ")")
            if "<" in sig[i + 1:end]:
                raise ParseError("S0402", "Choice groups containing parameterized types are not "
                                          "supported", offset + i)
            prev, i = "(", end
        elif ch == "<":
            if prev not in ("a", "f"):
                raise ParseError("S0401", "Type parameters can only be applied to functions and "
                                          "arrays", offset + i)
            i = _closing(sig, i, "<", ">")
        i += 1


# -- post-processing (names and '.' chains → paths; predicates → stages) ---------------------------

_SPINE = frozenset(_BINARY) | {"."}


def _post_binary(e: Node, lhs: Node) -> Node:
    """Post-process the binary node ``e`` whose left side is already post-processed (``lhs``)."""
    if e.value != ".":
        return Node("binary", e.value, e.position, lhs=lhs, rhs=_post(e.rhs))
    fresh = lhs.type != "path"
    result = Node("path", None, lhs.position, steps=[lhs]) if fresh else lhs
    rest = _post(e.rhs)
    if rest.type == "path":
        added = rest.steps
    else:
        if rest.get("predicate") is not None:
            rest.stages = rest.predicate
            rest.predicate = None
        added = [rest]
    result.steps.extend(added)
    new = result.steps if fresh else added  # (the steps of a path on the left are checked)
    for st in new:
        if st.type in ("number", "value"):
            raise ParseError("S0213", f"The literal value {st.value!r} cannot be used as a step "
                                      f"within a path expression", st.position)
        if st.type == "string":
            st.type = "name"
    if any(st.get("keepArray") for st in new):
        result.keepSingletonArray = True
    for st in (result.steps[0], result.steps[-1]):
        if st.type == "unary" and st.value == "[":
            st.consarray = True
    return result


def _post(e: Node) -> Node:  # noqa: C901
    t = e.type
    if t == "binary" and e.value in _SPINE:
        # a left-associative chain (a + b + c …, a.b.c …) is walked in a loop, not recursively
        spine = []
        while e.type == "binary" and e.value in _SPINE:
            spine.append(e)
            e = e.lhs
        result = _post(e)
        for node in reversed(spine):
            result = _post_binary(node, result)
        return result
    if t == "binary" and e.value == "[":
        result = _post(e.lhs)
        step, kind = result, "predicate"
        if result.type == "path":
            step, kind = result.steps[-1], "stages"
        if step.get("group") is not None:
            raise ParseError("S0209", "A predicate cannot follow a grouping expression in a step",
                             e.position)
        if step.get(kind) is None:
            setattr(step, kind, [])
        getattr(step, kind).append(_post(e.rhs))
        return result
    if t == "binary" and e.value == "{":
        result = _post(e.lhs)
        if result.get("group") is not None:
            raise ParseError("S0210", "Each step can only have one grouping expression", e.position)
        result.group = [(_post(k), _post(v)) for k, v in e.rhs]
        return result
    if t == "binary" and e.value == "^":
        result = _post(e.lhs)
        if result.type != "path":
            result = Node("path", None, result.position, steps=[result])
        result.steps.append(Node("sort", "^", e.position, terms=[(d, _post(x)) for d, x in e.rhs]))
        return result
    if t == "binary":
        return Node("binary", e.value, e.position, lhs=_post(e.lhs),
                    rhs=e.rhs if e.value in ("@", "#") else _post(e.rhs))
    if t == "unary" and e.value == "-":
        inner = _post(e.expression)
        if inner.type == "number":
            inner.value = -inner.value
            return inner
        return Node("unary", "-", e.position, expression=inner)
    if t == "unary" and e.value == "[":
        return Node("unary", "[", e.position, expressions=[_post(x) for x in e.expressions],
                    keepArray=e.get("keepArray"))
    if t == "unary" and e.value == "{":
        return Node("unary", "{", e.position, lhs=[(_post(k), _post(v)) for k, v in e.lhs])
    if t == "name":
        result = Node("path", None, e.position, steps=[e])
        if e.get("keepArray"):
            result.keepSingletonArray = True
        return result
    if t in ("function", "partial"):
        return Node(t, e.value, e.position, procedure=_post(e.procedure),
                    arguments=[_post(a) for a in e.arguments], keepArray=e.get("keepArray"))
    if t == "condition":
        return Node(t, e.value, e.position, condition=_post(e.condition), then=_post(e.then),
                    other=_post(e.other) if e.other is not None else None)
    if t == "block":
        return Node(t, None, e.position, expressions=[_post(x) for x in e.expressions],
                    keepArray=e.get("keepArray"))
    if t == "bind":
        return Node(t, e.value, e.position, lhs=e.lhs, rhs=_post(e.rhs))
    if t == "lambda":
        return Node(t, None, e.position, arguments=e.arguments, body=_post(e.body))
    if t == "transform":
        return Node(t, e.value, e.position, pattern=_post(e.pattern), update=_post(e.update),
                    delete=_post(e.delete) if e.delete is not None else None)
    return e


def parse(text: str) -> Node:
    """Parse ``text``; raise :class:`ParseError` (with a 0-based position) when it is not JSONata."""
    p = _Parser(text)
    tree = p.expression(0)
    if p.tok.type != "(end)":
        raise ParseError("S0201", f"Syntax error: unexpected {p._show(p.tok)}", p.tok.position)
    return _post(tree)
