"""The broker URL of a cluster: full URLs comma-separated, the short form with several hosts in one
URL (each host inherits scheme, credentials, vhost and query), and a repeatable ``--broker``."""

from __future__ import annotations

import re

import pytest

from flownb.cli import build_parser
from flownb.errors import BrokerError
from flownb.runtime.amqp.topology import _safe_url, broker_urls


@pytest.mark.parametrize("url, nodes", [
    ("amqp://u:p@mq-0:5672/", ["amqp://u:p@mq-0:5672/"]),
    ("amqp://u:p@mq-0:5672/,amqp://u:p@mq-1:5672/", ["amqp://u:p@mq-0:5672/", "amqp://u:p@mq-1:5672/"]),
    ("amqp://u:p@h1,h2:5673,h3/vh?heartbeat=10",
     ["amqp://u:p@h1/vh?heartbeat=10", "amqp://u:p@h2:5673/vh?heartbeat=10", "amqp://u:p@h3/vh?heartbeat=10"]),
    ("amqp://h1,h2", ["amqp://h1", "amqp://h2"]),  # no credentials, no vhost: pika's defaults for each
    ("amqps://u:p%2C@h1:5671,h2:5671/%2F", ["amqps://u:p%2C@h1:5671/%2F", "amqps://u:p%2C@h2:5671/%2F"]),
    (" amqp://a@h1 , h2/v ", ["amqp://a@h1/v", "amqp://a@h2/v"]),
    # the forms mix: a part with :// starts a URL, bare hosts after it belong to it
    ("amqp://u:p@h1/x,amqp://v:q@h2,h3/y", ["amqp://u:p@h1/x", "amqp://v:q@h2/y", "amqp://v:q@h3/y"]),
    ("amqp://u:p@[::1]:5673,[::1]:5674/", ["amqp://u:p@[::1]:5673/", "amqp://u:p@[::1]:5674/"]),
])
def test_broker_urls_give_one_full_url_per_node(url, nodes):
    assert broker_urls(url) == nodes


@pytest.mark.parametrize("url, says", [
    ("", "empty broker URL"),
    (" , ", "empty broker URL"),
    ("h1,amqp://u:p@h2/", "starts with a host without a scheme"),
    ("amqp://u:secret@h1/vh,h2", "the vhost comes after the last host"),
    ("amqp://u:secret@h1,u@h2/vh", "'u@h2' is not a host[:port]"),
])
def test_a_broker_url_that_names_no_node_plainly_is_an_error_without_its_password(url, says):
    with pytest.raises(BrokerError, match=re.escape(says)) as err:
        broker_urls(url)
    assert "secret" not in str(err.value)


def test_errors_and_logs_name_every_node_without_credentials():
    assert _safe_url("amqp://u:secret@h1,h2:5673/vh") == "amqp://h1:5672/vh,amqp://h2:5673/vh"


@pytest.mark.parametrize("argv", [
    ["worker", "f.yaml", "--step", "s"],
    ["dlq", "list", "f.yaml"],
    ["state", "show", "f.yaml"],
    ["backfill", "f.yaml", "--from", "1", "--to", "2"],
    ["recorder", "f.yaml", "--db", "x.db"],
    ["plan", "a.yaml", "b.yaml"],
    ["upgrade", "a.yaml", "b.yaml"],
])
def test_broker_is_repeatable_in_every_command_that_takes_it(argv):
    parser = build_parser()
    args = parser.parse_args([*argv, "--broker", "amqp://u:p@h1/v", "--broker", "amqp://u:p@h2:5673/v"])
    assert args.broker == "amqp://u:p@h1/v,amqp://u:p@h2:5673/v"
    assert broker_urls(args.broker) == ["amqp://u:p@h1/v", "amqp://u:p@h2:5673/v"]
    assert parser.parse_args([*argv, "--broker", "amqp://u:p@h1,h2/v"]).broker == "amqp://u:p@h1,h2/v"
    if argv[0] != "upgrade":  # which needs --broker or --state-dir
        assert parser.parse_args(argv).broker is None  # then FLOWNB_BROKER_URL, as before


def test_a_worker_given_a_broker_url_it_cannot_read_exits_1_instead_of_reconnecting_for_ever(tmp_path):
    """A malformed URL (or FLOWNB_* broker setting) is a TopologyError: a configuration problem the
    worker's reconnect loop does not retry (it did, for ever, warning 'broker unavailable')."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    spec = tmp_path / "flow.yaml"
    spec.write_text("flownb: 1\nname: badurl\n"
                    "trigger: {name: hook, component: webhook, config: {token_env: BADURL_T}}\n"
                    "steps:\n  - {name: out, component: log, config: {}}\n")
    exe = str(Path(sys.executable).with_name("flownb"))
    r = subprocess.run([exe, "worker", str(spec), "--step", "out", "--broker", "amqp://u:secret@h1/vh,h2"],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "BADURL_T": "x"})
    assert r.returncode == 1, r.stderr
    assert "with several hosts in one URL the vhost comes after the last host" in r.stderr
    assert "retrying" not in r.stderr and "secret" not in r.stderr
    r = subprocess.run([exe, "worker", str(spec), "--step", "out"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "BADURL_T": "x", "FLOWNB_QUEUE_TYPE": "quorm"})
    assert r.returncode == 1 and "FLOWNB_QUEUE_TYPE='quorm' is not a queue type" in r.stderr, r.stderr
