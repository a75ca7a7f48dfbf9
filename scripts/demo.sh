#!/usr/bin/env bash
# The main job on an embedded default: a small generated Llama-3.1-shaped model, converted to
# MaxText (scanned and unscanned) and back to HF with the local multi-process runner, checked bit for bit.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/venv.sh"
cd "$root"
exec .venv/bin/python -m pipeline.demo --workdir "${DEMO_DIR:-demo-out}" "$@"
