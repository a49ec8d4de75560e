"""Every code block of README.md runs, so that a README change that breaks a command fails the suite.

Fenced blocks are found by their language: `python`, `sh` and `yaml` blocks are code; a block with no
language (a diagram, a token stream) is text and is not run. How a code block runs is said by an HTML comment
on the line before its fence, invisible on the rendered page:

    <!-- readme-test: TAG -->
    <!-- readme-test: TAG sub="OLD=>NEW" -->

Tags:
- (none) on a `python` block: run as a script from the repository's root; on a `yaml` block: parsed. An
  untagged `sh` block is an error: a shell command must say what it needs.
- `make`: a `sh` block whose `make` commands are dry-run (`make -n`: the targets and their recipes exist;
  running `make test` from the tests would run the suite inside itself).
- `job`: a `sh` block of `vl2prep pretokenize` commands, run in a workspace (a copy of the project beside
  the same `.venv`) holding the example corpus and a small `my_job.yaml`; it makes `out/example`.
- `output`: a `sh` or `python` block that reads `out/example`, run in that workspace after the `job` blocks.
  Each `inspect` line's comment is a promise: every `<...>` it quotes must be in the printed row, and
  "boxes" means the row shows its regions.
- `cluster`: a `sh` block that starts a Ray cluster and submits `my_job.yaml` to it, run in the workspace
  with its own ports (`RAY_PORT`, `DASHBOARD_PORT`), temp dir, home folder (for the token) and the two ports
  `ray start --head` otherwise takes at fixed numbers; the cluster's processes are stopped by their ids.
- `syntax`: only compiled (the block needs what a test cannot have: an official checkpoint, a model call
  written with `...`).

`sub="OLD=>NEW"` (repeatable) replaces text of the block before it runs, for what a test must bound (fewer
validation samples). `.venv/bin/vl2prep ...` lines of `job` and `output` blocks run in this process (through
`jobs.cli.main`, with the suite's Ray) rather than as new processes, each of which would start a Ray of its
own; every other line runs in bash.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from jobs import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TAGS = ("make", "job", "output", "cluster", "syntax")
_TAG = re.compile(r"<!--\s*readme-test:\s*(?P<body>.*?)\s*-->")
_FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
_VL2PREP = ".venv/bin/vl2prep "


@dataclass
class Block:
    """One fenced block of the README: its language, text, first line number and tag."""

    lang: str
    text: str
    line: int
    tag: str | None = None
    subs: list[tuple[str, str]] = field(default_factory=list)

    def where(self) -> str:
        return f"README.md:{self.line} ({self.lang} block, tag {self.tag})"

    def code(self) -> str:
        text = self.text
        for old, new in self.subs:
            assert old in text, f"{self.where()}: sub {old!r} matches nothing"
            text = text.replace(old, new)
        return text


def blocks(path: Path | None = None) -> list[Block]:
    """The README's fenced blocks, each with the tag on the line before its fence."""
    lines = (path or README).read_text(encoding="utf-8").splitlines()
    found, index = [], 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        block = Block(fence["lang"], "\n".join(lines[index + 1 : end]) + "\n", index + 2)
        tag = _TAG.search(lines[index - 1]) if index else None
        if tag:
            words = shlex.split(tag["body"])
            block.tag = words[0]
            assert block.tag in TAGS, f"{block.where()}: unknown tag; known: {', '.join(TAGS)}"
            for word in words[1:]:
                key, _, value = word.partition("=")
                assert key == "sub" and "=>" in value, f"{block.where()}: bad option {word!r}"
                block.subs.append(tuple(value.split("=>", 1)))
        found.append(block)
        index = end + 1
    return found


def tagged(tag: str | None, *langs: str) -> list[Block]:
    return [b for b in blocks() if b.tag == tag and (not langs or b.lang in langs)]


