"""The docs stand alone: every relative link resolves inside the repository, and nothing cites
a file a clone does not have.

A moved or renamed doc, a renamed heading or a design note kept outside the repository breaks
readers' links silently; these checks make it fail the suite instead. Links are checked as
GitHub renders them: a path relative to the linking file, and an optional ``#anchor`` that must
name a heading of the target (GitHub's slugs).
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(
    [
        ROOT / "README.md",
        ROOT / "bench" / "README.md",
        ROOT / "web" / "README.md",
        *(ROOT / "docs").glob("*.md"),
    ]
)
# Directories that are not the project's own text: environments, caches, build output.
SKIPPED_DIRS = {
    ".git",
    ".venv",
    ".venv-checkov",
    "node_modules",
    ".cdk-cache",
    "cdk.out",
    ".local-stack",
    ".local",
    "test-artifacts",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
}
# Files a clone does not have: a design note beside the repository, cited by its old name.
OUTSIDE_REFERENCES = ("../shared", "DESIGN.md")

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"`+[^`]*`+")
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, where links and headings live."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (links as their text, no code or
    emphasis marks), lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link and image in the file's prose."""
    found = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        reference = _REFERENCE_LINK.match(line)
        if reference:
            found.append((number, reference.group(1)))
            continue
        line = _CODE_SPAN.sub("code", line)
        found.extend((number, target) for target in _INLINE_LINK.findall(line))
    return found


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Every relative link of ``path`` that does not resolve to a file (and heading) in
    ``root``, as ``file:line: target (why)``."""
    problems = []
    for number, target in links(path):
        if _EXTERNAL.match(target):
            continue
        where = f"{path.relative_to(root)}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not resolved.is_relative_to(root):
            problems.append(f"{where} (outside the repository)")
        elif not resolved.exists():
            problems.append(f"{where} (no such file)")
        elif anchor and resolved.suffix == ".md" and unquote(anchor) not in anchors(resolved):
            problems.append(f"{where} (no such heading in {resolved.relative_to(root)})")
    return problems


def test_the_docs_checked_are_there():
    assert len(DOCS) >= 8, DOCS
    assert all(doc.is_file() for doc in DOCS), DOCS


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path):
    assert broken_links(doc) == []


def test_a_broken_link_or_heading_is_reported(tmp_path):
    """The checker itself: what it must catch, and GitHub's slugs it must accept."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## `bench/x.py` — the CLI's engine\n")
    doc = tmp_path / "README.md"
    doc.write_text(
        "# Top\n\n"
        "[ok](docs/a.md#benchxpy--the-clis-engine) [self](#top) [web](https://example.com)\n"
        "[gone](docs/b.md) [heading](docs/a.md#nope) [out](../elsewhere/x.md)\n"
        "`[code](not/a/link.md)`\n\n```\n[fenced](not/a/link.md)\n```\n"
    )
    assert broken_links(doc, root=tmp_path) == [
        "README.md:4: docs/b.md (no such file)",
        "README.md:4: docs/a.md#nope (no such heading in docs/a.md)",
        "README.md:4: ../elsewhere/x.md (outside the repository)",
    ]


def _project_files() -> list[Path]:
    files = []
    for directory, subdirs, names in os.walk(ROOT):
        subdirs[:] = sorted(name for name in subdirs if name not in SKIPPED_DIRS)
        files.extend(Path(directory) / name for name in sorted(names))
    return files


def test_nothing_refers_to_files_outside_the_repository():
    this_file = Path(__file__).resolve()
    offenders = []
    for path in _project_files():
        if path == this_file or path.stat().st_size > 1_000_000:
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue  # binary
        text = data.decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            offenders.extend(
                f"{path.relative_to(ROOT)}:{number}: {reference}"
                for reference in OUTSIDE_REFERENCES
                if reference in line
            )
    assert offenders == []
