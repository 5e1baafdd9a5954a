"""checkov over the synthesised CloudFormation templates of both environments.

checkov runs from its own venv (``.venv-checkov``, made by ``scripts/setup.sh --checkov`` from
requirements-checkov.txt: its pins clash with the dev venv's) as a separate program, on the
cloud assemblies the ``dev`` and ``prod`` fixtures already synthesised. Its configuration and
the only place where a finding is accepted, each skipped check with its reason, is
``.checkov.yaml``; a skipped check that no longer fails anywhere is reported, so the list
cannot outlive its findings. Both tests read one run of checkov (module fixture ``unskipped``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.infra.conftest import ROOT, Synth

CONFIG = ROOT / ".checkov.yaml"
CHECKOV = Path(os.environ.get("CHECKOV_VENV", ROOT / ".venv-checkov")) / "bin" / "checkov"
# What checkov must not inherit from the test process: another venv's paths, and LOG_LEVEL
# (offload's setting, which checkov also reads: DEBUG would flood its output).
_NOT_INHERITED = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LOG_LEVEL"}


def templates(synths: list[Synth]) -> list[Path]:
    return [path for synth in synths for path in sorted(synth.outdir.glob("*.template.json"))]


def checkov(config: Path, synths: list[Synth], cwd: Path) -> dict[str, Any]:
    """One checkov run over the templates of ``synths``: its JSON report (one framework).

    The templates are given one by one (``--file``), all in one run: with several
    ``--directory`` options checkov 3.3 prints one report per directory and scans the first
    directory again for each (duplicated findings, and a wrong count)."""
    assert CHECKOV.is_file(), f"{CHECKOV} is missing: run scripts/setup.sh --checkov"
    files = [arg for path in templates(synths) for arg in ("--file", str(path))]
    result = subprocess.run(
        [str(CHECKOV), "--config-file", str(config), *files, "--output", "json"],
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k not in _NOT_INHERITED},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    # 0 = every check passed, 1 = some failed; anything else is checkov itself failing.
    assert result.returncode in (0, 1), result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads(result.stdout)
    assert isinstance(report, dict), "one report expected: the config names one framework"
    assert report["check_type"] == "cloudformation", report["check_type"]
    return report


def failed_checks(report: dict[str, Any]) -> list[str]:
    """Each failed check as ``CKV_ID template resource: check name``, sorted."""
    return sorted(
        f"{failed['check_id']} {Path(failed['file_abs_path']).name} {failed['resource']}: "
        f"{failed['check_name']}"
        for failed in report["results"]["failed_checks"]
    )


def resource_count(synths: list[Synth]) -> int:
    return sum(len(json.loads(path.read_text())["Resources"]) for path in templates(synths))


def skipped_checks() -> dict[str, str]:
    """``.checkov.yaml``'s skipped check ids, each with its reason (the comment above it)."""
    skipped: dict[str, str] = {}
    reason: list[str] = []
    in_list = False
    for line in CONFIG.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not line.startswith(" "):
            in_list = stripped == "skip-check:"
            reason = []
        elif in_list and stripped.startswith("#"):
            reason.append(stripped.lstrip("# "))
        elif in_list and stripped.startswith("- "):
            skipped[stripped[2:].strip()] = " ".join(reason)
            reason = []
    listed = yaml.safe_load(CONFIG.read_text())["skip-check"]
    assert list(skipped) == listed, "skip-check: a block list, one id per line, reason above"
    return skipped


@pytest.fixture(scope="module")
def unskipped(dev: Synth, prod: Synth, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """ONE checkov run (the slow part: ~6 s of CPU) for both tests: ``.checkov.yaml`` without
    its skips, over both environments. Its findings minus the skipped checks are what checkov
    run with ``.checkov.yaml`` reports (skip-check only drops checks); the skipped checks'
    findings say which skips still matter."""
    config = yaml.safe_load(CONFIG.read_text())
    assert isinstance(config["skip-check"], list)  # the form checkov reads
    del config["skip-check"]
    scratch = tmp_path_factory.mktemp("checkov")
    unskipped = scratch / "checkov.yaml"
    unskipped.write_text(yaml.safe_dump(config))
    # cwd elsewhere: checkov also reads a .checkov.yaml from its working directory.
    return checkov(unskipped, [dev, prod], cwd=scratch)


def test_checkov_finds_nothing_in_either_environment(
    dev: Synth, prod: Synth, unskipped: dict[str, Any]
) -> None:
    skipped = skipped_checks()
    failures = [line for line in failed_checks(unskipped) if line.split()[0] not in skipped]
    assert not failures, "checkov failed (fix, or skip with a reason in .checkov.yaml):\n" + (
        "\n".join(failures)
    )
    summary = unskipped["summary"]
    assert len(templates([dev, prod])) == 18
    assert summary["parsing_errors"] == 0, summary
    # checkov read every resource of all 18 templates (a template it skipped would pass).
    assert summary["resource_count"] == resource_count([dev, prod]), summary


def test_every_skipped_check_has_a_reason_and_still_fails_somewhere(
    unskipped: dict[str, Any],
) -> None:
    """Each skipped check must still fail on some resource (else its skip is stale and would
    hide a regression) and have its reason. Also proves that the run finds failures."""
    skipped = skipped_checks()
    assert skipped, "no skipped check: drop this test"
    for check_id, reason in skipped.items():
        assert re.fullmatch(r"CKV_AWS_\d+", check_id), check_id
        assert len(reason) >= 60, f"{check_id} needs its reason in a comment above it"
    failing = {line.split()[0] for line in failed_checks(unskipped)}
    assert sorted(set(skipped) - failing) == [], "stale skips in .checkov.yaml"
