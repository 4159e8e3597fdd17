"""The ``webhook`` component's config, and the pure parts: signing, header filtering, body parsing."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flownb.components.webhook import Webhook, WebhookConfig, parse_size
from flownb.errors import ConfigError, SpecError
from flownb.flow import Flow, step
from flownb.registry import get
from flownb.webhook.app import Hook
from flownb.webhook.parse import HttpError, parse_body, public_headers, sign, verify_signature
from flownb.webhook.server import webhook_config


def test_registered_under_webhook():
    assert get("webhook") is Webhook and Webhook.kind == "webhook"


def test_defaults_and_units():
    c = WebhookConfig(token_env="T", max_body="2MiB", tolerance="2m", timeout="1500ms")
    assert (c.max_body, c.tolerance, c.timeout, c.reply) == (2 * 1024 ** 2, 120.0, 1.5, "async")
    assert parse_size("512KB") == 512_000 and parse_size(10) == 10


@pytest.mark.parametrize("config, field", [
    ({}, "token_env"),
    ({"token_env": "T", "reply": "later"}, "reply"),
    ({"token_env": "T", "max_body": "big"}, "max_body"),
    ({"token_env": "s3cr3t-value!"}, "config"),
    ({"token_env": "T", "tokn": "x"}, "tokn"),
])
def test_bad_config_is_a_clear_error(config, field):
    flow = Flow(name="f", trigger=step("hook", "webhook", **config), steps=[step("s", "log")])
    with pytest.raises(ConfigError) as info:
        flow.validate_components()
    assert info.value.step == "hook" and field in str(info.value)


def test_unknown_field_suggests_the_right_one():
    flow = Flow(name="f", trigger=step("hook", "webhook", token_env="T", max_bdy=10), steps=[step("s", "log")])
    with pytest.raises(ConfigError, match="did you mean 'max_body'"):
        flow.validate_components()


def test_missing_or_short_token_says_what_to_do(monkeypatch):
    cfg = WebhookConfig(token_env="WH_TEST_UNSET_TOKEN")
    monkeypatch.delenv("WH_TEST_UNSET_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="is not set; export a random token"):
        Hook.from_env("f", cfg, ingest=None)
    monkeypatch.setenv("WH_TEST_UNSET_TOKEN", "short")
    with pytest.raises(ConfigError, match="at least 16"):
        Hook.from_env("f", cfg, ingest=None)


def test_serving_needs_a_webhook_trigger_and_an_action():
    flow = Flow(name="f", trigger=step("tick", "schedule", cron="* * * * *"), steps=[step("s", "log")])
    with pytest.raises(SpecError, match="not a webhook"):
        webhook_config(flow)
    with pytest.raises(SpecError, match="no action"):
        webhook_config(Flow(name="f", trigger=step("hook", "webhook", token_env="T")))


def test_signature_scheme_is_the_documented_one():
    body, secret, t = b'{"a":1}', "k3y", 1_700_000_000
    expected = hmac.new(b"k3y", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(secret, body, t) == f"t=1700000000,v1={expected}"
    verify_signature(sign(secret, body, t), b"k3y", body, tolerance=300, now=t + 299)
    with pytest.raises(HttpError) as info:
        verify_signature(sign(secret, body, t), b"k3y", body, tolerance=300, now=t + 301)
    assert info.value.status == 401 and "window" in info.value.detail


@given(st.binary(max_size=200), st.binary(min_size=1, max_size=40), st.integers(0, 2 ** 33))
def test_signature_roundtrip_and_any_flip_fails(body, secret, t):
    header = sign(secret, body, t)
    verify_signature(header, secret, body, tolerance=10, now=t)
    with pytest.raises(HttpError):
        verify_signature(header, secret, body + b"x", tolerance=10, now=t)


def test_public_headers_drop_credentials():
    raw = [(b"Authorization", b"Bearer x"), (b"cookie", b"a=1"), (b"x-flownb-signature", b"t=1,v1=a"),
           (b"x-github-token", b"t"), (b"x-client-secret", b"s"), (b"x-trace", b"1"), (b"x-trace", b"2"),
           (b"user-agent", b"curl")]
    assert public_headers(raw, "X-Flownb-Signature") == {"x-trace": "1, 2", "user-agent": "curl"}


@given(st.dictionaries(st.text(max_size=10), st.one_of(st.integers(-2 ** 60, 2 ** 60), st.text(), st.booleans(),
                                                       st.none()), max_size=10))
def test_any_json_object_parses_to_itself(obj):
    import orjson
    assert parse_body(orjson.dumps(obj), "application/json") == obj


def test_retry_after_timestamp_is_bounded():
    with pytest.raises(HttpError, match="malformed"):
        verify_signature("t=" + "9" * 40 + ",v1=ab", b"k", b"", tolerance=10, now=time.time())


@pytest.mark.parametrize("stamp", ["²", "¹²³", "١٢٣", "１２３", "12\u0663"])
def test_non_ascii_digits_in_the_timestamp_are_malformed_not_a_crash(stamp):
    with pytest.raises(HttpError, match="malformed") as info:
        verify_signature(f"t={stamp},v1=00", b"k", b"", tolerance=10, now=time.time())
    assert info.value.status == 401


@given(st.text(max_size=60))
def test_any_signature_header_is_401_or_valid(header):
    try:
        verify_signature(header, b"k", b"", tolerance=10, now=time.time())
    except HttpError as exc:
        assert exc.status == 401
