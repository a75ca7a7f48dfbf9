#!/usr/bin/env bash
# The test suite: unit tests, in-process pipelines against the goldens in tests/data, gs:// through the
# fake GCS server, and a few CLI runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/venv.sh"
cd "$root"
# Two test processes (CKPTFLOW_TEST_WORKERS=0 for one): every test has its own temporary directory, bucket
# and ports, and no test measures time, so they may share the cores.
exec .venv/bin/python -m pytest tests -q -n "${CKPTFLOW_TEST_WORKERS:-2}" --dist worksteal "$@"
