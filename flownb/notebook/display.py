"""Rich display of flows in Jupyter.

Contract used by ``flownb export``: a displayed Flow's bundle carries
``application/vnd.flownb.flow+json`` = ``flow.spec()`` (the dict that is flow.yaml).
"""

from __future__ import annotations

FLOW_MIME = "application/vnd.flownb.flow+json"


def flow_mimebundle(flow) -> dict:
    steps = " → ".join(f"{s.name} ({s.component})" for s in flow.all_steps)
    return {FLOW_MIME: flow.spec(), "text/plain": f"Flow '{flow.name}': {steps}"}
