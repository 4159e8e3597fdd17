"""The secrets a flow reads: environment variables named by ``*_env`` config fields.

A spec never holds a secret; a field such as ``token_env: CRM_TOKEN`` names the variable that holds
it. :func:`required_env` lists every such variable with the step and field that name it (the one
walk of a flow's config for secrets: deploy, ``flownb validate`` and the runtimes use it), and
:func:`check_env` refuses to start when one is unset — before a single message is consumed, so an
unset secret is exit 2 naming the step, field and variable, not a dead letter per message.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload
from urllib.parse import quote, quote_plus, unquote, urlsplit

from .errors import ConfigError

__all__ = ["EnvVar", "required_env", "missing_env", "check_env", "walk_config", "Redactor", "RedactingFilter",
           "RedactingStream", "MIN_SECRET_LEN", "mask", "encodings", "activate", "active_redactor", "redact",
           "install_log_redaction", "redact_dead_letter", "redact_shapes", "redact_text", "redact_notebook",
           "as_redactor", "MASK", "secret_like_env", "GUESSED_MIN_LEN"]


@dataclass(frozen=True)
class EnvVar:
    step: str
    field: str     # dotted path in the step's config, e.g. "auth.token_env"
    name: str      # the environment variable


def walk_config(config: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(dotted path, key, value) of every entry of a nested config, depth first."""
    if isinstance(config, dict):
        for k, v in config.items():
            where = f"{path}.{k}" if path else str(k)
            yield where, str(k), v
            yield from walk_config(v, where)
    elif isinstance(config, list):
        for i, v in enumerate(config):
            yield from walk_config(v, f"{path}[{i}]")


def required_env(flow: Any, steps: Iterable[str] | None = None) -> list[EnvVar]:
    """Every variable named by a ``*_env`` field of ``flow`` (of ``steps`` only, when given), in step
    order. A field left empty (``None``/``""``) names nothing."""
    only = set(steps) if steps is not None else None
    return [v for s in [*flow.all_steps, *flow.error_steps] if only is None or s.name in only for v in step_env(s)]


def step_env(step: Any) -> list[EnvVar]:
    """The variables named by the ``*_env`` fields of one step's config."""
    return [EnvVar(step.name, where, value) for where, key, value in walk_config(step.config)
            if key.endswith("_env") and isinstance(value, str) and value]


def missing_env(flow: Any, steps: Iterable[str] | None = None,
                environ: Mapping[str, str] | None = None) -> list[EnvVar]:
    env = os.environ if environ is None else environ
    return [v for v in required_env(flow, steps) if v.name not in env]


