#!/usr/bin/env bash
# Create (or reuse) .venv and install flownb with the given extras: scripts/venv.sh [EXTRAS]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$py" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
spec="."
[[ -n "$extras" ]] && spec=".[${extras}]"
stamp=".venv/.installed-${extras:-core}"
# the core is part of every extra: a dev install up to date with pyproject.toml serves scripts/example too
if [[ -z "$extras" && -f .venv/.installed-dev && ! pyproject.toml -nt .venv/.installed-dev ]]; then
  stamp=.venv/.installed-dev
fi
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  .venv/bin/pip install -q -e "$spec"
  touch "$stamp"
fi
# The dev environment also holds the two packages under extensions/ (their tests import them, and an
# editable install's path hook is read only when an interpreter starts, so not from inside pytest).
if [[ "$extras" == *dev* ]]; then
  for ext in extensions/*/; do
    ext_stamp=".venv/.installed-ext-$(basename "$ext")"
    if [[ ! -f "$ext_stamp" || "$ext/pyproject.toml" -nt "$ext_stamp" ]]; then
      .venv/bin/pip install -q --no-deps -e "$ext"
      touch "$ext_stamp"
    fi
  done
fi
