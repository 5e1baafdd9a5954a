#!/usr/bin/env bash
# Prepare this machine for the tests and the demo; idempotent, and fast when nothing changed.
#   1. Python >= 3.11 able to create venvs (Debian's python3-venv is installed if missing);
#   2. .venv with the dev lock requirements-dev.txt, every file checked against its hash
#      (skipped while .venv/.requirements.sha256 matches; scripts/lock.py writes the lock), and
#      the CLI's `offload` command (`pip install --no-deps -e .`: pyproject.toml);
#   3. Redis reachable at REDIS_URL (default redis://127.0.0.1:6379/0);
#   4. PostgreSQL reachable at DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test),
#      and the URL's database created;
#   5. Node.js >= 18 with npm (Debian's nodejs and npm if missing: aws-cdk-lib runs on it), the
#      pinned CDK CLI, Node BullMQ (tests/node: the compatibility tests), and the Lambdas'
#      dependencies for the Lambda platform;
#   6. with --browser (the test command): Debian's chromium, for the browser test;
#   7. with --checkov (the test command): .venv-checkov with requirements-checkov.txt (checkov,
#      the template scanner of the infra tests, whose pins clash with the dev lock's), each file
#      checked against its hash and skipped while .venv-checkov/.requirements.sha256 matches.
# A local server that is not running is started (installed from Debian's packages first when
# missing): that needs root. Remote URLs are only checked.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exit_on_help "${BASH_SOURCE[0]}" "$@"
cd "$REPO_ROOT"

with_browser=0
with_checkov=0
for arg in "$@"; do
	case "$arg" in
	--browser) with_browser=1 ;;
	--checkov) with_checkov=1 ;;
	*) die "unknown option $arg (setup.sh [--browser] [--checkov])" ;;
	esac
done

REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
DATABASE_URL="${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/test}"
started_ns=$(date +%s%N)

# --- 1 + 2: Python and the venv ---------------------------------------------------------------
if [ -x "$VENV_PY" ] && python_ok "$VENV_PY"; then
	:
else
	if [ -e "$VENV_DIR" ]; then
		[ -f "$VENV_DIR/pyvenv.cfg" ] || die "$VENV_DIR exists but is not a venv; remove it"
		log "$VENV_DIR is broken or too old; recreating it"
		rm -rf "$VENV_DIR"
	fi
	ensure_python
	log "creating $VENV_DIR with $BASE_PYTHON ($("$BASE_PYTHON" --version 2>&1))"
	"$BASE_PYTHON" -m venv "$VENV_DIR"
fi

install_lock "$VENV_PY" requirements-dev.txt

# The CLI's `offload` command (pyproject.toml [project.scripts]): the repository installed in
# the venv, editable and without dependencies (requirements-dev.txt has them); again whenever
# pyproject.toml changes.
cli_stamp="$VENV_DIR/.cli.sha256"
cli_wanted="$(requirements_hash pyproject.toml)"
if [ ! -x "$VENV_DIR/bin/offload" ] || [ "$(cat "$cli_stamp" 2>/dev/null)" != "$cli_wanted" ]; then
	log "installing the offload command (offload_cli) into $VENV_DIR"
	# --no-build-isolation: build with the locked setuptools of the venv, not a fresh download
	"$VENV_PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation \
		-e .
	printf '%s\n' "$cli_wanted" >"$cli_stamp"
fi

# --- 3 + 4: Redis and PostgreSQL ---------------------------------------------------------------
# One probe answers for both (and creates the database) when all is well: the fast path.
probe="$(probe_services "$REDIS_URL" "$DATABASE_URL" --create-db)" ||
	die "could not check the services (is $VENV_DIR complete? remove it and run setup again)"
REDIS_RC=1 PG_RC=1
eval "$probe"
REDIS_WHERE="$REDIS_HOST:$REDIS_PORT"
PG_WHERE="${PG_HOST:-local socket}:$PG_PORT"

