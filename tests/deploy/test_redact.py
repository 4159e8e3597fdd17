"""The redaction rule of exported notebooks (flownb/deploy/redact.py)."""

import pytest

from flownb.deploy.redact import MASK, redact_notebook, redact_text


@pytest.mark.parametrize("text, secret", [
    ("Authorization: Bearer s3cr3t-Tok3nValue", "s3cr3t-Tok3nValue"),
    ('curl -H "Authorization: Basic dXNlcjpwYXNz"', "dXNlcjpwYXNz"),
    ("token=abcd1234 next", "abcd1234"),
    ('{"password": "hunter22"}', "hunter22"),
    ("api_key: 9a8b7c6d", "9a8b7c6d"),
    ("postgresql://u:pa55word@h/db", "pa55word"),
    ("key ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
    ("aws AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abcdefghijk", "eyJhbGciOiJIUzI1NiJ9"),
    ("x AbCdEfGhIjKlMnOpQrStUvWxYz0123456789 y", "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
])
def test_token_shapes_are_masked(text, secret):
    out = redact_text(text)
    assert secret not in out
    assert MASK in out


@pytest.mark.parametrize("text", [
    "id 3f2b1c9e-5d4a-4b8e-9c1f-2a3b4c5d6e7f",
    "sha 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "42 rows written to orders_out in 0.3s",
    "http://127.0.0.1:8080/hooks/orders",
])
def test_ordinary_text_is_kept(text):
    assert redact_text(text) == text


def test_known_values_are_masked_everywhere_but_images_are_untouched():
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    nb = {"metadata": {"papermill": {"parameters": {"db": "plainvalue-xyz"}}},
          "cells": [{"cell_type": "code", "source": "url = 'plainvalue-xyz'",
                     "outputs": [{"output_type": "stream", "text": "using plainvalue-xyz"},
                                 {"output_type": "display_data",
                                  "data": {"image/png": png, "text/plain": "token: abcdefgh"}}]}]}
    out = redact_notebook(nb, ["plainvalue-xyz", "ab"])  # too-short values are ignored
    text = str(out)
    assert "plainvalue-xyz" not in text
    assert out["cells"][0]["outputs"][1]["data"]["image/png"] == png
    assert out["cells"][0]["outputs"][1]["data"]["text/plain"] == "token: ***"
    assert nb["cells"][0]["source"] == "url = 'plainvalue-xyz'"  # the input is not modified
