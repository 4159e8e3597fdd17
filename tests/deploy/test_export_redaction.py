"""End to end (papermill runs the real kernel, ``flownb export`` through the CLI): a notebook that
displays the webhook's token as a JSON key and value (``display(JSON({token: 1}))``, nested, in a
list, as a plain dict) is exported with the token in no key, no value and no file; the displays
are kept, their secret masked (docs/secrets.md)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from flownb.cli import main

from .conftest import DATA

pytestmark = [pytest.mark.integration]

#: the export masks the values of the flow's *_env variables as *** (docs/deploy.md, docs/secrets.md)
MASKED = "***"


def _strings(node: Any) -> Iterator[str]:
    """Every string of a JSON document: dict keys as well as values, at any depth."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_a_secret_displayed_as_a_json_key_is_redacted_in_the_exported_notebook(tmp_path, monkeypatch, capsys):
    # lower-case hex: no token *shape*, so only the value of the *_env variable can redact it
    secret = "kiwi-" + uuid.uuid4().hex
    monkeypatch.setenv("KEYS_TOKEN_E2E", secret)
    out = tmp_path / "out"
    assert main(["export", str(DATA / "secret_keys.ipynb"), "--target", "compose", "-o", str(out)]) == 0
    assert "exported flow 'keys'" in capsys.readouterr().out
    executed = json.loads((out / "secret_keys.executed.ipynb").read_text())
    leaks = [s for s in _strings(executed) if secret in s]
    assert not leaks, leaks[:5]
    for p in out.rglob("*"):
        if p.is_file():
            assert secret not in p.read_text(errors="replace"), f"the token leaked into {p.name}"
    # the displays are there, masked where the token was (keys included), not dropped
    outputs = [o for c in executed["cells"] for o in c.get("outputs", [])]
    [as_json] = [o["data"]["application/json"] for o in outputs if "application/json" in o.get("data", {})]
    assert as_json == {MASKED: 1, "nested": {MASKED: {"again": MASKED}}, "list": [MASKED]}
    plain = [o["data"]["text/plain"] for o in outputs if "as a plain dict" in json.dumps(o.get("data", {}))]
    assert plain and MASKED in json.dumps(plain)
