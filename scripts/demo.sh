#!/usr/bin/env bash
# The local demo (README): setup, then the whole pipeline on this machine until Ctrl-C
# (python -m offload_local). Extra arguments go to it, e.g. `scripts/demo.sh --workers 4`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
exit_on_help "${BASH_SOURCE[0]}" "$@"
bash scripts/setup.sh
exec .venv/bin/python -m offload_local "$@"
