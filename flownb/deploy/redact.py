"""Redaction of secrets from an executed notebook (the record written next to the export).

The rule lives in one place, :mod:`flownb.secrets` (also used by the runtimes, ``flownb dlq`` and
scheduled runs; docs/secrets.md); this module keeps the export's names for it:

1. every value of an environment variable named by a ``*_env`` config field of the flow (when set in
   the exporting environment, which the notebook kernel inherits), and its common encodings
   (URL-quoted, JSON/HTML-escaped, base64 …), is masked in every cell's source and outputs — dict
   keys included (``display(JSON({token: 1}))``) — and in the metadata (papermill parameters):
   ``[REDACTED:NAME]`` when the variable is known (a :class:`~flownb.secrets.Redactor`), ``***``
   when only plain values are given;
2. in outputs and metadata, anything that looks like a token is replaced by ``***``
   (:func:`flownb.secrets.redact_shapes`):
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

from collections.abc import Iterable

from ..secrets import MASK, Redactor, as_redactor, redact_notebook, redact_shapes, redact_text

__all__ = ["MASK", "redact_text", "redact_values", "redact_notebook", "redact_shapes", "Redactor"]


def redact_values(text: str, values: Redactor | Iterable[str]) -> str:
    """``text`` with the known secret ``values`` (and their encodings) masked; no token shapes."""
    return as_redactor(values).redact(text)
