"""DeadLetterWorkbench on the embedded runtime, driven by its buttons: group by error, select rows,
edit a cell, retest with the current rules, replay selected; bad input is a message in the widget.
On RabbitMQ (through ``Monitor.workbench()``): tests/runtime/amqp/test_workbench_amqp.py."""

from __future__ import annotations

import json
import sqlite3

import pytest
from workbench_kit import fixed, make, records

import flownb
from flownb.notebook.dead_letter_workbench import DeadLetterWorkbench
from flownb.runtime.local import LocalRuntime


@pytest.fixture
def failed(tmp_path):
    flow = make(tmp_path / "sink.db")
    with LocalRuntime(flow, tmp_path / "state") as rt:
        for body in records(12):
            rt.submit(body)
        rt.drain()
    return flow, tmp_path / "state", tmp_path / "sink.db"


def test_group_edit_retest_replay_by_clicking(failed):
    flow, state, sink = failed
    wb = DeadLetterWorkbench(flow, state_dir=state)
    assert "4 dead letter(s)" in wb.status.value
    assert wb.groups.options == ("(all errors) (4)", "EvaluationError (4)")
    assert len(wb.rows.options) == 4 and "c0@example.com" in wb.table.value
    wb.retest_button.click()  # the rules as they are: every record dies again
    assert "dead 4" in wb.status.value and "#fbe3e1" in wb.result.value
    # fix one record's data: select it, set amount, retest, replay just that one
    wb.rows.value = (wb.rows.options[1][1],)
    wb.field.value, wb.value.value = "amount", '"30"'
    wb.set_button.click()
    assert "'amount' set to" in wb.status.value and wb.frame.loc[wb.rows.value[0], "amount"] == "30"
    wb.retest_button.click()
    assert "delivered 1" in wb.status.value and "#e3f4e1" in wb.result.value
    wb.replay_button.click()
    assert "replayed 1 dead letter(s), 1 edited" in wb.status.value
    assert len(wb.frame) == 3 and len(wb.rows.options) == 3  # reloaded
    assert wb.rows.rows == 3  # the list is as tall as its rows
    with LocalRuntime(flow, state) as rt:
        rt.drain()
    body = sqlite3.connect(sink).execute("SELECT body FROM seen WHERE n=3").fetchone()[0]
    assert json.loads(body)["total"] == 60
    # the fixed rules, for the rest: all selected by default
    wb.rules = fixed(flow)
    wb.retest_button.click()
    assert "delivered 3" in wb.status.value
    wb.replay_button.click()
    assert "replayed 3 dead letter(s), 0 edited" in wb.status.value and wb.frame.empty


def test_bad_input_is_a_message_never_a_traceback(failed, tmp_path):
    flow, state, _sink = failed
    wb = DeadLetterWorkbench(flow, state_dir=state)
    wb.rows.value = ()
    wb.retest_button.click()
    assert "no rows selected" in wb.status.value and "flownb-error" in wb.status.value
    wb.rows.value = (wb.rows.options[0][1],)
    wb.field.value = ""
    wb.set_button.click()
    assert "name the field" in wb.status.value
    wb.field.value = "_id"
    wb.set_button.click()
    assert "cannot be edited" in wb.status.value
    # replayed behind the widget's back: the click says so, nothing else is replayed
    flownb.replay(wb.frame.iloc[[0]], flow, state_dir=state)
    wb.replay_button.click()
    assert "no such dead letter" in wb.status.value and "nothing was replayed" in wb.status.value
    assert len(flownb.dead_letters(flow, state_dir=state)) == 3
    # a state directory that does not exist: the message at construction says where to look, in the
    # widget's status area (never raised in the notebook); nothing to click but "reload"
    nowhere = tmp_path / "nowhere"
    wb = DeadLetterWorkbench(flow, state_dir=nowhere)
    assert "flownb-error" in wb.status.value
    assert (f"no local state for flow '{flow.name}' at '{nowhere / flow.name}.db'; run the "
            f"flow first") in wb.status.value and "--state-dir it used" in wb.status.value
    assert wb.retest_button.disabled and wb.replay_button.disabled and wb.set_button.disabled
    assert not wb.reload_button.disabled and wb.frame is None
    # reload once the flow has dead letters there: the workbench works
    wb.where["state_dir"] = state
    wb.reload_button.click()
    assert "3 dead letter(s)" in wb.status.value and not wb.retest_button.disabled
    # a spec that does not load: its message, the buttons off
    wb = DeadLetterWorkbench(tmp_path / "missing.yaml", state_dir=state)
    assert "flownb-error" in wb.status.value
    assert (f"cannot load the flow spec '{tmp_path / 'missing.yaml'}': spec file "
            f"'{tmp_path / 'missing.yaml'}' does not exist") in wb.status.value
    assert wb.reload_button.disabled and wb.retest_button.disabled
    with pytest.raises(flownb.FlownbError, match="does not exist"):  # the API, not a click: raised
        wb.reload()
