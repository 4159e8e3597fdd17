"""Changing a flow's spec without stranding its messages: flownb plan / upgrade, and run's refusal
(embedded runtime; the RabbitMQ side is tests/runtime/amqp/test_upgrade_amqp.py)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

import flownb
from flownb.errors import UpgradeError
from flownb.runtime.local import LocalRuntime
from flownb.runtime.upgrade import make_plan, upgrade

FLOWNB = str(Path(sys.executable).with_name("flownb"))
N = 1750


def _flow(out: Path, middle: str = "slow", last: str = "archive") -> flownb.Flow:
    return flownb.Flow(name="orders", trigger=flownb.step("hook", "webhook", token_env="UPGRADE_HOOK_TOKEN"),
                       steps=[flownb.step(middle, "mapping", fields={"id": "id", "twice": "id * 2"}),
                              flownb.step(last, "csv.write", path=str(out), columns=["id", "twice"])])


def _queued(tmp_path: Path, flow: flownb.Flow) -> Path:
    """A state directory whose first step holds N messages (the flow was stopped before them)."""
    state = tmp_path / "state"
    rt = LocalRuntime(flow, state)
    try:
        rt.feed({"id": i} for i in range(N))
    finally:
        rt.close()
    return state


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FLOWNB, *args], capture_output=True, text=True, timeout=300,
                          env={"UPGRADE_HOOK_TOKEN": "t" * 20, "PATH": "/usr/bin:/bin", "COLUMNS": "200"})


def test_renaming_a_step_with_queued_messages_is_refused_then_upgraded_without_loss(tmp_path):
    out = tmp_path / "out.csv"
    old, new = _flow(out), _flow(out, middle="enrich")
    state = _queued(tmp_path, old)
    old_spec, new_spec = old.save(tmp_path / "old.yaml"), new.save(tmp_path / "new.yaml")

    run = _cli("run", str(new_spec), "--state-dir", str(state), "--until-idle")
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"holds messages for step(s) this spec does not have ('slow': {N:,})" in run.stderr
    assert "flownb upgrade OLD.yaml" in run.stderr and not out.exists()
    # the plan, as far as the state shows it: the step that holds messages, and their spec version
    assert "plan for flow 'orders' (from the state directory):" in run.stderr
    assert f"- step 'slow' removed: {N:,} message(s) would be stranded" in run.stderr
    assert f"{N:,} of {N:,} queued message(s) were produced by another spec version ({old.spec_hash(short=True)}: " \
           f"{N:,})" in run.stderr

    plan = _cli("plan", str(old_spec), str(new_spec), "--state-dir", str(state))
    assert plan.returncode == 1
    assert "? step 'slow' looks renamed to 'enrich' (same position and component): confirm with " \
           "--rename slow=enrich" in plan.stdout
    assert f"- step 'slow' removed: {N:,} message(s) would be stranded" in plan.stdout

    unconfirmed = _cli("upgrade", str(old_spec), str(new_spec), "--state-dir", str(state))
    assert unconfirmed.returncode == 2 and "unconfirmed renames" in unconfirmed.stderr

    up = _cli("upgrade", str(old_spec), str(new_spec), "--state-dir", str(state), "--rename", "slow=enrich")
    assert up.returncode == 0, up.stderr
    assert f"~ step 'slow' → 'enrich': {N:,} message(s) move" in up.stdout
    assert f"moved {N:,} message(s) from 'slow' to 'enrich'" in up.stdout

    run = _cli("run", str(new_spec), "--state-dir", str(state), "--until-idle")
    assert run.returncode == 0, run.stderr
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(int(r["id"]) for r in rows) == list(range(N))
    assert all(int(r["twice"]) == 2 * int(r["id"]) for r in rows)


def test_removing_a_step_that_holds_messages_is_refused(tmp_path):
    out = tmp_path / "out.csv"
    old = _flow(out)
    state = _queued(tmp_path, old)
    new = flownb.Flow(name="orders", trigger=old.trigger, steps=[old.steps[1]])  # 'slow' removed
    with pytest.raises(UpgradeError, match=f"removing step\\(s\\) 'slow': {N:,} would strand their messages"):
        upgrade(old, new, state_dir=state)
    with pytest.raises(UpgradeError, match="holds messages for step"):
        rt = LocalRuntime(new, state)
        try:
            from flownb.runtime.upgrade import check_no_orphans
            check_no_orphans(new, rt.store, "new.yaml")
        finally:
            rt.close()


def test_plan_lists_additions_retry_changes_and_the_cursor():
    old = flownb.Flow(name="f", trigger=flownb.step("src", "csv.poll", path="a.csv", cursor="ts"),
                      steps=[flownb.step("a", "log"), flownb.step("b", "log", retry={"max_attempts": 3})])
    new = flownb.Flow(name="f", trigger=flownb.step("src", "csv.poll", path="a.csv", cursor="updated"),
                      steps=[flownb.step("a", "log"), flownb.step("b", "log", retry={"max_attempts": 9}),
                             flownb.step("c", "log")])
    plan = make_plan(old, new)
    assert (plan.added, plan.removed, plan.renamed, plan.guessed, plan.retry_changed) == (["c"], [], {}, {}, ["b"])
    assert plan.cursor == "kept, but check it: cursor changed, so the saved cursor may not fit the new source"
    renamed = flownb.Flow(name="f", trigger=flownb.step("source", "csv.poll", path="a.csv", cursor="ts"),
                          steps=old.steps)
    assert make_plan(old, renamed).cursor.startswith("lost: the trigger is renamed 'src' → 'source'")
    assert make_plan(old, renamed, {"src": "source"}).cursor == "kept (moved from 'src' to 'source')"
    with pytest.raises(UpgradeError, match="the old spec has no step 'x'"):
        make_plan(old, new, {"x": "c"})
    with pytest.raises(UpgradeError, match="two flows"):
        make_plan(old, flownb.Flow(name="g", trigger=old.trigger, steps=old.steps))


def test_plan_says_when_the_queue_type_changes():
    """``topology:`` classic → quorum cannot be applied to existing queues (RabbitMQ cannot change a
    queue's type): the plan says so and what to do; an unchanged topology says nothing."""
    old = flownb.Flow(name="f", trigger=flownb.step("src", "csv.poll", path="a.csv", cursor="ts"),
                      steps=[flownb.step("a", "log")])
    quorum = old.model_copy(update={"topology": "quorum"})
    lines = make_plan(old, quorum).lines()
    assert [line for line in lines if "topology" in line] == [
        "  ! topology: not set → quorum: on RabbitMQ a queue's type cannot change, and a worker stops with a "
        "TopologyError where the step queues exist as the other type; drain and delete them first, or keep the "
        "old topology (docs/rabbitmq.md, \"Classic queues of an older flownb\")"]
    assert "  ! topology: quorum → classic" in "\n".join(make_plan(quorum, quorum.model_copy(
        update={"topology": "classic"})).lines())
    assert not [line for line in make_plan(quorum, quorum).lines() if "topology" in line]