case "$REDIS_RC" in
0) ;;
2) die "Redis at $REDIS_WHERE answers but is not usable: $REDIS_ERROR" ;;
*)
	if ! is_local_host "$REDIS_HOST" || [ "$REDIS_SCHEME" != redis ]; then
		die "Redis is not reachable at $REDIS_WHERE (REDIS_URL); start it or fix the URL"
	fi
	log "Redis is not running at $REDIS_WHERE"
	start_local_redis "$REDIS_PORT" "$REDIS_PASSWORD"
	wait_for_service 15 "Redis at $REDIS_WHERE" redis_status "$REDIS_URL"
	;;
esac
log "Redis reachable at $REDIS_WHERE"

case "$PG_RC" in
0) ;;
2) die "PostgreSQL at $PG_WHERE refuses the connection: $PG_ERROR" ;;
*)
	is_local_host "$PG_HOST" ||
		die "PostgreSQL is not reachable at $PG_WHERE (DATABASE_URL); start it or fix the URL"
	log "PostgreSQL is not running at $PG_WHERE"
	need_root "starting PostgreSQL on port $PG_PORT"
	if [ -z "$(pg_bindir)" ]; then
		install_postgresql
	fi
	if ! start_pg_cluster "$PG_PORT"; then
		start_throwaway_pg "$PG_PORT" "${PG_USER:-postgres}"
	fi
	wait_for_service 30 "PostgreSQL at $PG_WHERE" pg_status "$DATABASE_URL" --create-db
	;;
esac
log "PostgreSQL reachable at $PG_WHERE, database $PG_DB"

# --- 5: Node.js, the pinned CDK CLI and Node BullMQ (the compatibility tests) ----------------
ensure_node
ensure_cdk_cli
ensure_node_bullmq

# --- 6: the Lambdas' dependencies for the Lambda platform (cdk synth stays offline after) --
# The cache is keyed by the lock (stacks/bundling.py); the stamp spares the CDK import (seconds)
# when this lock's tree is already there.
lambda_stamp="${OFFLOAD_CDK_CACHE_DIR:-.cdk-cache/lambda-deps}/.offload-lock.sha256"
lambda_lock="$(sha256sum lambdas/requirements.txt | cut -d' ' -f1)"
if [ "$(cat "$lambda_stamp" 2>/dev/null)" != "$lambda_lock" ]; then
	log "fetching the Lambda dependencies (lambdas/requirements.txt) for the Lambda platform into .cdk-cache/"
	JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=18,20 "$VENV_PY" -c \
		"from stacks.bundling import PipLocalBundling; PipLocalBundling().dependencies_dir()"
	printf '%s\n' "$lambda_lock" >"$lambda_stamp"
fi

# --- 7: a browser for the web page's test (Playwright drives it; it never downloads one) -----
if [ "$with_browser" = 1 ]; then
	if [ -x "${OFFLOAD_CHROMIUM:-/usr/bin/chromium}" ]; then
		log "chromium: ${OFFLOAD_CHROMIUM:-/usr/bin/chromium}"
	else
		apt_install chromium
	fi
fi

# --- 8: checkov in a venv of its own (tests/infra/test_stacks_checkov.py runs it) -----------
if [ "$with_checkov" = 1 ]; then
	checkov_py="$CHECKOV_VENV/bin/python"
	if ! { [ -x "$checkov_py" ] && python_ok "$checkov_py"; }; then
		if [ -e "$CHECKOV_VENV" ]; then
			[ -f "$CHECKOV_VENV/pyvenv.cfg" ] || die "$CHECKOV_VENV exists but is not a venv; remove it"
			rm -rf "$CHECKOV_VENV"
		fi
		log "creating $CHECKOV_VENV with the Python of $VENV_DIR"
		"$("$VENV_PY" -c 'import sys; print(sys._base_executable)')" -m venv "$CHECKOV_VENV"
	fi
	install_lock "$checkov_py" requirements-checkov.txt
fi

log "ready in $((($(date +%s%N) - started_ns) / 1000000)) ms"
