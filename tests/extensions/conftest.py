"""Install the two extension packages into the running venv (editable) once per session, and start a
real Jupyter server with jupyter_flownb enabled by its installed config file."""

from __future__ import annotations

import importlib
import os
import secrets
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import free_port

REPO = Path(__file__).resolve().parents[2]
EXTENSIONS = {
    "jupyter_flownb": REPO / "extensions" / "jupyter-flownb",
    "flownb_connector_example": REPO / "extensions" / "flownb-connector-template",
}
BIN = Path(sys.executable).parent


def ensure_installed(module: str) -> None:
    """pip install -e the extension unless it is already installed from this checkout."""
    src = EXTENSIONS[module]
    try:
        mod = importlib.import_module(module)
        if Path(mod.__file__).resolve().is_relative_to(src):
            return
    except ImportError:
        pass
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(src)], check=True)
    # An editable install works through a .pth file, which Python reads only at start-up: read it now.
    for path in site.getsitepackages():
        site.addsitedir(path)
    importlib.invalidate_caches()
    importlib.import_module(module)




class JupyterServer:
    def __init__(self, root: Path, runtime: Path, extra: list[str]):
        self.root, self.runtime = root, runtime
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "JUPYTER_RUNTIME_DIR": str(runtime),
            "JUPYTER_CONFIG_DIR": str(root.parent / "jcfg"),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        env.pop("FLOWNB_JUPYTER_REGISTRY", None)
        self.log = open(root.parent / "jupyter.log", "w")
        self.proc = subprocess.Popen(
            [
                str(BIN / "jupyter"),
                "server",
                "--no-browser",
                "--allow-root",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={self.port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={root}",
                *extra,
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"token {self.token}"}, timeout=30
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited: {Path(self.log.name).read_text()[-3000:]}")
            try:
                if self.client.get("/api/status").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"jupyter server did not start: {Path(self.log.name).read_text()[-3000:]}")

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def jupyter_flownb_installed():
    ensure_installed("jupyter_flownb")


@pytest.fixture(scope="session")
def connector_installed():
    ensure_installed("flownb_connector_example")


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory, jupyter_flownb_installed):
    base = tmp_path_factory.mktemp("jupyter")
    root, runtime = base / "root", base / "runtime"
    root.mkdir()
    runtime.mkdir()
    shutil.copy(REPO / "tests" / "schedule" / "data" / "params.ipynb", root / "params.ipynb")
    shutil.copy(REPO / "tests" / "schedule" / "data" / "slow.ipynb", root / "slow.ipynb")
    server = JupyterServer(root, runtime, [])
    yield server
    server.stop()
