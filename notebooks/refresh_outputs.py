"""Re-execute the example notebooks in place so their NBVAL_CHECK_OUTPUT cells hold current outputs.

Run: .venv/bin/python notebooks/refresh_outputs.py (after changing a notebook or the rules engine).
"""
from pathlib import Path

import nbformat
from nbclient import NotebookClient

for p in sorted(Path(__file__).resolve().parent.glob("*.ipynb")):
    nb = nbformat.read(p, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(p.parent)}}).execute()
    nb.metadata.pop("widgets", None)  # widget state is volatile; the views render live in Lab
    # a kernel's transport warning (papermill's kernel) is noise, not a result; only code cells have outputs
    for cell in (c for c in nb.cells if c.cell_type == "code"):
        cell["outputs"] = [o for o in cell.get("outputs", []) if not (
            o.get("output_type") == "stream" and "[IPKernelApp] WARNING" in o.get("text", ""))]
    nbformat.write(nb, p)
    print("executed", p.name)
