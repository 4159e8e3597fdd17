"""``LocalDeadLetters``: list, show and replay the dead letters of a flow's local state."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from ...errors import RuntimeFailure, SpecError
from ...flow import Flow
from ...secrets import Redactor, redact_dead_letter
from ..core import DeadLetter, DeadLetterStore
from .runtime import dead_letter_from_row
from .store import open_state

__all__ = ["LocalDeadLetters"]


class LocalDeadLetters(DeadLetterStore):
    """The dead letters in ``<state_dir>/<flow>.db``. Replay re-queues a dead letter to the step it
    died at with attempt 1; the next ``flownb run`` processes it."""

    def __init__(self, flow: Flow, state_dir: Path | str = Path(".flownb")):
        self.flow = flow
        path = Path(state_dir) / f"{flow.name}.db"
        if not path.exists() and not (Path(state_dir) / f"{flow.name}.state.json").exists():
            raise RuntimeFailure(f"no local state for flow '{flow.name}' at '{path}'; run the flow first "
                                 f"('flownb run') or pass the --state-dir it used")
        self.store = open_state(Path(state_dir), flow.name, create=False)
        self.redactor = Redactor.from_flow(flow)  # list/show mask secrets (docs/secrets.md)

    def close(self) -> None:
        self.store.close()

    def _check_step(self, step: str | None) -> None:
        if step is not None:
            self.flow.step(step)  # SpecError with did-you-mean for an unknown step

    @staticmethod
    def parse_ids(ids: Iterable[str]) -> list[int]:
        """Dead-letter ids as the store numbers them (also used by replay_edited); SpecError for one
        that is not a number."""
        out = []
        for i in ids:
            try:
                out.append(int(i))
            except ValueError:
                raise SpecError(f"dead letter id {i!r} is not a number; see 'flownb dlq list' for ids",
                                field="id") from None
        return out

    def list(self, step: str | None = None) -> list[DeadLetter]:
        self._check_step(step)
        rows = self.store.dead_rows(step)
        return [redact_dead_letter(dead_letter_from_row(r), self.redactor) for r in rows]

    def show(self, dead_id: str) -> DeadLetter:
        rows = self.store.dead_rows(ids=self.parse_ids([dead_id]))
        if not rows:
            raise SpecError(f"no dead letter with id '{dead_id}'; see 'flownb dlq list' for ids", field="id")
        return redact_dead_letter(dead_letter_from_row(rows[0]), self.redactor)

    def replay(self, step: str | None = None, ids: Iterable[str] | None = None) -> int:
        self._check_step(step)
        wanted = self.parse_ids(ids) if ids else None
        rows = self.store.dead_rows(step, wanted)
        if wanted is not None:
            missing = sorted(set(wanted) - {r[0] for r in rows})
            if missing:
                raise SpecError(f"no dead letter with id(s) {', '.join(map(str, missing))}"
                                f"{f' at step {step!r}' if step else ''}; see 'flownb dlq list'", field="id")
        known = {s.name for s in self.flow.actions}
        gone = sorted({r[1] for r in rows} - known)
        if gone:
            raise SpecError(f"dead letters of step(s) {', '.join(gone)} cannot be replayed: the flow has no "
                            f"such action step any more (steps: {', '.join(sorted(known))})", field="step")
        return self.store.replay([(r[0], r[1], r[3]) for r in rows], time.time())
