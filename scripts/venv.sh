#!/usr/bin/env bash
# Creates or reuses .venv in the repo root with ckptflow and its test extras installed.
# Re-installs only when setup.py changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.ckptflow-installed"
want="$(sha256sum setup.py | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  .venv/bin/python -c "import apache_beam, tensorstore, orbax.checkpoint, pipeline.to_maxtext"
  echo "$want" > "$stamp"
fi
