#!/usr/bin/env bash
# The worker and producer suites again, against a redis-server of their own with the queue's
# ACL users (stacks/redis_acl.py, the rules the CDK app gives ElastiCache), default user off:
# the tests and the Lambdas in them talk to Redis as the producer user, the workers they start
# as the worker user, what a test does as the world around the system (losing a job, listing
# clients) as an admin (tests/support/redis_acl.py). What the server refused is printed at the
# end (ACL LOG). scripts/test.sh runs tests/test_redis_acl.py only; this is the full rerun
# (docs/testing.md has its time).
#   scripts/test_redis_acl.sh                 the suites below
#   scripts/test_redis_acl.sh tests/test_x.py other tests instead (tests/... arguments)
#   scripts/test_redis_acl.sh -x -k retry     other arguments go to pytest
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
exit_on_help "${BASH_SOURCE[0]}" "$@"

tests=(
	tests/test_worker_jobs.py tests/test_worker_stalls.py tests/test_worker_runtime.py
	tests/test_bullmq_gaps.py tests/test_scheduled.py
	tests/test_status_attempts.py tests/test_enqueue.py tests/test_enqueue_events.py
	tests/test_api_jobs.py tests/test_api_retry.py tests/test_api_uploads.py
	tests/test_api_requests.py tests/test_api_isolation.py tests/test_api_outages.py
	tests/test_api_domain.py tests/test_redis_acl.py tests/test_flows.py
)
chosen=()
options=()
for arg in "$@"; do
	case "$arg" in
	tests/*) chosen+=("$arg") ;;
	*) options+=("$arg") ;;
	esac
done
[ "${#chosen[@]}" -gt 0 ] && tests=("${chosen[@]}")
denials=$(mktemp)
trap 'rm -f "$denials"' EXIT
status=0
OFFLOAD_TEST_REDIS_ACL=1 OFFLOAD_TEST_REDIS_ACL_LOG="$denials" \
	.venv/bin/python -m pytest -p no:randomly -n "${OFFLOAD_TEST_WORKERS:-4}" \
	"${options[@]}" "${tests[@]}" ||
	status=$?
echo "redis ACL denials (user: what, where, from which command):"
sort "$denials" | uniq -c | sort -rn || true
exit "$status"
