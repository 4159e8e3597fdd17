"""nbval settings for the example notebooks: their sanitizer, and sanitizing of JSON outputs.

``--nbval-lax`` compares only cells marked ``# NBVAL_CHECK_OUTPUT``. Several of those show values
that differ on every run (message ids, timestamps, timings, a temporary path): sanitize.cfg names
them, and is used unless ``--nbval-sanitize-with`` names another file. nbval sanitizes text only, and
a flow's ``application/vnd.flownb.flow+json`` output is a dict holding notebook 04's temporary CRM
path, so JSON outputs are sanitized as their canonical JSON text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nbval.plugin import IPyNbCell

SANITIZE = Path(__file__).resolve().parent / "sanitize.cfg"

_sanitize_text = IPyNbCell.sanitize


def _sanitize(self: IPyNbCell, s: Any) -> Any:
    if isinstance(s, (dict, list)):
        return json.loads(_sanitize_text(self, json.dumps(s, sort_keys=True)))
    return _sanitize_text(self, s)


def pytest_configure(config: Any) -> None:
    if getattr(config.option, "nbval_sanitize_with", "absent") is None:
        config.option.nbval_sanitize_with = str(SANITIZE)
    IPyNbCell.sanitize = _sanitize
