#!/usr/bin/env python3
"""CDK entry point (``cdk synth -c env=dev`` or ``python app.py``): only wires the stacks.

Stacks are environment-agnostic (no account or region), so synth needs no credentials, no
network and no Docker; the environment (``dev``/``prod``) comes from ``cdk.json`` context.
cdk-nag's AwsSolutions pack runs as a policy-validation plugin: any finding that is not
acknowledged (with its reason, in code) fails synth.

Run without the CDK CLI, ``python app.py -c env=prod`` writes the environment's cloud assembly
into ``cdk.out/<env>`` (``scripts/cdk.sh`` passes the CLI the same folder): each environment
has its own templates, so ``cfn-lint cdk.out/prod/*.template.json`` checks one environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from stacks.api import ApiStack
from stacks.auth import AuthStack
from stacks.config import ConfigError, env_name, load
from stacks.database import DatabaseStack
from stacks.migrations import MigrationsStack
from stacks.network import NetworkStack
from stacks.observability import ObservabilityStack
from stacks.queue import QueueStack
from stacks.storage import StorageStack
from stacks.workers import WorkersStack

ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class OffloadApp:
    network: NetworkStack
    storage: StorageStack
    queue: QueueStack
    database: DatabaseStack
    migrations: MigrationsStack
    workers: WorkersStack
    auth: AuthStack
    api: ApiStack
    observability: ObservabilityStack

    def all(self) -> list[cdk.Stack]:
        return [getattr(self, name) for name in self.__dataclass_fields__]


def build(app: cdk.App, *, nag: bool = True) -> OffloadApp:
    config = load(app.node)
    prefix = f"Offload-{config.name}"
    network = NetworkStack(app, f"{prefix}-Network", config=config)
    storage = StorageStack(app, f"{prefix}-Storage", config=config)
    queue = QueueStack(app, f"{prefix}-Queue", config=config, network=network.network)
    database = DatabaseStack(app, f"{prefix}-Database", config=config, network=network.network)
    migrations = MigrationsStack(
        app,
        f"{prefix}-Migrations",
        config=config,
        network=network.network,
        database=database.database,
    )
    workers = WorkersStack(
        app,
        f"{prefix}-Workers",
        config=config,
        network=network.network,
        storage=storage.storage,
        queue=queue.queue,
        database=database.database,
    )
    workers.add_stack_dependency(migrations, "schema migrations run before new worker code")
    auth = AuthStack(app, f"{prefix}-Auth", config=config)
    api = ApiStack(
        app,
        f"{prefix}-Api",
        config=config,
        network=network.network,
        storage=storage.storage,
        queue=queue.queue,
        database=database.database,
        user_pool=auth.directory.user_pool,
    )
    api.add_stack_dependency(migrations, "schema migrations run before new Lambda code")
    functions = api.functions
    observability = ObservabilityStack(
        app,
        f"{prefix}-Observability",
        config=config,
        functions={
            "Api": functions.api,
            "Enqueue": functions.enqueue,
            "QueueMetrics": functions.queue_metrics,
            "Reconciler": functions.reconciler,
        },
        enqueue=functions.enqueue,
        service=workers.workers.service,
        cluster=workers.workers.cluster,
        events_dlq=storage.storage.events_dlq,
        events_queue=storage.storage.events_queue,
        redis=queue.queue.replication_group,
        database=database.database.instance,
        rest_api=api.api.rest_api,
    )
    if nag:
        cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return OffloadApp(
        network=network,
        storage=storage,
        queue=queue,
        database=database,
        migrations=migrations,
        workers=workers,
        auth=auth,
        api=api,
        observability=observability,
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python app.py",
        description="Synthesise the CDK app without the CDK CLI (which runs this file with its "
        "own context and output folder: scripts/cdk.sh synth -c env=NAME).",
    )
    parser.add_argument(
        "-c",
        "--context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a context value, as the CLI's -c (env=prod picks the environment; cdk.json and "
        "cdk.context.json give the rest)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the cloud assembly's folder (default: $CDK_OUTDIR, else cdk.out/<env>)",
    )
    return parser.parse_args(argv)


def standalone_context(pairs: list[str]) -> dict:
    """Context for ``python app.py [-c key=value ...]``: what the CDK CLI would pass (cdk.json
    and cdk.context.json), plus the ``-c`` pairs of the command line."""
    context: dict = {}
    for name in ("cdk.json", "cdk.context.json"):
        path = ROOT / name
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            context.update(data.get("context", {}) if name == "cdk.json" else data)
    for pair in pairs:
        key, _, value = pair.partition("=")
        context[key] = value
    return context


def default_outdir(context: dict) -> Path:
    """``cdk.out/<env>``: one folder per environment, never two environments' templates side by
    side (scripts/cdk.sh gives the CDK CLI the same folder)."""
    return ROOT / "cdk.out" / env_name(context.get)


def new_app(*, context: dict | None = None, outdir: str | None = None) -> cdk.App:
    """The App every entry point uses. CDK's built-in CloudFormation schema validation is off:
    it costs more than half of the synth time, and cfn-lint checks the same templates in the
    test suite (tests/infra/test_stacks_checks.py) and in CI. cdk-nag stays on."""
    return cdk.App(context=context, outdir=outdir, builtin_cloud_formation_validation=False)


def main(argv: list[str]) -> int:
    args = parse_args(argv)  # --help exits here, before any synth
    if "CDK_CONTEXT_JSON" in os.environ:
        app = new_app()  # run by the CDK CLI: it passes the context and the output dir
    else:
        context = standalone_context(args.context)
        outdir = args.output or os.environ.get("CDK_OUTDIR") or default_outdir(context)
        app = new_app(context=context, outdir=str(outdir))
    try:
        build(app)
    except ConfigError as exc:  # a bad cdk.json or -c value: the message is the whole story
        print(f"app.py: error: {exc}", file=sys.stderr)
        return 2
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
