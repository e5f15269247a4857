"""The docs run: every shell and Python block of README.md and docs/*.md, as a new user would.

How a document is run
- Fenced blocks tagged ``bash``, ``sh``, ``shell`` or ``console`` run in bash (for ``console``,
  only the ``$ `` lines); ``python`` blocks run with the ``python`` beside this interpreter (``python - <<EOF``).
  Other blocks (``yaml``, untagged trees) are text unless marked as a file (below).
- All runnable blocks of one document run IN ORDER in ONE bash session under ``set -e``, in a
  fresh temporary directory that looks like the root of a clone after ``make``: ``examples/``
  is copied there and ``.venv/bin/activate`` puts this interpreter's ``bin/`` first on PATH
  (which is on PATH anyway). Shell variables carry over from block to block, as in a terminal.
  A failing command fails its document; the test names the block (file:line) and shows the
  output, each command echoed (`set -x`).
- Background processes a block starts (a server) are stopped when the document ends; the docs
  should stop them themselves too.
- Port 8081 in a block is replaced by a free port, so parallel runs never clash.
- The copy of ``examples/digits.yaml`` trains ``DOC_EPOCHS`` epochs, not the example's 10: a doc
  command that keeps the example's count (README's ``--seeds 5``, tutorials.md's envelope) runs
  the same code paths either way, and what a doc run checks (each command runs and prints what the
  doc says) does not depend on it. Commands that set ``epochs=`` themselves are unchanged.

Markers, HTML comments on the line just before a fence (invisible when rendered):
- ``<!-- file: PATH -->``: the block is a file the reader is told to save; it is written to
  PATH (relative to the working directory) when the run reaches it.
- ``<!-- skip-test: REASON -->``: the block is not run; the reason is required and shown.
A block that is meant to fail must say so in shell (``! reprodl verify ...``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
PYTHON = {"python", "py"}
TEXT = {"", "yaml", "yml", "json", "text", "toml", "ini"}
DOC_PORT = "8081"
DOC_TIMEOUT = 600  # seconds for one document; a hang (a server never answering) fails it
PY_EOF = "REPRODL_DOC_PYTHON_EOF"
PROMISES = ("Verdict: identical",)  # output the docs show in comments, checked when they do
DOC_EPOCHS = 2  # epochs of the doc run's copy of examples/digits.yaml (the docstring says why)
EPOCHS_LINE = re.compile(r"^(\s*n_epochs:\s*)\d+", re.MULTILINE)

FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*(file|skip-test):\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    file: str | None = None  # <!-- file: PATH -->
    skip: str | None = None  # <!-- skip-test: REASON -->

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.skip is None and (self.file is not None or self.lang in SHELL | PYTHON)


def parse_blocks(path: Path, text: str | None = None) -> list[Block]:
    """Every fenced block of a markdown file, with the marker on the line before it."""
    lines = (path.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1).lower()
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{path}:{start + 1}: fenced block is never closed")
        i += 1
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(prev.strip())
        kind, value = (marker.group(1), marker.group(2)) if marker else (None, None)
        blocks.append(
            Block(
                path,
                start + 1,
                lang,
                "\n".join(body) + "\n",
                file=value if kind == "file" else None,
                skip=value if kind == "skip-test" else None,
            )
        )
    return blocks


def shell_text(block: Block) -> str:
    if block.lang != "console":
        return block.text
    return "".join(line[2:] + "\n" for line in block.text.splitlines() if line.startswith("$ "))


def script_for(blocks: list[Block], *, port: str) -> str:
    """One bash script running the blocks in order; each announces itself first."""
    parts = ["set -ex  # stop at the first failing command; show each command in the output"]
    for n, block in enumerate(blocks):
        if not block.runs:
            continue
        parts.append(f'echo "@@doc-block {n} {block.where} at ${{SECONDS}}s@@"')
        body = block.text.replace(DOC_PORT, port)
        if block.file is not None:
            target = shlex.quote(block.file)
            parts.append(f"mkdir -p \"$(dirname {target})\"\ncat > {target} <<'{PY_EOF}'\n{body}{PY_EOF}")
        elif block.lang in PYTHON:
            parts.append(f"python - <<'{PY_EOF}'\n{body}{PY_EOF}")
        else:
            parts.append(shell_text(block).replace(DOC_PORT, port))
    parts.append('echo "@@doc-done at ${SECONDS}s@@"')
    return "\n".join(parts) + "\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_user_dir(root: Path) -> dict[str, str]:
    """A clone's root after `make`: examples/, a .venv whose activate puts us on PATH."""
    shutil.copytree(REPO / "examples", root / "examples")
    config = root / "examples" / "digits.yaml"
    text, n = EPOCHS_LINE.subn(rf"\g<1>{DOC_EPOCHS}", config.read_text())
    assert n == 1, f"{config.name} has no single `n_epochs:` line for the doc run to set to {DOC_EPOCHS}"
    config.write_text(text)
    bindir = Path(sys.executable).parent
    activate = root / ".venv" / "bin" / "activate"
    activate.parent.mkdir(parents=True)
    activate.write_text(f'export PATH={shlex.quote(str(bindir))}:"$PATH"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env.update(
        PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        MPLBACKEND="Agg",
        DTOOL_CACHE_DIRECTORY=str(root / ".dtool-cache"),
    )
    src = str(REPO / "src")  # this checkout's reprodl, as the rest of the suite uses
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def run_doc(path: Path, workdir: Path) -> tuple[int, str, int]:
    """Run a document's blocks; (exit status, output, blocks run)."""
    blocks = parse_blocks(path)
    env = new_user_dir(workdir)
    script = workdir / ".doc-script.sh"
    script.write_text(script_for(blocks, port=str(free_port())))
    log = workdir / ".doc-output.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(script)],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=DOC_TIMEOUT)
        except subprocess.TimeoutExpired:
            rc = -1
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the session's leftovers (servers)
            except ProcessLookupError:
                pass
            proc.wait()
    return rc, log.read_text(errors="replace"), sum(b.runs for b in blocks)


