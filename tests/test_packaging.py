"""pyproject.toml in the form current setuptools reads without deprecation warnings."""

from __future__ import annotations

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_the_license_is_an_spdx_expression_not_a_toml_table():
    # a TOML table (license = {text = …}) makes setuptools print a deprecation warning at every install
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))  # superseded by it


def test_the_wheel_holds_the_package_with_its_type_marker_and_nothing_else(tmp_path):
    # built from a copy of what the wheel is made of (no build/ left in the repository, none of a
    # stale build/lib read in), examples/ included: a package finder that picked it up would show here
    import shutil
    import subprocess
    import sys
    import zipfile
    from importlib.metadata import version

    repo, src = PYPROJECT.parent, tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(repo / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("flownb", "examples"):
        shutil.copytree(repo / name, src / name, ignore=ignore)
    # the venv's own setuptools when it reads this pyproject.toml (>= 77); else pip's isolated build
    # environment, which the machine's package index serves
    isolation = [] if int(version("setuptools").split(".")[0]) < 77 else ["--no-build-isolation"]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w",
                        str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp_path / "dist").glob("flownb-*.whl")
    entries = zipfile.ZipFile(wheel).namelist()
    assert "flownb/py.typed" in entries
    assert "flownb/__init__.py" in entries and "flownb/runtime/amqp/publish.py" in entries
    strays = [e for e in entries if not e.startswith(("flownb/", "flownb-"))]
    assert strays == [], f"entries outside the package: {strays}"
    assert not [e for e in entries if "examples/" in e]
