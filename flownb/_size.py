"""Sizes in specs: ``1048576``, ``"512KB"``, ``"1MiB"``, ``"2MB"`` → bytes."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

__all__ = ["parse_size", "Size"]

_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000 ** 2, "mib": 1024 ** 2,
               "gb": 1000 ** 3, "gib": 1024 ** 3}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(value: Any) -> int:
    """Bytes from ``1048576``, ``"512KB"``, ``"1MiB"``, ``"2MB"``; ValueError says the format."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '512KB', '1MB', '1MiB'")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("a size must be positive")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
            if n > 0:
                return n
    raise ValueError(f"{value!r} is not a size; write a number of bytes or e.g. '512KB', '1MB', '1MiB'")


Size = Annotated[int, BeforeValidator(parse_size), PlainSerializer(int, return_type=int)]
