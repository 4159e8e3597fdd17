"""flownb export: papermill run with checked parameters, flow extraction, files written, secrets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from pydantic import BaseModel, ConfigDict

from flownb import Flow, step
from flownb.cli import main
from flownb.components.base import Action
from flownb.deploy import export, flows_in_notebook
from flownb.errors import DeployError, ParameterError
from flownb.registry import register

from .conftest import DATA, load_yaml_all


def _notebook(path: Path, *cells: str, params: str = "x = 1") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nbformat.write(nb, path)
    return path


def test_export_writes_every_file_with_parameters_resolved(hooks_export):
    out = hooks_export
    for name in ("flow.yaml", "params.json", "Dockerfile", ".dockerignore", "docker-compose.yml",
                 "secrets.env.example", "hooks.executed.ipynb", "k8s/configmap.yaml", "k8s/rabbitmq.yaml",
                 "k8s/step-hook.yaml", "k8s/step-show.yaml", "k8s/step-store.yaml"):
        assert (out / name).is_file(), name
    spec = yaml.safe_load((out / "flow.yaml").read_text())
    assert spec["name"] == "hooks"
    assert spec["parameters"] == {"table": "ev2"}
    store = spec["steps"][1]
    assert store["config"]["table"] == "ev2"  # '{{ table }}' resolved
    assert spec["steps"][0]["replicas"] == 3  # -p replicas "3" coerced to int by the default's type
    params = json.loads((out / "params.json").read_text())
    assert params["parameters"] == {"replicas": 3, "table": "ev2"}
    nb = json.loads((out / "hooks.executed.ipynb").read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "replicas = 3" in "".join(injected[0]["source"])
    # the steps' secrets and the Erlang cookie of the RabbitMQ cluster the Kubernetes manifests start
    assert sorted((out / "secrets.env.example").read_text().split()) == ["DB_URL_E2E=", "HOOK_TOKEN_E2E=",
                                                                          "RABBITMQ_ERLANG_COOKIE="]
    assert spec["topology"] == "quorum"  # the notebook's flow leaves it unset: exports run replicated queues


def test_secrets_never_reach_an_exported_file(hooks_export):
    secrets = json.loads((hooks_export / "_secrets.json").read_text())
    files = [p for p in hooks_export.rglob("*") if p.is_file() and p.name != "_secrets.json"]
    assert sorted(str(p.relative_to(hooks_export)) for p in files) == [  # every file export writes
        ".dockerignore", "Dockerfile", "docker-compose.yml", "flow.yaml", "hooks.executed.ipynb",
        "k8s/configmap.yaml", "k8s/monitoring.yaml", "k8s/rabbitmq.yaml", "k8s/step-hook.yaml", "k8s/step-show.yaml",
        "k8s/step-store.yaml", "params.json", "secrets.env.example"]
    for p in files:
        text = p.read_text()
        for value in secrets.values():
            assert value not in text, f"{value!r} leaked into {p.name}"
        if p.suffix == ".ipynb":
            outputs = json.dumps([c.get("outputs", []) for c in json.loads(text)["cells"]])
            assert "s3cr3t-Tok3nValue" not in outputs
    nb = (hooks_export / "hooks.executed.ipynb").read_text()
    assert "token in use: ***" in nb
    assert "Authorization: Bearer ***" in nb


def test_unknown_parameter_lists_the_notebooks_parameters(tmp_path):
    with pytest.raises(ParameterError) as e:
        export(DATA / "hooks.ipynb", tmp_path, params={"tabel": "x"})
    msg = str(e.value)
    assert "no parameter 'tabel'" in msg and "did you mean 'table'" in msg
    for name in ("flow_name", "replicas", "rate", "verbose", "second_flow"):
        assert name in msg
    assert not (tmp_path / "flow.yaml").exists()


@pytest.mark.parametrize("name, value", [("replicas", "many"), ("rate", "fast"), ("verbose", "perhaps")])
def test_values_are_checked_against_the_defaults_types(tmp_path, name, value):
    with pytest.raises(ParameterError, match="does not fit the type of the default"):
        export(DATA / "hooks.ipynb", tmp_path, params={name: value})


def test_typed_values_from_a_params_file_are_checked(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("replicas: 2.5\n")
    with pytest.raises(ParameterError, match="replicas"):
        export(DATA / "hooks.ipynb", tmp_path / "out", params_file=f)


def test_several_flows_need_flow_name(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_TOKEN_E2E", "t0ken-value")
    with pytest.raises(DeployError, match=r"displays 2 flows \(hooks, hooks-copy\); pick one with --flow"):
        export(DATA / "hooks.ipynb", tmp_path / "a", params={"second_flow": True})
    res = export(DATA / "hooks.ipynb", tmp_path / "b", params={"second_flow": "true"}, flow_name="hooks-copy",
                 target="compose")
    assert res.flow.name == "hooks-copy"
    assert (tmp_path / "b" / "docker-compose.yml").exists() and not (tmp_path / "b" / "k8s").exists()


def test_a_notebook_without_flow_is_an_error(tmp_path):
    nb = _notebook(tmp_path / "empty.ipynb", "print('hello')")
    with pytest.raises(DeployError, match="displays no flow"):
        export(nb, tmp_path / "out")


def test_a_failing_cell_reports_where_and_keeps_a_redacted_record(tmp_path):
    nb = _notebook(tmp_path / "bad.ipynb", "print('Authorization: Bearer abcdefgh1234')\n1/0")
    with pytest.raises(DeployError, match=r"failed in cell 1 .*ZeroDivisionError"):
        export(nb, tmp_path / "out")
    partial = json.loads((tmp_path / "out" / "bad.executed.ipynb").read_text())
    outputs = json.dumps([c.get("outputs", []) for c in partial["cells"]])
    assert "ZeroDivisionError" in outputs and "Bearer ***" in outputs and "abcdefgh1234" not in outputs


def test_spec_input_skips_papermill_and_overrides_flow_parameters(tmp_path):
    flow = Flow(name="from-spec", parameters={"table": "a", "n": 1},
                trigger=step("hook", "webhook", token_env="T"),
                steps=[step("store", "sql.upsert", url="sqlite:///data/x.db", table="{{ table }}", key=["id"])])
    src = flow.save(tmp_path / "flow.yaml")
    res = export(src, tmp_path / "out", params={"table": "b", "n": "7"}, target="k8s")
    spec = yaml.safe_load((tmp_path / "out" / "flow.yaml").read_text())
    assert spec["steps"][0]["config"]["table"] == "b" and spec["parameters"]["n"] == 7
    assert res.flow.parameters == {"table": "b", "n": 7}
    with pytest.raises(ParameterError, match="did you mean 'table'"):
        export(src, tmp_path / "out2", params={"tables": "c"})


class _SecretiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str | None = None
    password_env: str | None = None
    note: str = ""


class _Secretive(Action):
    Config = _SecretiveConfig

    def process(self, message, ctx):
        return message.body


register("test.secretive", _Secretive)


def test_a_literal_secret_in_a_config_is_refused(tmp_path):
    flow = Flow(name="leaky", trigger=step("hook", "webhook", token_env="T"),
                steps=[step("call", "test.secretive", password="hunter2")])
    with pytest.raises(DeployError, match="literal secret.*password_env"):
        export(flow.save(tmp_path / "flow.yaml"), tmp_path / "out")


def test_a_secret_value_copied_into_the_spec_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAKY_PW", "correct-horse-battery")
    flow = Flow(name="leaky", trigger=step("hook", "webhook", token_env="T"),
                steps=[step("call", "test.secretive", password_env="LEAKY_PW", note="correct-horse-battery")])
    with pytest.raises(DeployError, match="contains the value of a secret environment variable"):
        export(flow.save(tmp_path / "flow.yaml"), tmp_path / "out")


def test_flows_in_notebook_keeps_one_spec_per_name():
    spec = {"flownb": 1, "name": "a", "trigger": {"name": "t", "component": "webhook"}}
    nb = {"cells": [{"outputs": [{"data": {"application/vnd.flownb.flow+json": spec}}]},
                    {"outputs": [{"data": {"application/vnd.flownb.flow+json": {**spec, "description": "2"}}}]}]}
    assert flows_in_notebook(nb) == [{**spec, "description": "2"}]


def test_cli_export_exit_codes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOOK_TOKEN_E2E", "t0ken-value")
    assert main(["export", str(DATA / "hooks.ipynb"), "-p", "nope", "1", "-o", str(tmp_path / "x")]) == 2
    assert "no parameter 'nope'" in capsys.readouterr().err
    assert main(["export", str(DATA / "hooks.ipynb"), "-p", "table", "t9", "--target", "compose",
                 "--broker-url", "amqp://user:pw0rd123@broker.internal:5672/", "-o", str(tmp_path / "y")]) == 0
    compose = (tmp_path / "y" / "docker-compose.yml").read_text()
    assert "pw0rd123" not in compose and "rabbitmq:3-management" not in compose
    assert "FLOWNB_BROKER_URL=" in (tmp_path / "y" / "secrets.env.example").read_text()
    assert "exported flow 'hooks'" in capsys.readouterr().out


def _files_flow(**trigger) -> Flow:
    config = {"path": "data/orders-*.csv", "cursor": "id", **trigger}
    return Flow(name="files", trigger=step("src", "csv.poll", **config),
                steps=[step("items", "split", path="lines"),  # JSONata, not a file: no volume
                       step("save", "sql.upsert", url="sqlite:///data/db/shop.db", table="t", key=["id"], replicas=2),
                       step("pg", "sql.upsert", url_env="PG_URL_X", table="t", key=["id"]),
                       step("out", "csv.write", path="/srv/exports/out.csv")])


def test_local_files_become_volumes_mounted_in_exactly_the_steps_that_use_them(tmp_path):
    """docs/deploy.md, "Local files": a folder of local files is a compose volume / a Kubernetes
    PersistentVolumeClaim mounted on the same path (the spec unchanged) in the containers of the
    steps that use it; a folder inside another joins it; shared by several pods: ReadWriteMany."""
    from .test_compose import _validate as validate_compose
    from .test_k8s import _check
    src = _files_flow().save(tmp_path / "flow.yaml")
    res = export(src, tmp_path / "out")
    out = tmp_path / "out"
    spec = yaml.safe_load((out / "flow.yaml").read_text())
    assert spec["trigger"]["config"]["path"] == "data/orders-*.csv"  # as written: same path in the container
    assert spec["steps"][1]["config"]["url"] == "sqlite:///data/db/shop.db"

    doc = yaml.safe_load((out / "docker-compose.yml").read_text())
    validate_compose(doc)
    svc = doc["services"]
    assert doc["volumes"] == {"rabbitmq-data": {}, "files-data": {}, "files-srv-exports": {}}
    assert svc["src"]["volumes"] == ["files-data:/app/data"]  # data/ and data/db/: one volume
    assert svc["save"]["volumes"] == ["files-data:/app/data"]
    assert svc["out"]["volumes"] == ["files-srv-exports:/srv/exports"]
    assert "volumes" not in svc["items"] and "volumes" not in svc["pg"]
    # a new named volume takes the owner of the image's folder: the workers' user
    assert "RUN mkdir -p /app/data /srv/exports && chown 10001:10001 /app/data /srv/exports" in \
        (out / "Dockerfile").read_text()

    objs = [o for p in sorted((out / "k8s").glob("*.yaml")) for o in load_yaml_all(p)]
    for o in objs:
        _check(o)
    claims = {o["metadata"]["name"]: o for o in objs if o["kind"] == "PersistentVolumeClaim"}
    assert set(claims) == {"flownb-files-files-data", "flownb-files-files-srv-exports"}
    # src (1 replica) and save (2) share data/: three pods; out alone writes /srv/exports
    assert claims["flownb-files-files-data"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claims["flownb-files-files-srv-exports"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    deps = {o["metadata"]["labels"]["flownb.step"]: o for o in objs if o["kind"] == "Deployment"}
    mounts = {name: {m["mountPath"]: m["name"] for m in d["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
                     if m["name"] != "spec"} for name, d in deps.items()}
    assert mounts == {"src": {"/app/data": "files-data"}, "items": {}, "save": {"/app/data": "files-data"},
                      "pg": {}, "out": {"/srv/exports": "files-srv-exports"}}
    for name in ("src", "save", "out"):
        pod = deps[name]["spec"]["template"]["spec"]
        claim = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                 for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert set(claim.values()) <= set(claims) and len(claim) == 1
        assert pod["securityContext"] == {"fsGroup": 10001}
    # a ReadWriteOnce claim follows its pod: replaced, never rolled (the new pod would wait for the old)
    assert deps["out"]["spec"]["strategy"] == {"type": "Recreate"}
    assert deps["save"]["spec"]["strategy"]["type"] == "RollingUpdate"
    assert [w.split(" are shared by")[0] for w in res.warnings] == [
        "local files in '/app/data' (step 'src' path 'data/orders-*.csv', step 'save' url 'data/db/shop.db')"]
    assert "ReadWriteMany" in res.warnings[0]


@pytest.mark.parametrize("trigger, why", [
    ({"path": "orders.csv"}, "lies in the spec's own folder"),
    ({"path": "*.csv"}, "has no fixed folder before its first wildcard"),
    ({"path": "**/orders.csv"}, "has no fixed folder before its first wildcard"),
    ({"path": "../shared/orders.csv"}, "leaves the spec's folder"),
    ({"path": "/*/orders.csv"}, "would need a volume on '/'"),
    ({"path": "/usr/local/orders.csv"}, "would need a volume on '/usr/local'"),
])
def test_a_local_file_no_volume_can_bring_in_stops_the_export_naming_step_and_field(tmp_path, trigger, why):
    from flownb.errors import ExportError
    src = _files_flow(**trigger).save(tmp_path / "flow.yaml")
    with pytest.raises(ExportError, match=why) as e:
        export(src, tmp_path / "out", target="compose")
    assert (e.value.step, e.value.field) == ("src", "path")
    assert str(e.value).startswith(f"step 'src', field 'path': '{trigger['path']}'")
    assert f"'/data/{trigger['path'].rsplit('/', 1)[-1]}'" in str(e.value)  # what to write instead
    assert not (tmp_path / "out" / "flow.yaml").exists() and not (tmp_path / "out" / "docker-compose.yml").exists()


def test_cli_export_of_a_sqlite_file_beside_the_spec_names_step_field_and_the_fix(tmp_path, capsys):
    flow = Flow(name="files", trigger=step("hook", "webhook", token_env="T"),
                steps=[step("save", "sql.upsert", url="sqlite:///shop.db", table="t", key=["id"])])
    src = flow.save(tmp_path / "flow.yaml")
    assert main(["export", str(src), "-o", str(tmp_path / "out"), "--target", "k8s"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "step 'save', field 'url': 'shop.db' lies in the spec's own folder" in err
    assert "'sqlite:///data/shop.db'" in err and not (tmp_path / "out" / "k8s").exists()


def test_export_writes_quorum_unless_the_spec_says_classic(tmp_path):
    """docs/deploy.md: an exported spec that leaves 'topology:' unset runs quorum queues (the spec in
    the image says so, so every process reading it agrees); one that says classic stays classic, and
    its Kubernetes broker is a single node."""
    flow = Flow(name="topo", trigger=step("hook", "webhook", token_env="T"), steps=[step("work", "log")])
    export(flow.save(tmp_path / "a.yaml"), tmp_path / "a", target="all")
    assert yaml.safe_load((tmp_path / "a" / "flow.yaml").read_text())["topology"] == "quorum"
    assert "RABBITMQ_ERLANG_COOKIE=" in (tmp_path / "a" / "secrets.env.example").read_text()
    sts = [o for o in load_yaml_all(tmp_path / "a" / "k8s" / "rabbitmq.yaml") if o["kind"] == "StatefulSet"]
    assert [s["spec"]["replicas"] for s in sts] == [3]
    classic = flow.model_copy(update={"topology": "classic"})
    export(classic.save(tmp_path / "b.yaml"), tmp_path / "b", target="all")
    assert yaml.safe_load((tmp_path / "b" / "flow.yaml").read_text())["topology"] == "classic"
    sts = [o for o in load_yaml_all(tmp_path / "b" / "k8s" / "rabbitmq.yaml") if o["kind"] == "StatefulSet"]
    assert [s["spec"]["replicas"] for s in sts] == [1]
    assert not (tmp_path / "b" / "secrets.env.example").read_text().count("RABBITMQ_ERLANG_COOKIE")


def _kernel_notebook(path: Path) -> None:
    """A notebook whose flow is named after the kernel it ran in (the kernelspec's env says which)."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os\nfrom flownb import Flow, step\n"
                                  "flow = Flow(name=os.environ.get('FLOWNB_PROBE_KERNEL', 'notebook-kernel'),\n"
                                  "            trigger=step('hook', 'webhook', token_env='UNUSED_TOKEN'),\n"
                                  "            steps=[step('show', 'log')])\nflow"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_export_kernel_runs_the_notebook_in_the_named_kernel(tmp_path, monkeypatch, capsys):
    """`flownb export --kernel NAME`: papermill runs the notebook in that Jupyter kernel instead of the
    one its metadata names; an unknown kernel is an error naming it."""
    kernels = tmp_path / "jupyter" / "kernels" / "flownb-probe"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "flownb probe", "language": "python", "env": {"FLOWNB_PROBE_KERNEL": "probe-kernel"}}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("UNUSED_TOKEN", "x")
    nb = tmp_path / "k.ipynb"
    _kernel_notebook(nb)
    assert main(["export", str(nb), "--kernel", "flownb-probe", "--target", "compose",
                 "-o", str(tmp_path / "probe")]) == 0
    assert yaml.safe_load((tmp_path / "probe" / "flow.yaml").read_text())["name"] == "probe-kernel"
    assert main(["export", str(nb), "--target", "compose", "-o", str(tmp_path / "default")]) == 0
    assert yaml.safe_load((tmp_path / "default" / "flow.yaml").read_text())["name"] == "notebook-kernel"
    assert main(["export", str(nb), "--kernel", "no-such-kernel", "--target", "compose",
                 "-o", str(tmp_path / "bad")]) == 1
    assert "no-such-kernel" in capsys.readouterr().err
