"""Synthesised CDK apps shared by the infrastructure tests.

Each environment is synthesised once per test session (with cdk-nag active, so a synth that
succeeds is also a synth without unacknowledged findings); every test reads templates from
that one cloud assembly. Lambda bundling is skipped here (``offload:skipBundling``):
tests/infra/test_stacks_bundling.py proves the real bundling separately.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "18,20")

import aws_cdk as cdk
from aws_cdk.assertions import Template

import app as offload_app

ROOT = Path(offload_app.__file__).resolve().parent


def file_context(**extra: Any) -> dict[str, Any]:
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    context.update(extra)
    return context


@dataclass
class Synth:
    env: str
    stacks: offload_app.OffloadApp
    assembly: Any
    outdir: Path
    _templates: dict[str, Template] = field(default_factory=dict)

    def json(self, stack: cdk.Stack) -> dict[str, Any]:
        return self.assembly.get_stack_by_name(stack.stack_name).template

    def template(self, stack: cdk.Stack) -> Template:
        if stack.stack_name not in self._templates:
            self._templates[stack.stack_name] = Template.from_json(self.json(stack))
        return self._templates[stack.stack_name]

    def resources(self, stack: cdk.Stack, type_: str) -> dict[str, dict[str, Any]]:
        return {
            logical_id: resource
            for logical_id, resource in self.json(stack)["Resources"].items()
            if resource["Type"] == type_
        }

    def one(self, stack: cdk.Stack, type_: str) -> dict[str, Any]:
        found = self.resources(stack, type_)
        assert len(found) == 1, f"expected one {type_} in {stack.stack_name}, got {list(found)}"
        return next(iter(found.values()))["Properties"]


def synth(env: str, outdir: Path) -> Synth:
    app = offload_app.new_app(
        context=file_context(env=env, **{"offload:skipBundling": True}), outdir=str(outdir)
    )
    stacks = offload_app.build(app)
    assembly = app.synth()
    return Synth(env=env, stacks=stacks, assembly=assembly, outdir=outdir)


@pytest.fixture(scope="session")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synth]:
    yield synth("dev", tmp_path_factory.mktemp("cdk-dev"))


@pytest.fixture(scope="session")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synth]:
    yield synth("prod", tmp_path_factory.mktemp("cdk-prod"))


@pytest.fixture(scope="session", params=["dev", "prod"])
def each_env(request: pytest.FixtureRequest) -> Synth:
    return request.getfixturevalue(request.param)