def check_env(flow: Any, steps: Iterable[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Raise ConfigError (exit 2) naming the step, field and variable of the first unset secret, and
    listing all of them when several are missing."""
    missing = missing_env(flow, steps, environ)
    if not missing:
        return
    first = missing[0]
    others = ""
    if len(missing) > 1:
        others = " (also unset: " + ", ".join(f"{v.name} for step '{v.step}' field '{v.field}'"
                                               for v in missing[1:]) + ")"
    raise ConfigError(f"environment variable '{first.name}' is not set{others}; export it before "
                      f"starting (nothing was consumed), or check the name with 'flownb validate --env'",
                      step=first.step, field=first.field)


# -- redaction -------------------------------------------------------------------------------------
# The one place that knows what a secret looks like once it is out: the runtimes (stored errors,
# logs, stdout/stderr), ``flownb dlq`` (display), scheduled runs (output notebook, log, error) and
# exported notebooks (flownb/deploy/redact.py) all redact with a :class:`Redactor`. Rule: docs/secrets.md.

#: values shorter than this are never searched for (they would redact ordinary text)
MIN_SECRET_LEN = 4
#: an already redacted value; never redacted again (so redacting twice changes nothing)
_MASKED = r"\[REDACTED:[A-Za-z0-9_.-]*\]"


def mask(name: str | None) -> str:
    """What replaces a secret: ``[REDACTED:NAME]`` (the variable's name is not a secret), or ``***``
    for a value whose variable is unknown."""
    return f"[REDACTED:{name}]" if name else "***"


def _b64(s: str) -> list[str]:
    raw = s.encode("utf-8")
    return [base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()]


def encodings(value: str) -> set[str]:
    """The forms of ``value`` that are searched for: as is, stripped, URL-quoted, JSON/``repr``/HTML
    escaped, base64 (the ``Basic`` credentials of a ``user:pass`` value); for a URL with a password
    (``scheme://user:pass@host``) also the password alone and base64 of ``user:pass``. (The value of
    ``Authorization: Bearer <v>`` is the value itself.) Forms shorter than :data:`MIN_SECRET_LEN` are
    dropped."""
    forms: set[str] = set()
    for v in {value, value.strip()}:
        if len(v) < MIN_SECRET_LEN:
            continue
        forms |= {v, quote(v, safe=""), quote(v), quote_plus(v, safe=""), json.dumps(v)[1:-1],
                  json.dumps(v, ensure_ascii=False)[1:-1], repr(v)[1:-1], html.escape(v), *_b64(v)}
        forms |= {b.rstrip("=") for b in _b64(v)}
        try:
            parts = urlsplit(v)
            user, password = parts.username, parts.password
        except ValueError:
            user = password = None
        if password:
            plain = unquote(password)
            for p in {password, plain}:
                if len(p) >= MIN_SECRET_LEN:
                    forms |= {p, quote(p, safe="")}
            forms |= set(_b64(f"{unquote(user or '')}:{plain}"))
    return {f for f in forms if len(f) >= MIN_SECRET_LEN}


class Redactor:
    """Replaces known secret values, and their common :func:`encodings`, by :func:`mask` of their
    variable's name. ``secrets``: ``{variable: value}`` (or ``(variable or None, value)`` pairs);
    empty values and values shorter than :data:`MIN_SECRET_LEN` are ignored. Falsy when it knows no
    secret (then :meth:`redact` returns its input)."""

    def __init__(self, secrets: Mapping[str | None, str] | Iterable[tuple[str | None, str]] = ()):
        pairs = secrets.items() if isinstance(secrets, Mapping) else secrets
        self._mask: dict[str, str] = {}
        for name, value in pairs:
            if isinstance(value, str):
                for form in encodings(value):
                    self._mask.setdefault(form, mask(name))
        self._compile()

    def _compile(self) -> None:
        """``names`` and the pattern (longest form first, an existing mask never re-masked) from ``_mask``."""
        self.names = sorted({m[len("[REDACTED:"):-1] for m in self._mask.values() if m != "***"})
        forms = sorted(self._mask, key=len, reverse=True)
        self._re = re.compile(_MASKED + "|" + "|".join(map(re.escape, forms))) if forms else None

    @classmethod
    def from_env(cls, names: Iterable[str], environ: Mapping[str, str] | None = None) -> Redactor:
        """The values of the environment variables ``names`` (unset ones are skipped)."""
        env = os.environ if environ is None else environ
        return cls([(n, env[n]) for n in dict.fromkeys(names) if env.get(n)])

    @classmethod
    def from_flow(cls, flow: Any, environ: Mapping[str, str] | None = None) -> Redactor:
        """The values of every variable :func:`required_env` names for ``flow``, read now."""
        names = [v.name for v in required_env(flow)]
        try:
            names += [v.name for v in required_env(flow.resolved())]  # ``{{ param }}`` in a *_env field
        except Exception:  # noqa: BLE001 - a template that does not fill: the names as written
            pass
        return cls.from_env(names, environ)

    @classmethod
    def from_values(cls, values: Iterable[str]) -> Redactor:
        """Values whose variable is unknown: masked as ``***``."""
        return cls([(None, v) for v in values])

    def __bool__(self) -> bool:
        return self._re is not None

    def __or__(self, other: Redactor) -> Redactor:
        merged = Redactor()
        merged._mask = {**other._mask, **self._mask}
        merged._compile()
        merged.names = sorted(set(self.names) | set(other.names))  # a value known by two names: both
        return merged

    def redact(self, text: str) -> str:
        if self._re is None or not text:
            return text
        return self._re.sub(lambda m: self._mask.get(m.group(0), m.group(0)), text)

    def redact_obj(self, obj: Any) -> Any:
        """A copy of a JSON-like value with every string, dict keys included, redacted."""
        if isinstance(obj, str):
            return self.redact(obj)
        if isinstance(obj, dict):
            return {(self.redact(k) if isinstance(k, str) else k): self.redact_obj(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.redact_obj(v) for v in obj]
        return obj


#: names of environment variables taken for secrets without being named (scheduled notebooks)
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|(?:^|_)PASS(?:$|_)|API_?KEY|ACCESS_KEY|PRIVATE_KEY|"
                          r"CREDENTIAL", re.IGNORECASE)
#: a variable whose name only *looks* secret is redacted when its value has at least this many characters
GUESSED_MIN_LEN = 8


def secret_like_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Names of the environment variables whose name looks like a secret's (``*TOKEN*``, ``*SECRET*``,
    ``*PASSWORD*``, ``*PASSWD*``, ``*_PASS``, ``*API_KEY*``/``*APIKEY*``, ``*ACCESS_KEY*``,
    ``*PRIVATE_KEY*``, ``*CREDENTIAL*``) and whose value has at least :data:`GUESSED_MIN_LEN`
    characters; sorted."""
    env = os.environ if environ is None else environ
    return sorted(n for n, v in env.items() if _SECRET_NAME.search(n) and len(v.strip()) >= GUESSED_MIN_LEN)


# -- the process's active redactors (set up by ``flownb run`` / ``flownb worker``) ----------------
_ACTIVE: list[Redactor] = []
_ACTIVE_LOCK = threading.Lock()


def activate(redactor: Redactor) -> Callable[[], None]:
    """Make ``redactor`` apply process-wide (:func:`redact`, stored errors, the log filter);
    returns the function that undoes it."""
    with _ACTIVE_LOCK:
        _ACTIVE.append(redactor)

    def undo() -> None:
        with _ACTIVE_LOCK:
            if redactor in _ACTIVE:
                _ACTIVE.remove(redactor)
    return undo


def active_redactor() -> Redactor:
    with _ACTIVE_LOCK:
        found = list(_ACTIVE)
    if len(found) == 1:
        return found[0]
    out = Redactor()
    for r in found:
        out = out | r
    return out


_T = TypeVar("_T")


@overload
def redact(text: str, redactor: Redactor | None = None) -> str: ...
@overload
def redact(text: _T, redactor: Redactor | None = None) -> _T: ...
def redact(text: Any, redactor: Redactor | None = None) -> Any:
    """``text`` with the secrets of ``redactor`` and of the process's active redactors masked (a
    value that is not a string, such as None, is returned as it is)."""
    if not isinstance(text, str):
        return text
    if redactor is not None:
        text = redactor.redact(text)
    for r in list(_ACTIVE):
        text = r.redact(text)
    return text


class RedactingFilter(logging.Filter):
    """A ``logging.Filter`` for handlers: redacts each record's message, exception text and stack
    (with ``redactor``, and the process's active redactors). It never drops a record."""

    def __init__(self, redactor: Redactor | None = None):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format: let the handler report it as usual
            return True
        red = redact(msg, self.redactor)
        if red != msg:
            record.msg, record.args = red, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.redactor)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.redactor)
        return True


class RedactingStream:
    """A text stream (``sys.stdout``/``sys.stderr``) whose writes are redacted; the rest is the
    wrapped stream's."""

    def __init__(self, stream: Any, redactor: Redactor | None = None):
        self._stream = stream
        self._redactor = redactor

    def write(self, s: str) -> int:
        self._stream.write(redact(s, self._redactor) if isinstance(s, str) else s)
        return len(s)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def install_log_redaction(flow: Any, *, streams: bool = True,
                          environ: Mapping[str, str] | None = None) -> Callable[[], None]:
    """Redact the secrets ``flow`` reads (:meth:`Redactor.from_flow`, read now) from everything this
    process records or prints: errors stored from now on (``ErrorInfo.from_exception``), records
    of the root logger's handlers (a :class:`RedactingFilter` on each), and — with ``streams`` —
    what is written to ``sys.stdout``/``sys.stderr`` (tracebacks, the summary). ``flownb run`` and
    ``flownb worker`` call it; returns the function that undoes it all."""
    redactor = Redactor.from_flow(flow, environ)
    undo_active = activate(redactor)
    filt = RedactingFilter()
    handlers = list(logging.getLogger().handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for h in handlers:
        h.addFilter(filt)
    saved = (sys.stdout, sys.stderr)
    wrapped: tuple[Any, Any] | None = None
    if streams and redactor:
        wrapped = (RedactingStream(sys.stdout), RedactingStream(sys.stderr))
        sys.stdout, sys.stderr = wrapped

    def undo() -> None:
        for h in handlers:
            h.removeFilter(filt)
        if wrapped is not None:
            if sys.stdout is wrapped[0]:
                sys.stdout = saved[0]
            if sys.stderr is wrapped[1]:
                sys.stderr = saved[1]
        undo_active()
    return undo


# -- token shapes: text that looks like a credential whatever variable (if any) it came from -------
_URL_PASSWORD = re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]+:)(?!\[REDACTED:)(?P<secret>[^\s@/]+)(?=@)")
_KEYWORD = re.compile(
    r"(?P<pre>(?i:\b(?:bearer|basic)\s+|\b(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key|"
    r"authorization|client[_-]?secret)[\"']?\s*[:=]\s*[\"']?(?>(?:(?:bearer|basic|token)\s+)?)))"
    r"(?!\[REDACTED:)(?P<secret>[^\s\"',;&}]{4,})")
_SHAPES = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|xox[abposr]-[A-Za-z0-9-]{10,}|"
    r"sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})")
