"""The synthesised templates of one environment, and the lookups the pricing rules share.

The tool reads templates, never CDK objects: ``synth`` runs ``app.py`` in a subprocess (with
Lambda bundling skipped, which changes asset hashes but no billable resource), so this package
imports neither the app nor the runtime code, and it prices exactly what ``cdk deploy`` would
create.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = REPO_ROOT / "app.py"


class TemplateError(RuntimeError):
    """No templates where they were expected, or the app failed to synthesise."""


@dataclass(frozen=True)
class Resource:
    stack: str
    logical_id: str
    type: str
    properties: dict[str, Any]


@dataclass(frozen=True)
class Templates:
    """Every ``*.template.json`` of one cloud assembly, by stack name."""

    by_stack: dict[str, dict[str, Any]]
    folder: Path

    def resources(self, *types: str) -> Iterator[Resource]:
        for stack, template in sorted(self.by_stack.items()):
            for logical_id, resource in template.get("Resources", {}).items():
                if not types or resource["Type"] in types:
                    yield Resource(
                        stack, logical_id, resource["Type"], resource.get("Properties", {})
                    )

    def get(self, stack: str, logical_id: str) -> Resource | None:
        resource = self.by_stack.get(stack, {}).get("Resources", {}).get(logical_id)
        if resource is None:
            return None
        return Resource(stack, logical_id, resource["Type"], resource.get("Properties", {}))

    def types(self) -> set[str]:
        return {resource.type for resource in self.resources()}


def read(folder: Path) -> Templates:
    files = sorted(folder.glob("*.template.json"))
    if not files:
        raise TemplateError(
            f"no *.template.json in {folder}: synthesise first, or drop --templates"
        )
    return Templates(
        by_stack={
            path.name.removesuffix(".template.json"): json.loads(path.read_text()) for path in files
        },
        folder=folder,
    )


def synth(context: list[str], outdir: Path) -> Templates:
    """``python app.py -c ... -o outdir`` as on a machine without credentials or CDK CLI
    around it; the app's own error (an unknown environment) is passed on as it is."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CDK_", "AWS_"))}
    pairs = [arg for pair in [*context, "offload:skipBundling=true"] for arg in ("-c", pair)]
    done = subprocess.run(
        [sys.executable, str(APP), *pairs, "-o", str(outdir)],
        cwd=REPO_ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise TemplateError(
            done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "synth failed"
        )
    return read(outdir)


def ref_id(value: Any) -> str | None:
    """The logical id a ``Ref`` or ``Fn::GetAtt`` points at (same template), else None."""
    if isinstance(value, dict):
        if "Ref" in value:
            return str(value["Ref"])
        if "Fn::GetAtt" in value:
            return str(value["Fn::GetAtt"][0])
    return None


def strings(value: Any) -> Iterator[str]:
    """The literal strings of a property value, ``Fn::Join`` parts included; a reference
    yields a NUL, so no pattern matches across it."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, dict) and "Fn::Join" in value:
        yield from strings(value["Fn::Join"][1])
    elif isinstance(value, dict):
        yield "\x00"  # a reference (Ref, Fn::GetAtt, ...): no literal text, and a boundary
