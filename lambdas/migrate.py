"""Schema migrations on deploy: the CloudFormation custom resource behind
``stacks/migrations.py`` (through CDK's provider framework, which answers CloudFormation).

Create/Update apply pending migrations (``offload.db.migrate.migrate``: idempotent, advisory
lock) and the components' database roles and grants (``offload.db.roles``); Delete does
nothing (the schema outlives the stack). It re-runs whenever a migration file or the roles'
grants change (the resource's ``MigrationsHash`` property). The URL comes from the master
secret (DATABASE_SECRET_ARN): this is the one function that holds it. A failure raises, so
CloudFormation fails the deploy before new code rolls out.
"""

from __future__ import annotations

import logging
from typing import Any

from lambdas import runtime
from offload.db.migrate import migrate
from offload.logs import configure_logging

log = logging.getLogger("offload.migrate")


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    configure_logging()
    settings = runtime.settings()
    schema = (event.get("ResourceProperties") or {}).get("Schema") or settings.database_schema
    physical_id = f"offload-schema-{schema}"
    if event.get("RequestType") == "Delete":
        return {"PhysicalResourceId": event.get("PhysicalResourceId") or physical_id}
    # Through RDS Proxy the Lambdas find the schema by their role's default search_path.
    # The components' own roles (OFFLOAD_DB_ROLE_PREFIX): the runtime never logs in as us.
    applied = migrate(
        settings.database_url,
        schema,
        role_default=settings.database_schema_from_role,
        role_prefix=settings.database_role_prefix,
    )
    log.info("schema %s up to date, %d migration(s) applied", schema, len(applied))
    return {
        "PhysicalResourceId": physical_id,
        "Data": {"Applied": ",".join(str(v) for v in applied) or "none"},
    }