_LONG = re.compile(r"(?<![A-Za-z0-9_+/=-])[A-Za-z0-9_+/=-]{32,}(?![A-Za-z0-9_+/=-])")
MASK = mask(None)


def _looks_random(s: str) -> bool:
    return any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s)


def redact_shapes(text: str) -> str:
    """``text`` with token-shaped substrings replaced by ``***``: the password of a URL, the value after
    ``Bearer``/``Basic`` and after ``password``/``token``/``secret``/``api_key``/``authorization``
    + ``=``/``:``, GitHub/Slack/``sk-``/AWS/JWT tokens, and runs of 32+ URL-safe characters mixing
    upper case, lower case and digits (UUIDs and hex digests are kept)."""
    text = _URL_PASSWORD.sub(lambda m: m.group("pre") + MASK, text)
    text = _KEYWORD.sub(lambda m: m.group("pre") + MASK, text)
    text = _SHAPES.sub(MASK, text)
    return _LONG.sub(lambda m: MASK if _looks_random(m.group(0)) else m.group(0), text)


def as_redactor(secrets: Redactor | Iterable[str] | None) -> Redactor:
    """A Redactor from a Redactor (as is) or plain values (masked as ``***``)."""
    if isinstance(secrets, Redactor):
        return secrets
    return Redactor.from_values(secrets or ())


