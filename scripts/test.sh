#!/usr/bin/env bash
# The test command (README): setup, lint, format check, then the test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k worker -x`.
# Lint, format and tests all run even when one fails; the exit status is non-zero if any failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=20

bash scripts/setup.sh
# shellcheck source=/dev/null
source .venv/bin/activate

failed=()
echo "test: ruff check ."
ruff check . || failed+=("ruff check")
echo "test: ruff format --check ."
ruff format --check . || failed+=("ruff format --check")
echo "test: python -m pytest $*"
pytest_rc=0
python -m pytest "$@" || pytest_rc=$?
case "$pytest_rc" in
0) ;;
5) failed+=("pytest (no tests ran)") ;;
*) failed+=("pytest (exit $pytest_rc)") ;;
esac

if [ "${#failed[@]}" -gt 0 ]; then
	printf 'test: FAILED:' >&2
	printf ' [%s]' "${failed[@]}" >&2
	printf '\n' >&2
	exit 1
fi
echo "test: all checks passed"