def commands(text: str) -> list[str]:
    """The block's commands: continuation lines joined, blank lines and whole-line comments left out."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def bash(script: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 120) -> str:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{script}\n{result.stdout}\n{result.stderr}"
    return result.stdout


# ------------------------------------------------------------------------------------------------
# the README itself


def test_every_code_block_is_tagged_or_runs_untagged():
    found = blocks()
    assert len([b for b in found if b.lang]) >= 10
    untagged_shell = [b.where() for b in found if b.lang == "sh" and b.tag is None]
    assert not untagged_shell, f"shell blocks without a readme-test tag: {untagged_shell}"
    # The recipes a user follows are all there, so no parametrized test below runs empty (and skips).
    missing = {"make", "job", "output", "cluster"} - {b.tag for b in found}
    assert not missing, f"no README block tagged {sorted(missing)}"
    assert {b.lang for b in found} <= {"", "sh", "python", "yaml"}, (
        "a block in a language this test cannot run"
    )


def test_the_tags_are_read(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        'Text.\n<!-- readme-test: output sub="a b=>c" sub="x=>y" -->\n```sh\na b x\n```\n\n'
        "```\ndiagram\n```\n"
    )
    (one, two) = blocks(readme)
    assert (one.lang, one.tag, one.line, one.code()) == ("sh", "output", 4, "c y\n")
    assert (two.lang, two.tag, two.text) == ("", None, "diagram\n")
    readme.write_text("<!-- readme-test: teleport -->\n```sh\nls\n```\n")
    with pytest.raises(AssertionError, match="unknown tag"):
        blocks(readme)


# ------------------------------------------------------------------------------------------------
# blocks that need nothing


@pytest.mark.timeout(120)
@pytest.mark.parametrize("block", tagged(None, "python"), ids=lambda b: f"line{b.line}")
def test_untagged_python_blocks_run_from_the_root(block):
    result = subprocess.run(
        [sys.executable, "-c", block.code()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, f"{block.where()}\n{result.stderr}"


@pytest.mark.parametrize("block", tagged(None, "yaml"), ids=lambda b: f"line{b.line}")
def test_yaml_blocks_parse(block):
    assert isinstance(yaml.safe_load(block.code()), dict), block.where()


@pytest.mark.parametrize("block", tagged("syntax"), ids=lambda b: f"line{b.line}")
def test_syntax_blocks_compile(block):
    assert block.lang == "python", f"{block.where()}: only python blocks can be compiled"
    compile(block.code(), block.where(), "exec")


# ------------------------------------------------------------------------------------------------
# the workspace: a copy of the project beside the same .venv, with the example corpus and a small job

MY_JOB = "sources:\n  - {{name: notes, format: text, path: my_data}}\noutput: {{dir: {out}, shared: true}}\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "smoke-*.yaml")
    for name in ("jobs", "pipeline", "schemas", "model_shapes"):
        shutil.copytree(ROOT / name, folder / name, ignore=ignore)
    for name in ("Makefile", "pyproject.toml", "constraints.txt", "README.md"):
        shutil.copy2(ROOT / name, folder / name)
    (folder / ".venv").symlink_to(ROOT / ".venv")
    (folder / "my_data").mkdir()
    for part in range(4):  # four input files, so that both nodes of the cluster recipe get work
        (folder / "my_data" / f"notes-{part}.jsonl").write_text(
            "".join(f'{{"text": "Note {part}.{i}: the README\'s own job, a few lines."}}\n' for i in range(5))
        )
    # Absolute: under `ray job submit --working-dir .` the job runs in an uploaded copy of the folder.
    (folder / "my_job.yaml").write_text(MY_JOB.format(out=folder / "out" / "my_job"))
    return folder


@pytest.mark.timeout(60)
@pytest.mark.parametrize("block", tagged("make"), ids=lambda b: f"line{b.line}")
def test_make_blocks_name_real_targets(block, workspace):
    assert block.lang == "sh", block.where()
    # A function named make shadows the command: the block's text runs as written, its makes dry-run.
    bash('make() { command make -n "$@" >/dev/null; }\n' + block.code(), workspace)


def run_lines(block: Block, cwd: Path, capsys) -> list[tuple[str, str]]:
    """Run a sh block line by line: vl2prep commands in this process, the others in bash; returns each
    vl2prep command with what it printed."""
    printed = []
    for line in commands(block.code()):
        if not line.startswith(_VL2PREP):
            bash(line, cwd)
            continue
        argv = shlex.split(line[len(_VL2PREP) :], comments=True)
        with contextlib.chdir(cwd):
            code = cli.main(argv)
        out = capsys.readouterr()
        assert code == 0, f"{block.where()}: `{line}` exited {code}\n{out.err}"
        printed.append((line, out.out))
    return printed


@pytest.fixture(scope="module")
def example_output(ray_session, workspace) -> Path:
    """The `job` blocks run: `out/example` exists in the workspace."""
    job_blocks = tagged("job")
    assert job_blocks, "no block tagged job: nothing makes out/example"
    for block in job_blocks:
        assert block.lang == "sh", block.where()
        for line in commands(block.code()):
            argv = shlex.split(line[len(_VL2PREP) :], comments=True)
            assert line.startswith(_VL2PREP), f"{block.where()}: `{line}` is not a vl2prep command"
            with contextlib.chdir(workspace), contextlib.redirect_stdout(io.StringIO()):
                code = cli.main(argv)
            assert code == 0, f"{block.where()}: `{line}` exited {code}"
    assert (workspace / "out" / "example" / "manifest.json").is_file()
    assert (workspace / "out" / "my_job" / "manifest.json").is_file()
    return workspace / "out" / "example"


@pytest.mark.timeout(300)
def test_output_blocks_run_on_the_example_output(example_output, workspace, capsys):
    output_blocks = tagged("output")
    assert output_blocks
    for block in output_blocks:
        if block.lang == "python":
            result = subprocess.run(
                [sys.executable, "-c", block.code()],
                cwd=workspace,
                capture_output=True,
                text=True,
                timeout=240,
                check=False,
            )
            assert result.returncode == 0, f"{block.where()}\n{result.stderr}"
            continue
        for line, out in run_lines(block, workspace, capsys):
            if " inspect " in line and "#" in line:
                promise = line.split("#", 1)[1]
                for shown in re.findall(r"<[^<>]+>", promise):
                    assert shown in out, f"{block.where()}: `{line}` does not show {shown}:\n{out}"
                if "boxes" in promise:
                    assert "region 0" in out, f"{block.where()}: `{line}` shows no box:\n{out}"


# ------------------------------------------------------------------------------------------------
# the cluster recipe, against a cluster of the test's own


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_cluster(temp_dir: Path) -> None:
    """Stop the processes of the cluster whose temp dir is `temp_dir` (named on their command lines) and
    everything below them (its workers do not name it), by process id."""
    found = subprocess.run(
        ["pgrep", "-f", "--", str(temp_dir)], capture_output=True, text=True
    ).stdout.split()
    pids, queue = [], [int(p) for p in found]
    while queue:
        pid = queue.pop()
        pids.append(pid)
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        queue += [int(c) for c in children]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if sig == signal.SIGTERM:
            time.sleep(2)


@pytest.mark.timeout(400)
@pytest.mark.parametrize("block", tagged("cluster"), ids=lambda b: f"line{b.line}")
def test_the_cluster_recipe_runs_as_written(block, workspace):
    assert block.lang == "sh", block.where()
    # Short: a Ray temp dir holds unix sockets, whose paths are limited to about 100 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="vl2prep-readme-"))
    home = temp_dir / "home"
    home.mkdir()
    code = block.code()
    assert "ray start --head" in code, block.where()
    # Only what isolates this cluster from any other Ray on the machine is added to the recipe.
    isolation = (
        f"ray start --head --temp-dir={temp_dir / 'ray'} --ray-client-server-port={free_port()} "
        f"--dashboard-agent-listen-port={free_port()} --num-cpus=1"
    )
    code = code.replace("ray start --head", isolation)
    assert "ray start --address=" in code, block.where()  # the recipe's second node
    second = (
        f"ray start --temp-dir={temp_dir / 'second'} --dashboard-agent-listen-port={free_port()} --num-cpus=1"
    )
    code = code.replace("ray start --address=", f"{second} --address=")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("RAY_") and key not in ("VIRTUAL_ENV",)
    }
    env.update(
        HOME=str(home),
        RAY_PORT=str(free_port()),
        DASHBOARD_PORT=str(free_port()),
        RAY_USAGE_STATS_ENABLED="0",
        PATH="/usr/local/bin:/usr/bin:/bin",  # the README's own activation puts the venv first
    )
    out = workspace / "out" / "my_job"
    shutil.rmtree(out, ignore_errors=True)
    try:
        printed_by_job = bash(code, workspace, env=env, timeout=360)
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert (out / "manifest.json").is_file(), "the job submitted to the cluster wrote no manifest"
    spread = re.search(r"input files written per Ray node: (.*)", printed_by_job)
    assert spread and len(spread.group(1).split(", ")) == 2, printed_by_job[-3000:]  # both nodes worked
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert cli.main(["verify", str(out)]) == 0
    assert "OK" in printed.getvalue()
