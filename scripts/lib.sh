# shellcheck shell=bash
# Helpers for scripts/setup.sh (sourced, not run). Everything here is idempotent.
#
# Service checks run with the project's venv Python (stdlib sockets for redis://, redis-py for
# rediss://, psycopg for PostgreSQL), so they read every URL form the code does (TLS, passwords,
# IPv6 hosts) and need no client tools (redis-cli, pg_isready) installed.

REPO_ROOT="${REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
VENV_DIR="${VENV_DIR:-$REPO_ROOT/.venv}"
VENV_PY="$VENV_DIR/bin/python"
# checkov's own venv (its pins clash with the dev venv's): scripts/setup.sh --checkov.
CHECKOV_VENV="${CHECKOV_VENV:-$REPO_ROOT/.venv-checkov}"
MIN_PYTHON="3.11"
# Throwaway PostgreSQL clusters (one per port) live here when no cluster serves the URL's port.
OFFLOAD_PG_ROOT="${OFFLOAD_PG_ROOT:-/var/lib/offload-pg}"

# exit_on_help SCRIPT ARG...: with -h or --help first, prints SCRIPT's usage (its header comment,
# from the line after the shebang to the first line that is not a comment) and exits 0, before
# the script does anything.
exit_on_help() {
	local script="$1"
	shift
	case "${1:-}" in
	-h | --help) ;;
	*) return 0 ;;
	esac
	printf 'usage: bash scripts/%s [options]\n' "$(basename "$script")"
	sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$script" | grep -v '^shellcheck '
	exit 0
}

