import kubernetes_validate
import pytest
import yaml

from flownb.errors import DeployError
from flownb.schedule import cronjob_manifests, parse_schedule


def sched(**kw):
    base = {
        "name": "nightly",
        "notebook": "/proj/notebooks/report.ipynb",
        "cron": "0 3 * * *",
        "tz": "Europe/Berlin",
        "parameters": {"n": 5, "label": "prod", "rate": 0.25},
        "timeout": 900,
    }
    return parse_schedule({**base, **kw})


def validate(manifest: dict) -> None:
    # round-trip through YAML: what a user applies is the YAML text
    kubernetes_validate.validate(yaml.safe_load(yaml.safe_dump(manifest)), "1.30.0", strict=True)


def test_cronjob_carries_schedule_timezone_parameters_deadline_and_policy():
    [m] = cronjob_manifests([sched()], "registry.local/flow:1", namespace="jobs", notebook_root="/proj")
    validate(m)
    spec = m["spec"]
    assert (m["kind"], m["metadata"]["name"], m["metadata"]["namespace"]) == ("CronJob", "nb-nightly", "jobs")
    assert (spec["schedule"], spec["timeZone"], spec["concurrencyPolicy"]) == (
        "0 3 * * *",
        "Europe/Berlin",
        "Forbid",
    )
    job = spec["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] == 900
    [c] = job["template"]["spec"]["containers"]
    assert c["image"] == "registry.local/flow:1"
    assert c["command"][:2] == ["papermill", "/app/notebooks/report.ipynb"]
    assert yaml.safe_load(c["command"][c["command"].index("-y") + 1]) == {
        "n": 5,
        "label": "prod",
        "rate": 0.25,
    }
    assert spec["startingDeadlineSeconds"] == 60  # catchup none: a late run is dropped


def test_overlap_catchup_and_history_limits():
    a, b = cronjob_manifests(
        [
            sched(name="a", allow_overlap=True, catchup="last", keep=3),
            sched(name="b", catchup="all", parameters={}),
        ],
        "img:1",
        env_from_secret="creds",
    )
    for m in (a, b):
        validate(m)
    assert a["spec"]["concurrencyPolicy"] == "Allow" and "startingDeadlineSeconds" not in a["spec"]
    assert a["spec"]["successfulJobsHistoryLimit"] == 3
    cb = b["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert "-y" not in cb["command"] and cb["envFrom"] == [{"secretRef": {"name": "creds"}}]
    assert cb["command"][1] == "/app/report.ipynb"  # no notebook_root: the file name under workdir


def test_validator_catches_a_broken_manifest():
    [m] = cronjob_manifests([sched()], "img:1")
    m["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] = "soon"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(m, "1.30.0", strict=True)


def test_seconds_schedules_cannot_be_exported():
    with pytest.raises(DeployError, match="seconds field"):
        cronjob_manifests([sched(cron="* * * * * */5")], "img:1")


def test_catchup_all_exports_as_last_with_a_warning(caplog):
    """docs/schedule.md: `all` cannot be expressed as a CronJob and exports as `last`, with a warning."""
    import logging
    with caplog.at_level(logging.WARNING, logger="flownb"):
        [as_all] = cronjob_manifests([sched(catchup="all")], "img:1")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "catchup=all cannot be expressed as a CronJob" in caplog.records[0].getMessage()
    assert "'nightly'" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flownb"):
        [as_last] = cronjob_manifests([sched(catchup="last")], "img:1")
    assert caplog.records == []  # only `all` warns
    validate(as_all)
    assert "startingDeadlineSeconds" not in as_all["spec"]  # as last: Kubernetes starts the newest missed run
    assert as_all["metadata"]["annotations"].pop("flownb/catchup") == "all"  # what was asked, recorded
    assert as_last["metadata"]["annotations"].pop("flownb/catchup") == "last"
    assert as_all == as_last
