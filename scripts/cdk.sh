#!/usr/bin/env bash
# The pinned CDK CLI (cdk-cli/package.json), run with this repository's venv; the cloud assembly
# goes to cdk.out/<env> (cdk.out/dev without -c env=...), unless -o names another folder.
#   scripts/cdk.sh synth -c env=dev             # cdk.out/dev/*.template.json
#   scripts/cdk.sh deploy -c env=dev --all
# Installs the CLI with `npm ci` when cdk-cli/node_modules is missing or stale. Synth needs no
# AWS credentials, no Docker and (once .cdk-cache holds the Lambda dependencies) no network.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exit_on_help "${BASH_SOURCE[0]}" "$@"
cd "$REPO_ROOT"

export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=18,20
[ -x .venv/bin/python ] || {
	echo "cdk.sh: .venv is missing; run scripts/setup.sh first" >&2
	exit 1
}

ensure_cdk_cli >&2

# Each environment synthesises into a folder of its own, cdk.out/<env> (unless -o is given):
# `cdk synth -c env=prod` would otherwise write beside dev's templates in cdk.out.
outdir="$(cdk_outdir "$@")"
if [ -n "$outdir" ]; then
	set -- "$@" --output "$outdir"
fi

# cdk.json runs `python3 app.py`: the venv's python3 comes first on PATH.
export PATH="$PWD/.venv/bin:$PATH"
exec cdk-cli/node_modules/.bin/cdk "$@"
