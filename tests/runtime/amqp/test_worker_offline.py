"""The worker's parts that need no broker (so they carry no ``rabbitmq`` marker): lean imports, the
error for an unreachable broker, the retry ladder."""

from __future__ import annotations

import subprocess
import sys

import pytest

import flownb
from flownb.errors import BrokerError
from flownb.runtime.amqp.topology import connect, pick_level, retry_levels


def test_a_worker_imports_neither_pandas_nor_notebook_libraries():
    code = ("import sys, flownb.cli, flownb.runtime.amqp.worker, flownb.runtime.amqp.dlq;"
            "bad = [m for m in ('pandas', 'ipywidgets', 'papermill', 'numpy') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_unreachable_broker_is_a_clear_error():
    with pytest.raises(BrokerError, match="cannot connect to RabbitMQ at amqp://127.0.0.1:1/"):
        connect("amqp://guest:secret@127.0.0.1:1/")


def test_retry_levels_follow_the_policy():
    policy = flownb.RetryPolicy(max_attempts=6, initial="1s", max="5s")
    assert retry_levels(policy) == [1000, 2000, 4000, 5000]
    assert retry_levels(flownb.RetryPolicy(max_attempts=1)) == []
    assert pick_level([1000, 2000, 4000], 1.5) == 2000
    assert pick_level([1000, 2000, 4000], 60) == 4000
