"""schedule: cron + time zone through the shared TriggerRunner."""

from __future__ import annotations

import datetime as dt
import time
from zoneinfo import ZoneInfo

import pytest

from flownb.errors import ConfigError

BERLIN = ZoneInfo("Europe/Berlin")


class Clock:
    def __init__(self, start: dt.datetime):
        self.t = start

    def __call__(self) -> dt.datetime:
        return self.t


def runner_at(trigger_runner, start: dt.datetime, **config):
    runner = trigger_runner("schedule", config)
    clock = Clock(start)
    runner.component.now = clock  # the component's clock seam: time is what the test says
    return runner, clock


def test_first_run_has_no_backlog_then_follows_the_cron(trigger_runner):
    runner, clock = runner_at(trigger_runner, dt.datetime(2024, 1, 1, 6, 50, tzinfo=BERLIN),
                              cron="0 7 * * mon-fri", timezone="Europe/Berlin")
    assert runner.next_delay({}) == 0.0
    msgs, _, state = runner.poll({})
    assert msgs == [] and state == {"until": "2024-01-01T06:50:00+01:00"}
    assert runner.next_delay(state) == 600.0
    clock.t = dt.datetime(2024, 1, 1, 7, 0, 0, 5000, tzinfo=BERLIN)
    msgs, _, state = runner.poll(state)
    assert [m.body for m in msgs] == [{"scheduled_for": "2024-01-01T07:00:00+01:00"}]
    assert runner.poll(state)[0] == []  # polled again at once: nothing new
    assert runner.next_delay(state) == pytest.approx(86400 - 0.005)


def test_catchup_emits_each_missed_time_across_dst(trigger_runner):
    runner, clock = runner_at(trigger_runner, dt.datetime(2024, 3, 29, 12, 0, tzinfo=BERLIN),
                              cron="30 2 * * *", timezone="Europe/Berlin")
    _, _, state = runner.poll({})
    clock.t = dt.datetime(2024, 4, 1, 12, 0, tzinfo=BERLIN)   # down over the DST switch
    msgs, _, state = runner.poll(state)
    assert [m.body["scheduled_for"] for m in msgs] == [
        "2024-03-30T02:30:00+01:00", "2024-03-31T03:00:00+02:00", "2024-04-01T02:30:00+02:00"]
    assert state["until"] == "2024-04-01T02:30:00+02:00"


def test_no_catchup_and_max_catchup(trigger_runner):
    start = dt.datetime(2024, 1, 1, 0, 0, tzinfo=dt.UTC)
    latest, clock = runner_at(trigger_runner, start, cron="*/10 * * * *", catchup=False)
    capped, clock2 = runner_at(trigger_runner, start, cron="*/10 * * * *", max_catchup=2)
    s1, s2 = latest.poll({})[2], capped.poll({})[2]
    clock.t = clock2.t = start + dt.timedelta(hours=1, minutes=5)
    assert [m.body["scheduled_for"] for m in latest.poll(s1)[0]] == ["2024-01-01T01:00:00+00:00"]
    assert [m.body["scheduled_for"] for m in capped.poll(s2)[0]] == [
        "2024-01-01T00:50:00+00:00", "2024-01-01T01:00:00+00:00"]


def test_real_clock_every_second(trigger_runner):
    runner = trigger_runner("schedule", {"cron": "* * * * * *"})
    _, _, state = runner.poll({})
    delay = runner.next_delay(state)
    assert 0 < delay <= 1.0
    time.sleep(delay + 0.05)
    msgs, _, state = runner.poll(state)
    assert len(msgs) == 1
    fired = dt.datetime.fromisoformat(msgs[0].body["scheduled_for"])
    assert fired.microsecond == 0 and abs((dt.datetime.now(dt.UTC) - fired).total_seconds()) < 1.5


@pytest.mark.parametrize("config, match", [
    ({"cron": "61 * * * *"}, "invalid cron expression '61 \\* \\* \\* \\*'"),
    ({"cron": "* *"}, "it has 2 field"),
    ({"cron": "0 7 * * *", "timezone": "Europe/Berln"}, "did you mean 'Europe/Berlin'"),
    ({"cron": "0 7 * * *", "interval": "5m"}, "unknown config field"),
])
def test_config_errors(flow_factory, config, match):
    with pytest.raises(ConfigError, match=match):
        flow_factory(("schedule", config)).validate_components()


def test_a_cursor_it_cannot_read_makes_the_poll_fail_loudly_every_interval_not_the_trigger_die(
        trigger_runner, flow_factory, tmp_path, caplog):
    """A schedule whose saved ``until`` is not a date (set by hand): ``next_delay`` answers the
    interval with a WARNING naming the cursor (it raised before, and the embedded runtime's serving
    loop died of it with exit 70), and each poll fails with the reason, counted and logged."""
    from flownb.runtime.local import LocalRuntime

    runner = trigger_runner("schedule", {"cron": "* * * * *"})
    assert runner.next_delay({"until": "garbage"}) == runner.component.interval == 60.0
    assert "cannot tell when to poll next from its cursor (ValueError" in caplog.text
    with pytest.raises(ValueError, match="garbage"):
        runner.poll({"until": "garbage"})

    flow = flow_factory(trigger=("schedule", {"cron": "* * * * *"}), steps=[("log", {})])
    with LocalRuntime(flow, state_dir=tmp_path) as rt:
        with rt.store.transaction() as c:
            rt.store._set_state(c, flow.trigger.name, {"until": "garbage"}, 0.0)
        assert rt.poll_once() == 0
        assert rt.poll_errors == ["ValueError: Invalid isoformat string: 'garbage'"]
        state, next_at = rt.store.get_state(flow.trigger.name)
        assert state == {"until": "garbage"}  # the cursor is left for the user to fix, as it was
        assert next_at == pytest.approx(rt.clock() + 60.0, abs=5)