def failed_block(output: str) -> str:
    started = re.findall(r"@@doc-block \d+ (\S+) at \d+s@@", output)
    return started[-1] if started else "before the first block"


# ---- the parser and the conventions (fast) ----


def test_blocks_are_parsed_with_their_markers(tmp_path: Path) -> None:
    md = (
        "# T\n\n```bash\necho hi\n```\n\n<!-- file: cfg/a.yaml -->\n```yaml\na: 1\n```\n\n"
        "<!-- skip-test: needs a GPU -->\n\n```python\nimport torch\n```\n\n```\ntree/\n```\n"
    )
    blocks = parse_blocks(tmp_path / "t.md", md)
    assert [(b.lang, b.line, b.file, b.skip, b.runs) for b in blocks] == [
        ("bash", 3, None, None, True),
        ("yaml", 8, "cfg/a.yaml", None, True),
        ("python", 14, None, "needs a GPU", False),
        ("", 18, None, None, False),
    ]


def test_a_document_runs_in_order_in_one_session(tmp_path: Path) -> None:
    md = tmp_path / "t.md"
    md.write_text(
        "```bash\nX=hello\nmkdir -p out\n```\n<!-- file: out/cfg.txt -->\n```yaml\nport: 8081\n```\n"
        "```python\nfrom pathlib import Path\nprint(Path('out/cfg.txt').read_text().strip())\n```\n"
        '```console\n$ echo "$X again"\nhello again\n```\n'
    )
    rc, output, n = run_doc(md, tmp_path / "work")
    assert (rc, n) == (0, 4), output
    assert "port: 8081" not in output and re.search(r"port: \d+", output)
    assert "hello again" in output and "@@doc-done" in output


def test_the_doc_run_trains_the_example_config_for_doc_epochs_and_changes_nothing_else(tmp_path: Path) -> None:
    new_user_dir(tmp_path)
    original = (REPO / "examples" / "digits.yaml").read_text().splitlines()
    copied = (tmp_path / "examples" / "digits.yaml").read_text().splitlines()
    changed = [(a.strip(), b.strip()) for a, b in zip(original, copied) if a != b]
    assert len(copied) == len(original) and [b for _, b in changed] == [f"n_epochs: {DOC_EPOCHS}"]
    assert changed[0][0].startswith("n_epochs:")


def test_a_failing_block_is_named(tmp_path: Path) -> None:
    md = tmp_path / "t.md"
    md.write_text("```bash\ntrue\n```\n\n```bash\nfalse\necho never\n```\n")
    rc, output, _ = run_doc(md, tmp_path / "work")
    assert rc != 0 and "never" not in output
    assert failed_block(output).endswith("t.md:5")


def test_every_fenced_block_is_run_or_text_or_skipped_with_a_reason() -> None:
    for path in DOCS:
        for block in parse_blocks(path):
            assert block.lang in SHELL | PYTHON | TEXT, f"{block.where}: unknown block language {block.lang!r}"
            assert block.skip != "", f"{block.where}: skip-test needs a reason"


def test_a_missing_image_is_named_as_missing_not_corrupt(tmp_path: Path) -> None:
    from reprodl.data.images import open_image
    from reprodl.errors import InputDataError

    with pytest.raises(InputDataError, match=r"some_digit.png: no such image file; check the path"):
        open_image(tmp_path / "some_digit.png")
    with pytest.raises(InputDataError, match=r"is a directory, not an image file"):
        open_image(tmp_path)


# ---- the docs themselves (slow: every command trains or reads real datasets) ----


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_doc_blocks_run_as_a_new_user_would(doc: Path, tmp_path: Path) -> None:
    rc, output, n = run_doc(doc, tmp_path)
    assert rc == 0, f"{failed_block(output)} failed (exit {rc}) after:\n{output[-4000:]}"
    assert "@@doc-done" in output
    for promise in PROMISES:  # what a doc's comments say a command prints, it prints
        if promise in doc.read_text():
            assert promise in output, f"{doc.name} promises {promise!r}; the output:\n{output[-4000:]}"
    skipped = [f"{b.where}: {b.skip}" for b in parse_blocks(doc) if b.skip]
    print(f"{doc.name}: {n} blocks run; skipped: {skipped or 'none'}")
