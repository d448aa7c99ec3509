"""The commands and Python snippets in README.md and docs/*.md run as written.

Every fenced ``bash`` / ``python`` block is run by this test unless an HTML comment right above it says why not:
``<!-- not run: <reason> -->`` (e.g. it needs Docker or a GPU cluster, or it is the test suite itself). A block may
also run only some of its lines: ``<!-- run lines 1, 3: <why the others are not> -->``. Blocks run from the repository
root, with ``.venv/bin`` first on ``PATH`` (what ``source .venv/bin/activate`` does), one block after the other in
file order (a later block may use what an earlier one made), each in a fresh process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?P<marker>(?:<!--[^\n]*-->\n)?)```(?P<lang>bash|python)\n(?P<body>.*?)```", re.S)
NOT_RUN = re.compile(r"<!-- not run: (?P<reason>.+?) -->")
RUN_LINES = re.compile(r"<!-- run lines (?P<lines>[\d, ]+): (?P<reason>.+?) -->")
# A block may take a few minutes on 2 cores (the quickstart installs and generates 8 videos).
BLOCK_TIMEOUT_S = 900
MIN_REASON_CHARS = 10


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    body: str
    marker: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def lines_to_run(self) -> list[str] | None:
        """The block's lines this test runs; None when the block is marked as not run."""
        if NOT_RUN.search(self.marker):
            return None
        lines = self.body.rstrip("\n").split("\n")
        chosen = RUN_LINES.search(self.marker)
        if chosen is None:
            return lines
        numbers = [int(n) for n in chosen.group("lines").replace(" ", "").split(",") if n]
        return [lines[n - 1] for n in numbers]


def blocks() -> list[Block]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            line = text[: match.start("lang")].count("\n") + 1
            found.append(Block(path, line, match.group("lang"), match.group("body"), match.group("marker")))
    return found


def test_every_block_runs_or_says_why_not():
    for block in blocks():
        not_run = NOT_RUN.search(block.marker)
        partial = RUN_LINES.search(block.marker)
        reason = (not_run or partial).group("reason") if (not_run or partial) else None
        if reason is not None:
            assert len(reason.strip()) >= MIN_REASON_CHARS, f"{block.name}: give a reason, got {reason!r}"


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(ROOT / ".venv")
    return env


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in blocks() if b.lines_to_run() is not None], ids=lambda b: b.name)
def test_block_runs_as_written(block):
    lines = block.lines_to_run()
    if block.lang == "bash":
        command = ["bash", "-euo", "pipefail", "-c", "\n".join(lines)]
    else:
        command = [sys.executable, "-c", "\n".join(lines)]
    result = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True,
                            timeout=BLOCK_TIMEOUT_S)  # fmt: skip
    assert result.returncode == 0, f"{block.name} failed ({result.returncode}):\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"  # fmt: skip


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^#+ (?P<title>.+)$", re.M)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", m.group("title").strip().lower()).replace(" ", "-")
            for m in HEADING.finditer(path.read_text())}  # fmt: skip


def test_every_relative_link_resolves():
    broken = []
    for document in DOCUMENTS:
        for match in LINK.finditer(document.read_text()):
            target = match.group("target")
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            resolved = (document.parent / path) if path else document
            if not resolved.exists():
                broken.append(f"{document.name}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{document.name}: {target} (no such heading)")
    assert not broken, broken
