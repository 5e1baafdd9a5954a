#!/usr/bin/env bash
# The test command (README): setup, lint, format check, type check, lock check, the tests in
# parallel, then the synth of every environment. docs/testing.md has the tiers and the timings.
#   scripts/test.sh                  everything (what CI runs)
#   scripts/test.sh --fast           the inner loop: unit and integration tiers only, no synth
#   scripts/test.sh -k worker -x     extra arguments go to pytest (and skip the synth step)
#   scripts/test.sh -n0 tests/test_cli.py    one process, for a debugger or a single file
# The tests run on OFFLOAD_TEST_WORKERS pytest-xdist workers (default: three per CPU, at most
# 12: most tests wait on servers and timers, not on the CPU). Lint, format and tests all run
# even when one fails; the exit status is non-zero if any failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
exit_on_help "${BASH_SOURCE[0]}" "$@"
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=18,20

fast=0
if [ "${1:-}" = "--fast" ]; then
	fast=1
	shift
fi
started=$(date +%s)

if [ "$fast" = 1 ]; then
	bash scripts/setup.sh # no browser, no checkov: the e2e and infra tiers are not run
else
	bash scripts/setup.sh --browser --checkov
fi
# shellcheck source=/dev/null
source .venv/bin/activate

cpus="$(nproc 2>/dev/null || echo 2)"
workers="${OFFLOAD_TEST_WORKERS:-$((cpus * 3 > 12 ? 12 : cpus * 3))}"
# loadgroup keeps each xdist group (tests/support/tiers.py) on one worker; no reorder keeps the
# order tiers.py gives (slow tests first).
pytest_args=(-n "$workers" --dist loadgroup --no-loadscope-reorder)
if [ "$fast" = 1 ]; then
	pytest_args+=(-m "unit or integration")
fi

failed=()
echo "test: ruff check ."
ruff check . || failed+=("ruff check")
echo "test: ruff format --check ."
ruff format --check . || failed+=("ruff format --check")
echo "test: mypy (strict on offload/ and offload_cli/: pyproject.toml)"
mypy || failed+=("mypy")
# Every lock recompiled from its .in in a scratch copy (offline from uv's cache when it can).
echo "test: python scripts/lock.py --check"
python scripts/lock.py --check || failed+=("lock.py --check (stale requirements lock)")
echo "test: python -m pytest ${pytest_args[*]} $*"
pytest_rc=0
python -m pytest "${pytest_args[@]}" "$@" || pytest_rc=$?
case "$pytest_rc" in
0) ;;
5) failed+=("pytest (no tests ran)") ;;
*) failed+=("pytest (exit $pytest_rc)") ;;
esac

# The deploy path: the pinned CDK CLI synthesises every environment offline (cdk-nag runs
# inside synth and fails it on any unacknowledged finding), each into cdk.out/<env>.
if [ "$#" -eq 0 ] && [ "$fast" = 0 ]; then
	for env_name in dev prod; do
		echo "test: cdk synth -c env=$env_name"
		bash scripts/cdk.sh synth -c "env=$env_name" --quiet >/dev/null ||
			failed+=("cdk synth -c env=$env_name")
	done
fi

took="$(($(date +%s) - started)) s"
if [ "${#failed[@]}" -gt 0 ]; then
	printf 'test: FAILED in %s:' "$took" >&2
	printf ' [%s]' "${failed[@]}" >&2
	printf '\n' >&2
	exit 1
fi
echo "test: all checks passed in $took"
