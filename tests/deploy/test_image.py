"""The worker image on the real Docker engine: a Debian base made with debootstrap, a wheelhouse built
on the host, a build with no network at all, a non-root user, no compilers, the lean core only."""

from __future__ import annotations

import pytest

from flownb.deploy import DEBIAN_BASE_IMAGE, build_image, ensure_base_image, export

from .conftest import DATA

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="session")
def base_image(docker_engine):
    return ensure_base_image(DEBIAN_BASE_IMAGE)


def _run(tag: str, script: str) -> str:
    import docker
    client = docker.from_env()
    out = client.containers.run(tag, ["sh", "-c", script], remove=True, network_mode="none")
    return out.decode()


def test_image_builds_offline_and_runs_as_non_root_without_compilers(base_image, tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_TOKEN_E2E", "t0ken-value-xyz")
    out = tmp_path / "dep"
    export(DATA / "hooks.ipynb", out, params={"flow_name": "img-test"}, target="compose")
    import docker
    client = docker.from_env()
    tag = build_image(out, base_image=base_image, tag="flownb-img-test:pytest", network_mode="none")
    try:
        assert (out / "wheels" / "requirements.txt").read_text().startswith("flownb[webhook]==")
        assert any(p.name.startswith("flownb-") for p in (out / "wheels").glob("*.whl"))
        assert client.images.get(tag).attrs["Config"]["User"] == "10001:10001"
        report = _run(tag, "id -u; for c in gcc cc g++ clang make; do command -v $c || true; done; "
                           "python -c 'import flownb.runtime.amqp.worker, flownb.webhook, sys; "
                           "print(sorted(m for m in (\"pandas\", \"papermill\", \"ipywidgets\") "
                           "if m in sys.modules))'; "
                           "pip list 2>/dev/null | grep -ciE '^(pandas|papermill|ipywidgets|jupyterlab) ' || true; "
                           "head -3 /app/flow.yaml; flownb worker --help >/dev/null && echo worker-ok")
        lines = report.split()
        assert lines[0] == "10001"
        assert "[]" in report and "worker-ok" in report
        assert "/gcc" not in report and "/cc" not in report and "/make" not in report
        assert "name: img-test" in report
        assert "\n0\n" in report  # none of the notebook packages is installed
    finally:
        client.images.remove(tag, force=True)


def test_base_image_is_reused(base_image):
    import docker
    before = docker.from_env().images.get(base_image).id
    assert ensure_base_image(DEBIAN_BASE_IMAGE) == base_image
    assert docker.from_env().images.get(base_image).id == before
