"""The docs match the tool: README's tables against the click command tree and ExitCode.

Read from the commands themselves, so an option or command added later without its README
row fails here.
"""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
import tokenize
import tomllib
from pathlib import Path

import click
import pytest

from iotpipe.cli import AWS_COMMAND, EVERY_COMMAND, EXIT_CODES, cli, main
from iotpipe.errors import ExitCode

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
HELP_OPTIONS = {"-h", "--help"}


def _commands(group: click.Group = cli, prefix: str = "") -> dict[str, click.Command]:
    """Every leaf command by its path ("up", "device add")."""
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found.update(_commands(command, path + " "))
        else:
            found[path] = command
    return found


COMMANDS = _commands()


def _options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and not set(p.opts) <= HELP_OPTIONS]


def _aws_commands() -> set[str]:
    return {path for path, cmd in COMMANDS.items() if any("--endpoint-url" in o.opts for o in _options(cmd))}


def _table(heading: str) -> list[list[str]]:
    """The rows (cells) of the first table under ``heading``."""
    section = README.split(heading + "\n", 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
        elif rows:
            break
    return rows[2:]  # without the header and its rule


def _named_commands(text: str) -> set[str]:
    names = {token.removeprefix("iotpipe ") for token in re.findall(r"`([^`]+)`", text)}
    return names & set(COMMANDS)


def _option_rows() -> dict[str, list[str]]:
    rows = {}
    for row in _table("### Options"):
        for token in re.findall(r"`([^`]+)`", row[0]):
            rows[token.split()[0]] = row
    return rows


# -- options ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_option_of_every_command_has_a_readme_row(path):
    rows = _option_rows()
    missing = [name for option in _options(COMMANDS[path]) for name in option.opts if name not in rows]
    assert not missing, f"README's Options table has no row for `iotpipe {path}` {missing}"


def test_group_options_have_a_readme_row():
    rows = _option_rows()
    for option in _options(cli):
        assert all(name in rows for name in option.opts), option.opts


def test_option_rows_name_the_commands_that_take_them():
    """An option every AWS command takes may say nothing; any other names each command that has
    it, and no row names a command that lacks it."""
    aws = _aws_commands()
    having: dict[str, set[str]] = {}
    for path, command in COMMANDS.items():
        for option in _options(command):
            having.setdefault(option.opts[0], set()).add(path)
    rows = _option_rows()
    for name, paths in having.items():
        named = _named_commands(" ".join(rows[name][1:]))
        expected = paths - aws if aws <= paths else paths
        assert expected <= named, f"{name}: README row does not name {sorted(expected - named)}"
        assert named <= paths, f"{name}: README row names {sorted(named - paths)}, which lack it"


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_option_and_command_has_help(path):
    command = COMMANDS[path]
    assert command.help and command.help.strip(), path
    for option in _options(command):
        assert option.help and option.help.strip(), f"iotpipe {path} {option.opts[0]} has no help text"


# -- exit codes ------------------------------------------------------------------------------------
def test_exit_code_table_is_exactly_exit_code():
    rows = {(int(row[0]), row[1].strip("`")) for row in _table("### Exit codes")}
    assert rows == {(int(code), code.name) for code in ExitCode}


def test_every_command_declares_its_exit_codes_and_readme_lists_them():
    assert set(EXIT_CODES) == set(COMMANDS)
    table = _table("## Commands")
    for path in COMMANDS:
        (row,) = [r for r in table if re.match(rf"`iotpipe {path}( [A-Z]+)?`$", r[0])]
        documented = {int(n) for n in re.findall(r"\b(\d{1,3})\b", row[2])}
        assert documented == {int(c) for c in EXIT_CODES[path]}, f"iotpipe {path}: README says {documented}"


def test_common_exit_codes_paragraph_matches():
    paragraph = README.split("Every command can exit", 1)[1].split("\n\n", 1)[0]
    every, aws = paragraph.split("The AWS commands", 1)
    assert {int(n) for n in re.findall(r"\b(\d{1,3})\b", every)} == {int(c) for c in EVERY_COMMAND}
    assert {int(n) for n in re.findall(r"\b(\d{1,3})\b", aws)} == {int(c) for c in AWS_COMMAND}
    assert _named_commands(aws) == _aws_commands()


def test_every_exit_code_is_returned_by_some_command():
    used = set(EVERY_COMMAND) | set(AWS_COMMAND) | {c for codes in EXIT_CODES.values() for c in codes}
    assert used == set(ExitCode)


# -- the rest of the docs --------------------------------------------------------------------------
def test_shell_completion_is_documented_and_works(tmp_path):
    for shell in ("bash", "zsh", "fish"):
        assert f"_IOTPIPE_COMPLETE={shell}_source iotpipe" in README
    env = {**os.environ, "PYTHONPATH": str(REPO), "_IOTPIPE_COMPLETE": "bash_source"}
    run = [sys.executable, "-m", "iotpipe"]
    script = subprocess.run(run, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert script.returncode == 0 and "_iotpipe_completion" in script.stdout, script.stderr
    env.update(_IOTPIPE_COMPLETE="bash_complete", COMP_WORDS="iotpipe dev", COMP_CWORD="1")
    words = subprocess.run(run, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert words.stdout.split() == ["plain,device"]
    env.update(COMP_WORDS="iotpipe status --end", COMP_CWORD="2")
    words = subprocess.run(run, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert words.stdout.split() == ["plain,--endpoint-url"]


def test_license_file_matches_pyproject():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert declared == "Apache-2.0"
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.split()[:3] == ["Apache", "License", "Version"] and "Version 2.0, January 2004" in text
    sections = re.findall(r"^\s+(\d)\. (\w[\w ]+)\.", text, re.M)
    assert [n for n, _ in sections] == [str(i) for i in range(1, 10)]  # the nine sections, in full
    assert "END OF TERMS AND CONDITIONS" in text


def _comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    source = path.read_text(encoding="utf-8")
    found = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(source).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                found.append((getattr(node, "lineno", 1), doc))
    return found


REPO_DIRS = ("iotpipe/", "tests/", "docs/", "config/", "benchmarks/")


def test_no_comment_cites_a_file_that_is_not_in_the_repo():
    """A comment or docstring that sends the reader to a file must find it in this repo
    (other projects' files are cited with their project and are not checked)."""
    basenames = {p.name for p in REPO.rglob("*") if ".git" not in p.parts}
    wrong = []
    sources = [p for d in ("iotpipe", "tests", "benchmarks") for p in (REPO / d).rglob("*.py")]
    for path in sources:
        for line, text in _comments_and_docstrings(path):
            for cited in re.findall(r"[\w./-]*[\w-]+\.(?:md|py|toml)\b", text):
                if "<" in cited or "{" in cited:
                    continue
                if cited.startswith(REPO_DIRS):
                    ok = (REPO / cited).exists()
                elif cited.endswith(".md"):
                    ok = Path(cited).name in basenames
                else:
                    continue
                if not ok:
                    wrong.append(f"{path.relative_to(REPO)}:{line}: {cited}")
    assert not wrong, wrong


def test_bare_iotpipe_prints_help(capsys):
    assert main([]) == ExitCode.OK
    out, err = capsys.readouterr()
    assert out.startswith("Usage: iotpipe") and "Commands:" in out and err == ""


def test_an_option_before_the_command_is_refused_with_the_fix(capsys):
    assert main(["-e", "dev", "status"]) == ExitCode.USAGE
    assert capsys.readouterr().err.strip() == "error: -e goes after the command: `iotpipe status -e dev`"
