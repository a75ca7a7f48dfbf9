#!/usr/bin/env bash
# Both directions on Llama-3.1-8B-shaped checkpoints (4 and 8 layers) next to cp; see bench/README.md.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/venv.sh"
exec "$root/.venv/bin/python" "$root/bench/convert.py" "$@"
