"""`--help` of every sub-command: each option is described and shows its default."""

import argparse

import pytest

from fusescope.cli import HelpFormatter, build_parser


def all_parsers(parser, path=("fusescope",)):
    """(command path, parser) for the root parser and every sub-command below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, (*path, name))


PARSERS = list(all_parsers(build_parser()))


def test_walk_reaches_every_command():
    commands = {" ".join(path[1:]) for path, _ in PARSERS}
    assert {
        "demo",
        "data synth",
        "data hha",
        "data inspect",
        "data prepare nyudv2",
        "train",
        "eval",
        "predict",
        "bench robustness",
        "bench known-answer",
        "dissect",
    } <= commands


@pytest.mark.parametrize("path,parser", PARSERS, ids=[" ".join(p[1:]) or "-" for p, _ in PARSERS])
def test_every_option_is_described_with_its_default(path, parser):
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help, f"{' '.join(path)} {name}: no description"
        default = action.default
        if (
            action.option_strings
            and default not in (None, False, [], argparse.SUPPRESS)
            and not isinstance(action, argparse._VersionAction)
        ):
            shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
            # the formatter appends it, or the help states it in words
            expanded = HelpFormatter("x")._expand_help(action)
            assert "default" in expanded and (shown in expanded or "default:" in expanded), (
                f"{' '.join(path)} {name}: default {shown!r} not shown"
            )
    assert parser.format_usage()  # nothing in the help breaks formatting
    assert "%(" not in text


def test_defaults_appear_in_the_rendered_help():
    by_name = {" ".join(p[1:]): parser for p, parser in PARSERS}
    synth = by_name["data synth"].format_help()
    assert "(default: 600)" in synth and "(default: 0)" in synth and "(default: 120 160)" in synth
    demo = by_name["demo"].format_help()
    assert "(default: runs/demo)" in demo and "(default: 250)" in demo
    evaluation = " ".join(by_name["eval"].format_help().split())
    assert "which is val unless the config says otherwise" in evaluation
    assert "(default: the run's eval.batch_size, 8)" in evaluation
    # a flag's default False and an unset None say nothing
    assert "(default: False)" not in synth and "(default: None)" not in evaluation
    # sub-commands start with the line shown in the parent's list
    assert by_name["eval"].description == "evaluate a run folder"


def test_robustness_kind_lists_the_corruption_kinds(capsys):
    from fusescope.data.corruptions import KINDS

    by_name = {" ".join(p[1:]): parser for p, parser in PARSERS}
    text = " ".join(by_name["bench robustness"].format_help().split())
    assert all(kind in text for kind in KINDS)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "robustness", "r", "--kind", "fog"])
    assert "invalid choice: 'fog'" in capsys.readouterr().err


def test_default_formatting_of_lists_and_percent():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument("--size", nargs=2, type=int, default=[3, 4], help="size")
    parser.add_argument("--share", default="5%", help="a share")
    parser.add_argument("--flag", action="store_true", help="a flag")
    text = parser.format_help()
    assert "size (default: 3 4)" in text and "a share (default: 5%)" in text
    assert "a flag\n" in text


@pytest.mark.parametrize("argv", [["--help"], ["eval", "--help"], ["dissect", "--help"]])
def test_help_does_not_import_torch(argv):
    """The help answers without loading torch (a fresh interpreter, so nothing is cached)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from fusescope.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'lightning_fabric') if m in sys.modules)\n"
        "print('IMPORTED', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "IMPORTED []", out.stdout[-500:]
