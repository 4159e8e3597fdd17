"""Redaction of secrets from an executed notebook (the record written next to the export).

Rule (also in docs/deploy.md):
1. every value of an environment variable named by a ``*_env`` config field of the flow (when set in
   the exporting environment, which the notebook kernel inherits) is replaced by ``***``, in every
   cell's source and outputs, and in the papermill parameters recorded in the metadata;
2. in outputs (text, HTML, JSON, errors), anything that looks like a token is replaced by ``***``:
   - the password of a URL (``scheme://user:***@host``);
   - the value after ``Bearer``/``Basic`` and after ``password``/``token``/``secret``/``api_key``/
     ``authorization`` followed by ``=`` or ``:``;
   - well-known token shapes: GitHub (``ghp_…``, ``github_pat_…``), Slack (``xox?-…``), ``sk-…``,
     AWS access keys (``AKIA…``), JSON Web Tokens (``eyJ….….…``);
   - any run of 32+ URL-safe characters mixing upper case, lower case and digits (UUIDs and
     lower-case hex digests, which are ids rather than credentials, are left alone).
Values shorter than 4 characters are not searched for (they would redact ordinary text).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "***"

_URL_PASSWORD = re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]+:)(?P<secret>[^\s@/]+)(?=@)")
_KEYWORD = re.compile(
    r"(?P<pre>(?i:\b(?:bearer|basic)\s+|\b(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key|"
    r"authorization|client[_-]?secret)[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token)\s+)?))(?P<secret>[^\s\"',;&}]{4,})")
_SHAPES = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|xox[abposr]-[A-Za-z0-9-]{10,}|"
    r"sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})")
_LONG = re.compile(r"(?<![A-Za-z0-9_+/=-])[A-Za-z0-9_+/=-]{32,}(?![A-Za-z0-9_+/=-])")


def _looks_random(s: str) -> bool:
    return any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s)


def redact_text(text: str, values: Iterable[str] = ()) -> str:
    """``text`` with the known secret ``values`` and token-like strings replaced by ``***``."""
    text = redact_values(text, values)
    text = _URL_PASSWORD.sub(lambda m: m.group("pre") + MASK, text)
    text = _KEYWORD.sub(lambda m: m.group("pre") + MASK, text)
    text = _SHAPES.sub(MASK, text)
    return _LONG.sub(lambda m: MASK if _looks_random(m.group(0)) else m.group(0), text)


def redact_values(text: str, values: Iterable[str]) -> str:
    for v in sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True):
        text = text.replace(v, MASK)
    return text


def _deep(obj: Any, fn) -> Any:
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, list):
        return [_deep(v, fn) for v in obj]
    if isinstance(obj, dict):
        # binary outputs (image/png …) are base64, not text: only known values are searched there
        return {k: (_deep(v, lambda s: s) if k.startswith(("image/", "application/pdf")) else _deep(v, fn))
                for k, v in obj.items()}
    return obj


def redact_notebook(nb: dict, values: Iterable[str]) -> dict:
    """A redacted copy of a notebook (nbformat dict): values everywhere, token shapes in outputs."""
    values = list(values)
    out = dict(nb)
    cells = []
    for cell in nb.get("cells", []):
        cell = dict(cell)
        src = cell.get("source", "")
        cell["source"] = _deep(src, lambda s: redact_values(s, values))
        if "outputs" in cell:
            cell["outputs"] = _deep(cell["outputs"], lambda s: redact_text(s, values))
        cells.append(cell)
    out["cells"] = cells
    out["metadata"] = _deep(nb.get("metadata", {}), lambda s: redact_text(s, values))
    return out
