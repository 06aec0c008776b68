"""The guide and the command line agree: every `refinery ...` command in README.md and docs/*.md parses with the
CLI (flags exist, values valid), docs/flags.md is what the code generates, --help stays short and grouped, and a
misspelt flag or subcommand is answered with the closest one."""

import re
import shlex
from pathlib import Path

import pytest

from labelrefinery.cli import _parse, build_parser, main
from labelrefinery.config import flag_name, leaf_fields, resolve_config
from labelrefinery.runflags import DEFAULT_PRESET, flag_reference

ROOT = Path(__file__).parent.parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(text: str) -> list[str]:
    """Every `refinery ...` command of a Markdown page: the lines of its shell code blocks (continuations joined,
    comments, VAR=value prefixes and leading `.venv/bin/` dropped, split at &&, ; and |) and its inline code."""
    found = []
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in re.split(r"&&|;|\|", line):
                words = part.strip().split()
                while words and ("=" in words[0] and not words[0].startswith("-")):  # VAR=value prefixes
                    words = words[1:]
                if words and words[0].endswith("/refinery") or words[:1] == ["refinery"]:
                    found.append(" ".join(["refinery", *words[1:]]))
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    inline = re.findall(r"`((?:\.venv/bin/)?refinery [a-z][^`]*)`", prose)  # a name alone or a synopsis: none
    found += [" ".join(["refinery", *c.split()[1:]]) for c in inline if len(c.split()) > 2 and not re.search(
        r"\[|\||\.\.\.", c)]
    return found


def _check_command(command: str) -> None:
    argv = shlex.split(command)[1:]
    try:
        args = _parse(argv)
    except SystemExit as e:
        if e.code == 0 and "--help" in argv:
            return
        pytest.fail(f"{command!r} does not parse (exit {e.code})")
    if args.command == "run" and args.resume is None:  # the values are valid settings too
        from labelrefinery.config import leaf_names

        overrides = {name: getattr(args, name) for name in leaf_names() if hasattr(args, name)}
        resolve_config(args.preset or DEFAULT_PRESET, overrides)


def test_the_pages_have_commands():
    per_page = {p.name: len(_commands(p.read_text())) for p in PAGES}
    assert per_page["README.md"] >= 5 and sum(per_page.values()) >= 30, per_page


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_documented_command_parses(page):
    commands = _commands(page.read_text())
    for command in commands:
        _check_command(command)


def test_command_extraction_catches_a_wrong_flag():
    text = "```bash\n.venv/bin/refinery run --preset quick \\\n  --epoch 2  # a typo\n```\n"
    assert _commands(text) == ["refinery run --preset quick --epoch 2"]
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        _check_command(_commands(text)[0])


def test_flags_page_is_current():
    expected = flag_reference()
    assert (ROOT / "docs" / "flags.md").read_text().rstrip("\n") == expected.rstrip("\n"), \
        "regenerate it: .venv/bin/python -m labelrefinery.runflags > docs/flags.md"
    for f, _ in leaf_fields():
        assert f"`{flag_name(f.name)}`" in expected


def test_run_help_is_grouped_and_short(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for title in ("data:", "model:", "training (every generation):", "refinement:", "wrong labels", "execution:",
                  "output:", "presets:", "examples:"):
        assert f"\n{title}" in out
    assert len(out.splitlines()) <= 160
    assert "--epochs N            maximum epochs per generation (default: 4)" in out  # the quick preset's
    assert main(["run", "--preset", "refine", "--help"]) == 0
    assert "maximum epochs per generation (default: 16)" in capsys.readouterr().out
    assert main(["run", "--preset=refine", "--help"]) == 0
    assert "maximum epochs per generation (default: 16)" in capsys.readouterr().out


@pytest.mark.parametrize("argv,expected", [
    (["run", "--epoch", "2"], "unrecognized arguments: --epoch 2 (did you mean --epochs?); see refinery run --help"),
    (["rnu"], "(did you mean run?)"),
    (["run", "--augment", "crp"], "(did you mean crop?)"),
    (["label-issues", "x", "--al"], "(did you mean --all?); see refinery label-issues --help"),
    (["run", "--lr-shedule=cosine"], "(did you mean --lr-schedule?)"),
])
def test_misspelt_flags_and_subcommands_get_the_closest(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


def test_nothing_close_suggests_nothing(capsys):
    assert main(["run", "--xyzzy"]) == 2
    err = capsys.readouterr().err
    assert "did you mean" not in err and "see refinery run --help" in err


def test_every_subcommand_parser_builds():
    parser = build_parser()
    assert parser.prog == "refinery"
