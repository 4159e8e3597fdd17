"""The notebooks as committed: what a new user opens first must not show noise or stale errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_kernel_warnings_or_errors_are_stored(path):
    assert len(NOTEBOOKS) == 4
    nb = json.loads(path.read_text())
    bad = []
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            text = "".join(out.get("text", [])) if isinstance(out.get("text"), list) else out.get("text", "")
            if out.get("output_type") == "error" or "[IPKernelApp] WARNING" in text or "Traceback" in text:
                bad.append((i, out.get("output_type"), text[:120]))
    assert bad == []
