"""JSONata rules: ``compile`` expressions once, ``Mapping`` for previews on DataFrames.

See docs/rules.md for the supported subset, the jsonatapy fallback and undefined handling.
"""

from __future__ import annotations

from typing import Any

from .expression import UNDEFINED, EvaluationError, EvaluationTimeout, Expression, compile

__all__ = ["compile", "Expression", "EvaluationError", "EvaluationTimeout", "UNDEFINED", "Mapping",
           "to_records"]


def __getattr__(name: str) -> Any:
    if name in ("Mapping", "to_records"):
        from . import mapping
        return getattr(mapping, name)
    raise AttributeError(f"module 'flownb.rules' has no attribute '{name}'")
