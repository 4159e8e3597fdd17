"""Schedules exported with a flow: `flownb export --target k8s --schedules STATE_DIR` writes CronJobs
(validated with kubernetes-validate), copies the notebooks into the image, and the image runs a
CronJob's papermill command for real (Docker)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import kubernetes_validate
import pytest

from flownb import Flow, step
from flownb.cli import main
from flownb.errors import DeployError
from flownb.schedule import ScheduleStore, add_schedule
from flownb.schedule.model import ScheduleInputError

from .conftest import load_yaml_all

NOTEBOOK = Path(__file__).resolve().parents[1] / "schedule" / "data" / "params.ipynb"
K8S_VERSION = "1.30"


@pytest.fixture
def spec(tmp_path) -> Path:
    flow = Flow(name="tick", trigger=step("every-minute", "schedule", cron="* * * * *"),
                steps=[step("show", "log")])
    return flow.save(tmp_path / "flow.yaml")


@pytest.fixture
def state(tmp_path) -> Path:
    nb_dir = tmp_path / "reports"
    nb_dir.mkdir()
    shutil.copy(NOTEBOOK, nb_dir / "daily.ipynb")
    store = ScheduleStore(tmp_path / "state")
    add_schedule(store, nb_dir / "daily.ipynb", cron="0 3 * * *", name="nightly", tz="Europe/Berlin",
                 parameters={"n": 7, "label": "night"}, timeout=600, keep=5)
    add_schedule(store, nb_dir / "daily.ipynb", cron="*/15 * * * *", name="quarterly", catchup="last",
                 allow_overlap=True)
    return tmp_path / "state"


def _cronjobs(out: Path) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in load_yaml_all(out / "k8s" / "schedules.yaml")}


def test_schedules_become_valid_cronjobs_with_their_parameters_and_policies(spec, state, tmp_path):
    from flownb.deploy import export

    out = tmp_path / "dep"
    res = export(spec, out, target="k8s", schedules_dir=state)
    jobs = _cronjobs(out)
    assert sorted(jobs) == ["nb-nightly", "nb-quarterly"]
    for job in jobs.values():
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
        assert job["metadata"]["labels"]["flownb.flow"] == "tick"
    nightly, quarterly = jobs["nb-nightly"]["spec"], jobs["nb-quarterly"]["spec"]
    assert (nightly["schedule"], nightly["timeZone"]) == ("0 3 * * *", "Europe/Berlin")
    assert nightly["concurrencyPolicy"] == "Forbid" and quarterly["concurrencyPolicy"] == "Allow"
    assert "startingDeadlineSeconds" in nightly and "startingDeadlineSeconds" not in quarterly
    assert nightly["successfulJobsHistoryLimit"] == 5
    job = nightly["jobTemplate"]["spec"]
    assert job["activeDeadlineSeconds"] == 600
    container = job["template"]["spec"]["containers"][0]
    assert container["image"] == "flownb-tick:latest"
    cmd = container["command"]
    assert cmd[:2] == ["papermill", "/app/notebooks/daily.ipynb"]
    assert cmd[cmd.index("-k") + 1] == "python3"
    assert json.loads(cmd[cmd.index("-y") + 1]) == {"n": 7, "label": "night"}
    # the notebook goes into the image, with what papermill needs
    assert (out / "notebooks" / "daily.ipynb").read_bytes() == NOTEBOOK.read_bytes()
    assert out / "notebooks" / "daily.ipynb" in res.files
    assert "COPY --chown=10001:10001 notebooks /app/notebooks" in (out / "Dockerfile").read_text()
    assert "!notebooks" in (out / ".dockerignore").read_text()


def test_only_the_named_schedules_are_exported(spec, state, tmp_path):
    from flownb.deploy import export

    export(spec, tmp_path / "dep", target="k8s", schedules_dir=state, schedule_names=["quarterly"])
    assert sorted(_cronjobs(tmp_path / "dep")) == ["nb-quarterly"]


def test_no_schedules_no_cronjobs_and_a_lean_image(spec, tmp_path):
    from flownb.deploy import export

    out = tmp_path / "dep"
    export(spec, out, target="k8s")
    assert not (out / "k8s" / "schedules.yaml").exists() and not (out / "notebooks").exists()
    assert "notebooks" not in (out / "Dockerfile").read_text()
    assert "!notebooks" not in (out / ".dockerignore").read_text()


def test_bad_schedule_selection_is_a_clear_error(spec, state, tmp_path):
    from flownb.deploy import export

    with pytest.raises(ScheduleInputError, match=r"no schedule named 'nightlly'.*did you mean 'nightly'.*quarterly"):
        export(spec, tmp_path / "a", target="k8s", schedules_dir=state, schedule_names=["nightlly"])
    with pytest.raises(ScheduleInputError, match=r"holds no schedules.*flownb schedule add"):
        export(spec, tmp_path / "b", target="k8s", schedules_dir=tmp_path / "nowhere")
    with pytest.raises(ScheduleInputError, match=r"--schedules STATE_DIR"):
        export(spec, tmp_path / "c", target="k8s", schedule_names=["nightly"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_seconds_cron_cannot_be_a_cronjob(spec, tmp_path):
    from flownb.deploy import export

    store = ScheduleStore(tmp_path / "state")
    add_schedule(store, NOTEBOOK, cron="* * * * * */10", name="fast")
    with pytest.raises(DeployError, match="seconds field"):
        export(spec, tmp_path / "dep", target="k8s", schedules_dir=tmp_path / "state")


def test_compose_target_says_where_schedules_go(spec, state, tmp_path, caplog):
    from flownb.deploy import export

    with caplog.at_level(logging.WARNING, logger="flownb.deploy"):
        export(spec, tmp_path / "dep", target="compose", schedules_dir=state)
    assert "CronJobs only" in caplog.text and "flownb schedule serve" in caplog.text
    assert not (tmp_path / "dep" / "k8s").exists()


def test_cli_export_with_schedules(spec, state, tmp_path, capsys):
    out = tmp_path / "dep"
    rc = main(["export", str(spec), "--target", "k8s", "--schedules", str(state), "--schedule", "nightly",
               "-o", str(out)])
    assert rc == 0
    assert "k8s/schedules.yaml" in capsys.readouterr().out
    assert sorted(_cronjobs(out)) == ["nb-nightly"]
    rc = main(["export", str(spec), "--target", "k8s", "--schedules", str(state), "--schedule", "nope",
               "-o", str(tmp_path / "x")])
    assert rc == 2
    assert "no schedule named 'nope'" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.docker
@pytest.mark.slow
def test_the_image_runs_a_cronjob_command(docker_engine, spec, state, tmp_path):
    """Build the exported image offline and run the CronJob's container command in it, as the
    cluster would: papermill executes the notebook with the schedule's parameters."""
    import docker

    from flownb.deploy import DEBIAN_BASE_IMAGE, build_image, ensure_base_image, export

    base = ensure_base_image(DEBIAN_BASE_IMAGE)
    out = tmp_path / "dep"
    export(spec, out, target="k8s", schedules_dir=state, schedule_names=["nightly"])
    tag = build_image(out, base_image=base, tag="flownb-sched-test:pytest", network_mode="none")
    client = docker.from_env()
    try:
        reqs = (out / "wheels" / "requirements.txt").read_text()
        assert "papermill" in reqs and "ipykernel" in reqs
        container = _cronjobs(out)["nb-nightly"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        runs = tmp_path / "runs"  # the CronJob's emptyDir, here a host directory the job user may write
        runs.mkdir()
        runs.chmod(0o777)
        logs = client.containers.run(tag, container["command"], remove=True, network_mode="none",
                                     volumes={str(runs): {"bind": "/runs", "mode": "rw"}},
                                     stdout=True, stderr=True)
        assert (runs / "nightly.ipynb").exists(), logs.decode()[-3000:]
        nb = json.loads((runs / "nightly.ipynb").read_text())
        texts = [o.get("text", "") for c in nb["cells"] for o in c.get("outputs", [])]
        printed = "".join("".join(t) if isinstance(t, list) else t for t in texts)
        result = json.loads(printed.strip().splitlines()[0])
        assert result == {"n": 7, "label": "night", "rate": 0.5, "total": 3.5}
        assert nb["metadata"]["papermill"]["parameters"] == {"n": 7, "label": "night"}
    finally:
        client.images.remove(tag, force=True)

