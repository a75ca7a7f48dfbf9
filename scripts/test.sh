#!/usr/bin/env bash
# The test suite: unit tests, in-process pipelines against the goldens in tests/data, gs:// through the
# fake GCS server, and a few CLI runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/venv.sh"
cd "$root"
exec .venv/bin/python -m pytest tests -q "$@"