def redact_text(text: str, secrets: Redactor | Iterable[str] | None = ()) -> str:
    """Known secrets (a Redactor, or plain values), then token shapes (:func:`redact_shapes`)."""
    return redact_shapes(as_redactor(secrets).redact(text))


#: notebook output data left untouched: binary, base64-encoded (SVG is text and is redacted)
def _binary(key: str) -> bool:
    return (key.startswith("image/") and key != "image/svg+xml") or key == "application/pdf"


def _deep(obj: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, list):
        return [_deep(v, fn) for v in obj]
    if isinstance(obj, dict):
        return {(fn(k) if isinstance(k, str) else k):
                (v if isinstance(k, str) and _binary(k) else _deep(v, fn)) for k, v in obj.items()}
    return obj


def redact_notebook(nb: dict, secrets: Redactor | Iterable[str] | None, *, shapes: bool = True) -> dict:
    """A redacted copy of a notebook (nbformat dict). Known secrets (a Redactor, or plain values)
    everywhere: cell sources, outputs of every mime type (text/plain, text/html, nested keys *and*
    values of application/json …; binary images are left as they are), cell and notebook metadata
    (papermill parameters). With ``shapes``, token-shaped text (:func:`redact_shapes`) too, in outputs
    and metadata (not in the code a person wrote)."""
    r = as_redactor(secrets)
    text = (lambda s: redact_shapes(r.redact(s))) if shapes else r.redact
    out = dict(nb)
    cells = []
    for cell in nb.get("cells", []):
        cell = dict(cell)
        cell["source"] = _deep(cell.get("source", ""), r.redact)
        if "outputs" in cell:
            cell["outputs"] = _deep(cell["outputs"], text)
        if "metadata" in cell:
            cell["metadata"] = _deep(cell["metadata"], text)
        cells.append(cell)
    out["cells"] = cells
    out["metadata"] = _deep(nb.get("metadata", {}), text)
    return out


def redact_dead_letter(dead: Any, redactor: Redactor | None = None) -> Any:
    """A copy of a dead letter (``flownb.runtime.core.DeadLetter``) for display (``flownb dlq
    list/show``): the secrets of ``redactor`` (and the active ones) masked in its error and message
    body and headers, and — in the error's message and traceback — token-shaped text too
    (flownb.deploy.redact.redact_text), for dead letters stored before errors were redacted or by a
    process that did not know the secret. Replay uses the stored dead letter, never this copy."""
    import copy as _copy
    import dataclasses

    r = active_redactor() if redactor is None else (redactor | active_redactor())
    error = dataclasses.replace(dead.error, message=redact_text(dead.error.message, r),
                                traceback=redact_text(dead.error.traceback, r))
    message = _copy.copy(dead.message)
    message.body = r.redact_obj(dead.message.body)
    message.headers = r.redact_obj(dead.message.headers)
    return dataclasses.replace(dead, message=message, error=error)
