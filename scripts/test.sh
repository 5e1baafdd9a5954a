#!/usr/bin/env bash
# The test command (README): setup, lint, format check, type check, lock check, then the tests.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k worker -x` (and skip the cdk synth step).
# Lint, format and tests all run even when one fails; the exit status is non-zero if any failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=18,20

bash scripts/setup.sh --browser
# shellcheck source=/dev/null
source .venv/bin/activate

failed=()
echo "test: ruff check ."
ruff check . || failed+=("ruff check")
echo "test: ruff format --check ."
ruff format --check . || failed+=("ruff format --check")
echo "test: mypy (strict on offload/: pyproject.toml)"
mypy || failed+=("mypy")
# Every lock recompiled from its .in in a scratch copy (offline from uv's cache when it can).
echo "test: python scripts/lock.py --check"
python scripts/lock.py --check || failed+=("lock.py --check (stale requirements lock)")
echo "test: python -m pytest $*"
pytest_rc=0
python -m pytest "$@" || pytest_rc=$?
case "$pytest_rc" in
0) ;;
5) failed+=("pytest (no tests ran)") ;;
*) failed+=("pytest (exit $pytest_rc)") ;;
esac

# The deploy path: the pinned CDK CLI synthesises every environment offline (cdk-nag runs
# inside synth and fails it on any unacknowledged finding), each into cdk.out/<env>.
if [ "$#" -eq 0 ]; then
	for env_name in dev prod; do
		echo "test: cdk synth -c env=$env_name"
		bash scripts/cdk.sh synth -c "env=$env_name" --quiet >/dev/null ||
			failed+=("cdk synth -c env=$env_name")
	done
fi

if [ "${#failed[@]}" -gt 0 ]; then
	printf 'test: FAILED:' >&2
	printf ' [%s]' "${failed[@]}" >&2
	printf '\n' >&2
	exit 1
fi
echo "test: all checks passed"
