"""Parity suite: every flow in ``flows/`` run four ways must give the same outputs, sink contents
and dead letters (normalized: ids, timestamps, ports and temp paths aside; see parity_runner.py).

Each (flow, path) test compares its path's result with the flow's reviewed ``expected.json``, so the
paths are independent of each other (they can run in parallel processes) and any two that pass
agree exactly. ``FLOWNB_PARITY_WRITE=<path>`` writes ``expected.json`` of a new case from that
path's result — review it by hand before committing.

    .venv/bin/python -m pytest tests/parity -p no:cacheprovider     # the table is printed at the end
"""

from __future__ import annotations

import difflib
import os

import pytest
from parity_runner import (
    MY_URL,
    PATHS,
    PG_URL,
    broker_up,
    case_names,
    dumps,
    expressions,
    load_case,
    mqtt_up,
    redis_up,
    run_path,
)

from flownb.rules import compile

PATH_MARKS = {"amqp": [pytest.mark.integration, pytest.mark.rabbitmq]}


def _params():
    for name in case_names():
        case = load_case(name)
        for path in PATHS:
            if path == "preview" and not case.previewable:
                continue  # only flows made of mapping/filter steps can be previewed
            marks = list(PATH_MARKS.get(path, []))
            if case.db == "postgres":
                marks += [pytest.mark.integration, pytest.mark.postgres]
            if case.db == "mysql":
                marks += [pytest.mark.integration, pytest.mark.mysql]  # MariaDB on 127.0.0.1:3306
            if case.uses_redis:
                marks += [pytest.mark.integration, pytest.mark.redis]  # Redis on 127.0.0.1:6379
            if case.uses_mqtt:
                marks += [pytest.mark.integration, pytest.mark.mqtt]  # Mosquitto on 127.0.0.1:1883
            if case.uses_http or case.targets:
                marks.append(pytest.mark.integration)  # a real HTTP server (flownb.testing.HttpTarget)
            if path in case.xfail:
                marks.append(pytest.mark.xfail(strict=True, reason=case.xfail[path]))
            unique = list({m.mark.name + repr(m.mark.kwargs): m for m in marks}.values())
            yield pytest.param(name, path, marks=unique, id=f"{name}-{path}")


def _db_up(url: str) -> bool:
    import sqlalchemy as sa
    try:
        engine = sa.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.mark.timeout(150)
@pytest.mark.parametrize("name,path", list(_params()))
def test_parity(name, path, tmp_path):
    case = load_case(name)
    if path == "amqp" and not broker_up():
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    if case.db == "postgres" and not _db_up(PG_URL):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432 (db test, trust auth)")
    if case.db == "mysql" and not _db_up(MY_URL):
        pytest.skip("MariaDB is not running on 127.0.0.1:3306 (db test; scripts/services starts it)")
    if case.uses_redis and not redis_up():
        pytest.skip("Redis is not running on 127.0.0.1:6379 (scripts/services starts it)")
    if case.uses_mqtt and not mqtt_up():
        pytest.skip("Mosquitto is not running on 127.0.0.1:1883 (scripts/services starts it)")
    result = run_path(case, path, tmp_path)
    if case.expected is None:
        if os.environ.get("FLOWNB_PARITY_WRITE") == path:
            (case.dir / "expected.json").write_text(dumps(result) + "\n")
        pytest.fail(f"{name}: no expected.json; the {path} path gave:\n{dumps(result)}")
    if result != case.expected:
        diff = "\n".join(difflib.unified_diff(dumps(case.expected).splitlines(), dumps(result).splitlines(),
                                              "expected.json", path, lineterm="", n=2))
        pytest.fail(f"{name}: the {path} path differs from expected.json:\n{diff}", pytrace=False)


@pytest.mark.parametrize("name", case_names())
def test_case_is_well_formed(name):
    """The spec validates, the sample is there, and the JSONata engines are the ones the case says."""
    case = load_case(name)
    case.flow.validate_components()
    given = [x is not None for x in (case.sample, case.sample_csv, case.sample_sql)]
    assert sum(given) == 1, "give one of sample.json, sample.csv, sample.sql"
    used = {compile(e).engine for e in expressions(case.flow)}
    want = case.meta.get("engines")
    if want == "both":
        assert used == {"compiled", "jsonatapy"}, used
    elif want:
        assert used == {want}, used


def test_the_suite_covers_every_built_in_action_both_engines_retries_and_dead_letters():
    cases = [load_case(n) for n in case_names()]
    assert len(cases) >= 15
    components = {s.component for c in cases for s in c.flow.actions}
    assert {"mapping", "filter", "split", "python", "log", "csv.write", "sql.upsert", "http.request",
            "route"} <= components
    from flownb.components.base import Action
    from flownb.registry import available, get
    built_in = {k for k in available() if get(k).__module__.startswith("flownb.components.")
                and issubclass(get(k), Action)}
    assert built_in - components == set(), "every built-in action runs the four ways: add a case for these"
    routes = [s.route for c in cases for s in c.flow.actions if s.route is not None]
    assert {r.mode for r in routes} == {"first", "all"}, "route steps of both modes"
    assert any(r.default is not None for r in routes) and any(r.default is None for r in routes), \
        "a route with a default branch and one whose unmatched messages are filtered"
    dbs = {c.db for c in cases if any(s.component == "sql.upsert" for s in c.flow.steps)}
    assert dbs >= {"sqlite", "postgres", "mysql"}
    engines = {compile(e).engine for c in cases for e in expressions(c.flow)}
    assert engines == {"compiled", "jsonatapy"}
    outcomes = [d for c in cases if c.expected for d in c.expected["dead_letters"]]
    assert any(d["retryable"] and d["attempt"] > 1 for d in outcomes), "a dead letter after retries"
    assert any(not d["retryable"] for d in outcomes), "a dead letter at once"
    assert any(t.get("fail_first") for c in cases for t in c.targets.values()), "a target that recovers"
