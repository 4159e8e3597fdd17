from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from flownb.errors import FlownbError, SpecError
from flownb.schedule import ScheduleInputError, next_fire_times, parse_schedule


def sched(**kw):
    return parse_schedule({"name": "a", "notebook": "/nb.ipynb", "cron": "0 3 * * *", **kw})


def test_bad_cron_says_what_to_write():
    with pytest.raises(ScheduleInputError, match="5 fields") as e:
        sched(cron="every day")
    assert e.value.field == "cron"
    assert isinstance(e.value, SpecError) and isinstance(e.value, FlownbError)


def test_bad_timezone_suggests_nearest():
    with pytest.raises(ScheduleInputError, match="did you mean 'Europe/Berlin'"):
        sched(tz="Europe/Berln")


def test_bad_name():
    with pytest.raises(ScheduleInputError, match="lowercase letters"):
        sched(name="Nightly Report")


def test_fire_times_follow_the_time_zone_across_dst():
    s = sched(cron="30 2 * * *", tz="Europe/Berlin")
    start = datetime(2024, 3, 29, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    times = next_fire_times(s, start, start + 4 * 86400)
    local = [datetime.fromtimestamp(t, ZoneInfo("Europe/Berlin")) for t in times]
    # 2:30 does not exist on 31 March 2024 (clocks jump 2:00 → 3:00): that day's run happens once, at 3:00
    assert [(d.day, d.hour, d.minute) for d in local] == [(29, 2, 30), (30, 2, 30), (31, 3, 0), (1, 2, 30)]
    assert [d.utcoffset().total_seconds() / 3600 for d in local] == [1, 1, 2, 2]


def test_seconds_field_and_window_bounds():
    s = sched(cron="* * * * * */2")
    assert s.has_seconds
    assert next_fire_times(s, 1000.0, 1010.0) == [1002.0, 1004.0, 1006.0, 1008.0, 1010.0]
    assert next_fire_times(s, 1000.0, 1010.0, limit=2) == [1008.0, 1010.0]


def test_next_fire_and_a_huge_window_keep_the_newest():
    from flownb.schedule import next_fire

    s = sched(cron="* * * * * */2")
    assert next_fire(s, 1000.0) == 1002.0 and next_fire(s, 1001.0) == 1002.0
    # thirty years of every-2-seconds fire times: only the newest `limit` are walked and returned
    times = next_fire_times(s, 0.0, 1e9, limit=5)
    assert times == [1e9 - 8, 1e9 - 6, 1e9 - 4, 1e9 - 2, 1e9]