log() { printf 'setup: %s\n' "$*"; }
warn() { printf 'setup: warning: %s\n' "$*" >&2; }
die() {
	printf 'setup: error: %s\n' "$*" >&2
	exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# need_root WHAT: fail with a clear message unless root (WHAT says what needs root).
need_root() {
	is_root && return 0
	die "$1 needs root. Run: sudo -E bash scripts/setup.sh  (or do it yourself and run setup again)"
}

_APT_UPDATED=0
# apt_install PKG...: Debian packages, non-interactive, without recommends; apt-get update once.
apt_install() {
	need_root "installing $*"
	command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* yourself"
	if [ "$_APT_UPDATED" = 0 ]; then
		log "apt-get update"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		_APT_UPDATED=1
	fi
	log "apt-get install $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# Python

# python_ok PY: PY exists and is >= MIN_PYTHON.
python_ok() {
	"$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

# python_has_venv PY: PY can create a venv with pip (Debian splits ensurepip into python3-venv).
python_has_venv() {
	"$1" -c 'import venv, ensurepip' >/dev/null 2>&1
}

# find_python: print the first Python >= MIN_PYTHON (PYTHON, then the usual names).
find_python() {
	local candidate
	for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
		[ -n "$candidate" ] || continue
		command -v "$candidate" >/dev/null 2>&1 || continue
		if python_ok "$candidate"; then
			command -v "$candidate"
			return 0
		fi
	done
	return 1
}

# ensure_python: set BASE_PYTHON to a Python >= MIN_PYTHON that can create venvs, installing it
# if needed. (A variable, not output: in a $(...) subshell apt_install would forget that it
# already ran apt-get update.)
ensure_python() {
	local py version
	if ! py="$(find_python)"; then
		log "no Python >= $MIN_PYTHON found; installing Debian's python3"
		apt_install python3 python3-venv
		py="$(find_python)" || die "Python >= $MIN_PYTHON is required (Debian's python3 is older)"
	fi
	if ! python_has_venv "$py"; then
		version="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
		log "$py cannot create venvs; installing python$version-venv"
		apt_install "python$version-venv"
		python_has_venv "$py" || die "$py still cannot create a venv (ensurepip missing)"
	fi
	BASE_PYTHON="$py"
}

# install_lock PYTHON LOCK: install the hash-locked LOCK into PYTHON's venv unless the venv's
# stamp (.requirements.sha256: requirements_hash) says it already holds exactly that. The lock
# pins every package with its hashes: --require-hashes refuses anything else (an unpinned
# dependency, a file whose hash changed).
install_lock() {
	local python="$1" lock="$2" venv stamp wanted
	venv="$(dirname "$(dirname "$python")")"
	stamp="$venv/.requirements.sha256"
	wanted="$(VENV_PY="$python" requirements_hash "$lock")"
	if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
		log "$venv up to date ($("$python" --version 2>&1))"
		return
	fi
	log "installing $lock into $venv"
	rm -f "$stamp"
	"$python" -m pip install --quiet --disable-pip-version-check --require-hashes -r "$lock"
	printf '%s\n' "$wanted" >"$stamp"
}

# requirements_hash FILE: sha256 over FILE, every file it includes (-r/-c, recursively) and the
# venv's Python version, so any change to what would be installed triggers a reinstall.
requirements_hash() {
	"$VENV_PY" - "$1" <<'PY'
import hashlib, pathlib, sys

digest = hashlib.sha256(sys.version.encode())
seen = set()

def visit(path: pathlib.Path) -> None:
    path = path.resolve()
    if path in seen:
        return
    seen.add(path)
    text = path.read_bytes()
    digest.update(str(path).encode() + b"\0" + text + b"\0")
    for line in text.decode().splitlines():
        parts = line.split("#", 1)[0].split()
        for flag in ("-r", "--requirement", "-c", "--constraint"):
            if len(parts) == 2 and parts[0] == flag:
                visit(path.parent / parts[1])
            elif len(parts) == 1 and parts[0].startswith(flag + "="):
                visit(path.parent / parts[0].split("=", 1)[1])

visit(pathlib.Path(sys.argv[1]))
print(digest.hexdigest())
PY
}

# ---------------------------------------------------------------------------------------------
# URLs and reachability (run with the venv's Python)

# _probe MODE ARGS: one program for every check: `probe` prints shell assignments (eval them) describing both URLs
# and whether their servers answer; `redis URL` / `pg URL [--create-db]` check one server.
# Status codes: 0 = usable, 1 = nothing listening, 2 = listening but unusable (reason on
# stderr, or in *_ERROR). Plain redis:// is checked over a raw socket and psycopg is imported
# only for PostgreSQL, which keeps a no-op setup run well under a second.
_probe() {
	"$VENV_PY" - "$@" <<'PY'
import shlex
import socket
import sys
from urllib.parse import unquote, urlsplit


def redis_parts(url):
    parts = urlsplit(url)
    return {
        "scheme": parts.scheme,
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
    }


def _resp(*args):
    out = b"*%d\r\n" % len(args)
    for arg in args:
        data = arg.encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out


def check_redis(url):
    p = redis_parts(url)
    if p["scheme"] != "redis":  # rediss:// (TLS): let redis-py do it
        import redis

        try:
            redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=3).ping()
        except redis.AuthenticationError as exc:
            return 2, str(exc)
        except redis.ConnectionError:
            return 1, ""
        except redis.RedisError as exc:
            return 2, str(exc)
        return 0, ""
    try:
        sock = socket.create_connection((p["host"], p["port"]), timeout=2)
    except OSError:
        return 1, ""
    try:
        with sock, sock.makefile("rb") as reader:
            sock.settimeout(3)
            if p["password"]:
                auth = [p["user"], p["password"]] if p["user"] else [p["password"]]
                sock.sendall(_resp("AUTH", *auth))
                reply = reader.readline().decode(errors="replace").strip()
                if not reply.startswith("+OK"):
                    return 2, reply
            sock.sendall(_resp("PING"))
            reply = reader.readline().decode(errors="replace").strip()
    except OSError as exc:
        return 2, f"no answer to PING ({exc})"
    return (0, "") if reply == "+PONG" else (2, reply or "no answer to PING")


def pg_parts(url):
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    user = params.get("user") or ""
    return {
        "host": params.get("host") or "",
        "port": int(params.get("port") or 5432),
        "user": user,
        "db": params.get("dbname") or user or "postgres",
    }


def check_pg(url, create_db=False):
    import psycopg
    from psycopg import sql

    p = pg_parts(url)
    if p["host"] and not p["host"].startswith("/"):
        try:
            socket.create_connection((p["host"], p["port"]), timeout=2).close()
        except OSError:
            return 1, ""
    conn, error = None, None
    for maintenance in ("postgres", "template1"):
        try:
            conn = psycopg.connect(url, dbname=maintenance, connect_timeout=5, autocommit=True)
            break
        except psycopg.OperationalError as exc:
            error = str(exc).strip()
            if "does not exist" not in error:
                break
    if conn is None:
        if "No such file" in error or "Connection refused" in error:
            return 1, ""
        if "password" in error:
            error += (
                "\n  hint: put the password in DATABASE_URL, or trust 127.0.0.1 for this user"
                " in the server's pg_hba.conf (setup never changes an existing server)"
            )
        return 2, error
    with conn:
        db = p["db"]
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone()
        if create_db and row is None:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
            except psycopg.errors.DuplicateDatabase:
                pass
            except psycopg.Error as exc:
                return 2, f"cannot create database {db}: {exc}".strip()
            print(f"setup: created database {db}", file=sys.stderr)
    return 0, ""


def main(argv):
    mode = argv[0]
    if mode == "redis":
        rc, error = check_redis(argv[1])
    elif mode == "pg":
        rc, error = check_pg(argv[1], "--create-db" in argv[2:])
    else:  # probe REDIS_URL DATABASE_URL [--create-db]
        values = {}
        for prefix, url, parts, check in (
            ("REDIS", argv[1], redis_parts, check_redis),
            ("PG", argv[2], pg_parts, lambda u: check_pg(u, "--create-db" in argv[3:])),
        ):
            for key, value in parts(url).items():
                values[f"{prefix}_{key.upper()}"] = value
            values[f"{prefix}_RC"], values[f"{prefix}_ERROR"] = check(url)
        for key, value in values.items():
            print(f"{key}={shlex.quote(str(value))}")
        return 0
    if error and rc:
        print(error, file=sys.stderr)
    return rc


sys.exit(main(sys.argv[1:]))
PY
}

# probe_services REDIS_URL DATABASE_URL [--create-db]: print shell assignments (REDIS_HOST,
# REDIS_PORT, REDIS_SCHEME, REDIS_PASSWORD, REDIS_RC, REDIS_ERROR, PG_HOST, PG_PORT, PG_USER,
# PG_DB, PG_RC, PG_ERROR).
probe_services() { _probe probe "$@"; }
redis_status() { _probe redis "$@"; }
pg_status() { _probe pg "$@"; }

# is_local_host HOST: a host this machine can start a server for ("" = the local socket).
is_local_host() {
	case "$1" in
	127.0.0.1 | localhost | ::1 | "" | /*) return 0 ;;
	*) return 1 ;;
	esac
}

# wait_until SECONDS CMD...: retry CMD every 0.2 s until it succeeds or SECONDS pass.
wait_until() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" 2>/dev/null; do
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.2
	done
}

# wait_for_service SECONDS NAME CHECK URL [ARGS]: wait for a server just started. Retries while
# nothing listens (status 1) or PostgreSQL is still starting up; fails at once, with the
# server's reason, when it answers but refuses (status 2).
wait_for_service() {
	local seconds="$1" name="$2" check="$3" url="$4" deadline rc error
	shift 4
	deadline=$((SECONDS + seconds))
	while :; do
		rc=0
		error="$("$check" "$url" "$@" 2>&1 >/dev/null)" || rc=$?
		case "$rc" in
		0) return 0 ;;
		2) [[ "$error" == *"starting up"* ]] || die "$name answers but refuses: $error" ;;
		esac
		[ "$SECONDS" -lt "$deadline" ] || die "$name does not answer ${seconds} s after its start"
		sleep 0.2
	done
}

# ---------------------------------------------------------------------------------------------
# Redis

# start_local_redis PORT [PASSWORD]: a throwaway daemonized Redis (nothing saved to disk), as CI
# and the developer machines start it.
start_local_redis() {
	local port="$1" password="${2:-}" logfile
	need_root "starting Redis on port $port"
	if ! command -v redis-server >/dev/null 2>&1; then
		apt_install redis-server
		# The package's own service may have started one already.
		if [ "$port" = 6379 ] && wait_until 3 redis_status "redis://127.0.0.1:6379/0"; then
			return 0
		fi
	fi
	if [ "$port" = 6379 ]; then
		logfile=/var/log/redis/ci.log
	else
		logfile="/var/log/redis/redis-$port.log"
	fi
	mkdir -p /var/lib/redis /var/log/redis
	local args=(--daemonize yes --bind 127.0.0.1 -::1 --port "$port" --save "" --appendonly no
		--dir /var/lib/redis --logfile "$logfile" --pidfile "/var/run/redis-offload-$port.pid")
	if [ -n "$password" ]; then
		args+=(--requirepass "$password")
	fi
	log "starting redis-server on port $port (log: $logfile)"
	redis-server "${args[@]}" || die "redis-server failed to start; see $logfile"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

# pg_bindir: the newest installed PostgreSQL's bin directory (empty when none is installed).
pg_bindir() {
	local dir
	dir="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null |
		sort -V | tail -n 1)"
	[ -n "$dir" ] && dirname "$dir"
}

# install_postgresql: Debian's postgresql, without the "main" cluster its postinst would create
# (that cluster would use password auth on TCP; we make a trust-auth throwaway one instead).
install_postgresql() {
	local dropin=/etc/postgresql-common/createcluster.d/zz-offload-setup.conf
	need_root "installing PostgreSQL"
	mkdir -p "$(dirname "$dropin")"
	printf '# Temporary, written by offload scripts/setup.sh\ncreate_main_cluster = false\n' >"$dropin"
	local rc=0
	apt_install postgresql || rc=$?
	rm -f "$dropin"
	[ "$rc" = 0 ] || die "installing postgresql failed"
}

# start_pg_cluster PORT: start the Debian cluster (pg_lsclusters) configured for PORT, if any.
# Returns 1 when there is none.
start_pg_cluster() {
	local port="$1" version name cport status
	command -v pg_lsclusters >/dev/null 2>&1 || return 1
	while read -r version name cport status _; do
		[ "$cport" = "$port" ] || continue
		if [ "$status" = "online" ]; then
			warn "cluster $version/$name is online on port $port but not reachable at the URL"
			return 0
		fi
		need_root "starting PostgreSQL cluster $version/$name"
		log "starting PostgreSQL cluster $version/$name (port $port)"
		pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start ||
			die "pg_ctlcluster $version $name start failed; see /var/log/postgresql/"
		return 0
	done < <(pg_lsclusters -h 2>/dev/null)
	return 1
}

# start_throwaway_pg PORT USER: a trust-auth cluster in OFFLOAD_PG_ROOT/PORT owned by postgres,
# created on first use (initdb) and started with pg_ctl. Tuned for tests, not for durability.
start_throwaway_pg() {
	local port="$1" user="$2" bindir dir
	need_root "starting a PostgreSQL server"
	bindir="$(pg_bindir)" || die "no PostgreSQL binaries under /usr/lib/postgresql"
	id postgres >/dev/null 2>&1 || die "the postgres system user does not exist"
	dir="$OFFLOAD_PG_ROOT/$port"
	mkdir -p "$dir"
	chown postgres:postgres "$OFFLOAD_PG_ROOT" "$dir"
	chmod 700 "$dir"
	if [ ! -f "$dir/data/PG_VERSION" ]; then
		log "creating a throwaway PostgreSQL cluster in $dir/data (superuser $user, trust auth)"
		rm -rf "$dir/data"
		(cd / && runuser -u postgres -- "$bindir/initdb" -D "$dir/data" -U "$user" \
			--auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1) ||
			die "initdb failed; see $dir/initdb.log"
		cat >>"$dir/data/postgresql.conf" <<EOF

# offload scripts/setup.sh: throwaway server for tests and the demo
port = $port
listen_addresses = 'localhost'
unix_socket_directories = '$dir'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
	fi
	log "starting PostgreSQL on port $port (data: $dir/data, log: $dir/postgresql.log)"
	(cd / && runuser -u postgres -- "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgresql.log" \
		-w -t 60 start >/dev/null) || die "PostgreSQL failed to start; see $dir/postgresql.log"
}

# ---------------------------------------------------------------------------------------------
# Node.js: the CDK CLI runs on it, and so does aws-cdk-lib in Python (jsii starts a node process
# at import), so synth, the infrastructure tests and the Lambda bundling step all need it.

# 18: Debian 12's nodejs. jsii (aws-cdk-lib) has stopped supporting it and prints a banner
# saying so, but runs; the scripts silence that banner for 18 and 20 with
# JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION (a comma-separated list of major versions).
MIN_NODE_MAJOR=18

# node_ok: node and npm on PATH, node >= MIN_NODE_MAJOR.
node_ok() {
	command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || return 1
	local major
	major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null)" || return 1
	[ "${major:-0}" -ge "$MIN_NODE_MAJOR" ]
}

# ensure_node: Debian's nodejs and npm when node or npm is missing (or node is too old); an
# already installed Debian nodejs stays, and only npm is added.
ensure_node() {
	node_ok && return 0
	log "Node.js >= $MIN_NODE_MAJOR with npm not found; installing Debian's nodejs and npm"
	apt_install nodejs npm
	node_ok || die "Node.js >= $MIN_NODE_MAJOR and npm are required (found: $(node --version 2>/dev/null || echo none)); install them and run setup again"
}

# cdk_outdir ARGS...: the cloud assembly folder for a CDK command line, cdk.out/<env>, where
# <env> is the environment it names (-c env=NAME, or -c offload:env=NAME: stacks/config.py's
# ENV_KEYS, in that order), else cdk.json's offload:env, else dev: each environment gets its own
# templates, as `python app.py` does (app.py, default_outdir). Nothing when the command line
# names its own folder (-o/--output).
cdk_outdir() {
	local arg pair expect_pair=0 env="" offload_env=""
	for arg in "$@"; do
		pair=""
		if [ "$expect_pair" = 1 ]; then
			pair="$arg" expect_pair=0
		else
			case "$arg" in
			-o | -o=* | --output | --output=*) return 0 ;;
			-c | --context) expect_pair=1 ;;
			-c=* | --context=*) pair="${arg#*=}" ;;
			esac
		fi
		case "$pair" in
		env=*) env="${pair#env=}" ;;
		offload:env=*) offload_env="${pair#offload:env=}" ;;
		esac
	done
	env="${env:-$offload_env}"
	if [ -z "$env" ]; then
		env="$("$VENV_PY" -c 'import json, sys
print(json.load(open(sys.argv[1]))["context"].get("offload:env") or "")' "$REPO_ROOT/cdk.json")"
	fi
	printf '%s\n' "cdk.out/${env:-dev}"
}

# ensure_npm_packages DIR PROBE: DIR's locked packages (DIR/package-lock.json), installed with
# `npm ci` when DIR/PROBE is missing or the lock changed since the last install.
ensure_npm_packages() {
	local dir="$REPO_ROOT/$1" probe="$2"
	if ! command -v npm >/dev/null 2>&1; then
		log "npm not found: $1 needs Node.js >= $MIN_NODE_MAJOR and npm (scripts/setup.sh installs them)"
		return 1
	fi
	local stamp="$dir/node_modules/.offload-lock.sha256" wanted
	wanted="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
	if [ ! -e "$dir/$probe" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
		log "installing $1's locked packages (npm ci --prefix $1)"
		npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error >&2
		printf '%s\n' "$wanted" >"$stamp"
	fi
}

# The pinned CDK CLI (cdk-cli/package-lock.json). Only `cdk` needs it; `python app.py` and the
# tests synthesise without it.
ensure_cdk_cli() {
	ensure_npm_packages cdk-cli node_modules/.bin/cdk
}

# Node BullMQ for the compatibility tests (tests/node/package-lock.json).
ensure_node_bullmq() {
	ensure_npm_packages tests/node node_modules/bullmq/package.json
}
