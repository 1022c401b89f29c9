"""Docs never drift: every ```python block of README.md and docs/*.md runs here, as written, on the toy model shipped
in the package, so a snippet that breaks fails this test the day it breaks.

A block may be preceded (on the line before its fence, blank lines allowed) by an HTML comment that the rendered page
does not show:

- ``<!-- docs-test: skip (reason) -->``: not run, reported as skipped with the reason (the Hub, data sets a machine
  does not have). The reason is required.
- ``<!-- docs-test: prelude toy (what it defines) -->``: run after `PRELUDES["toy"]` below, which defines the names
  such a snippet takes from the text around it: ``model`` (and ``base_model``), the shipped
  `LlavaForConditionalGeneration`; ``processor``; ``head``; ``image``, a drawn scene; ``inputs``, the processor's
  output for that scene and its question.
- ``<!-- docs-test: continue (...) -->``: run in the namespace the previous python block of the same file left
  (that block is run first).

A block without a comment runs alone in a fresh namespace. Blocks run in a temporary working folder (they may write
files). Other fenced blocks (bash, json) are not run here: the commands are tested in tests/test_cli.py and
tests/test_viz.py, the JSON layout in tests/test_viz.py.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

MARKER = re.compile(
    r"^<!--\s*docs-test:\s*(?P<directive>[\w-]+)(?:\s+(?P<name>[\w-]+))?\s*(?:\((?P<note>[^)]*)\))?\s*-->$"
)
DIRECTIVES = ("skip", "prelude", "continue")

PRELUDES = {
    "toy": """
from hf_fastrm import FastRMWrapper
from hf_fastrm.toy import load_default_head, load_default_model, load_default_processor
from hf_fastrm.toy.modeling import format_prompt
from hf_fastrm.toy.scenes import make_examples

model = base_model = load_default_model()
processor = load_default_processor()
head = load_default_head()
scene, question = make_examples(1, seed="docs")[0]
image = scene.image
inputs = processor(images=image, text=format_prompt(question.text), return_tensors="pt")
""",
}


# Failures of a snippet that another part of the project is fixing: the test is an expected failure (not strict)
# only when the error says exactly this, and passes as soon as the fix lands.
@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    code: str
    directive: str | None
    argument: str | None  # the prelude's name, or the skip reason

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of `path`, each with the docs-test comment before it (if any)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        if lines[index].strip() != "```python":
            index += 1
            continue
        start = index
        end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "```")
        previous = next((lines[i].strip() for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        directive = argument = None
        match = MARKER.match(previous)
        if match:
            directive = match["directive"]
            argument = match["name"] if directive == "prelude" else (match["note"] or "").strip() or None
        blocks.append(Block(path, start + 1, "\n".join(lines[start + 1 : end]) + "\n", directive, argument))
        index = end + 1
    return blocks


ALL_BLOCKS = [block for path in DOC_FILES for block in python_blocks(path)]


def _previous_block(block: Block) -> Block:
    same_file = [other for other in ALL_BLOCKS if other.path == block.path and other.line < block.line]
    if not same_file:
        raise AssertionError(f"{block.name}: 'continue' but no python block before it in the file")
    return same_file[-1]


def _run(block: Block) -> dict:
    """Runs `block` (after its prelude, or the blocks it continues) and returns its namespace."""
    if block.directive == "skip":
        raise AssertionError(f"{block.name} is marked skip; a block continuing it cannot run")
    if block.directive == "continue":
        namespace = _run(_previous_block(block))
    else:
        namespace = {"__name__": "__docs_test__"}
        if block.directive == "prelude":
            exec(compile(PRELUDES[block.argument], f"<prelude {block.argument}>", "exec"), namespace)
    exec(compile(block.code, block.name, "exec"), namespace)
    return namespace


def test_every_marker_is_known_and_precedes_a_python_block():
    for path in DOC_FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if "docs-test" not in line:
                continue
            match = MARKER.match(line.strip())
            assert match and match["directive"] in DIRECTIVES, f"{path.name}:{number}: unknown marker {line!r}"
            if match["directive"] == "skip":
                assert (match["note"] or "").strip(), f"{path.name}:{number}: a skip needs its reason"
            if match["directive"] == "prelude":
                assert match["name"] in PRELUDES, f"{path.name}:{number}: unknown prelude {match['name']!r}"
            following = next((other for other in lines[number:] if other.strip()), "")
            assert following.strip() == "```python", f"{path.name}:{number}: the marker is not before a python block"
    assert len(ALL_BLOCKS) >= 8  # README.md, quickstart, reports, teacher, training: the parser found them


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[block.name for block in ALL_BLOCKS])
def test_doc_block_runs(block, tmp_path, monkeypatch):
    if block.directive == "skip":
        pytest.skip(block.argument)
    toy = pytest.importorskip("hf_fastrm.toy")
    if not toy.default_model_available() or not os.path.isdir(toy.DEFAULT_HEAD_DIR):
        pytest.skip("the shipped toy model and head are not built in this checkout")
    monkeypatch.chdir(tmp_path)
    _run(block)
