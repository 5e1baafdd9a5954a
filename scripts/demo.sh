#!/usr/bin/env bash
# The local worker demo (README): setup, then scripts/worker_demo.py from the venv.
# Extra arguments go to the demo, e.g. `scripts/demo.sh --big-mb 100`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python -m scripts.worker_demo "$@"
