"""The ``tdfusion`` command line as a whole: every command's help, and a fast top-level help."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tdfusion.cli import COMMANDS, build_parser, main


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tdfusion {name}") and "options:" in out


def test_top_level_help_lists_every_command_without_importing_torch():
    # A fresh interpreter: this test process has torch loaded already.
    code = ("import sys\nfrom tdfusion.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("NO-TORCH")
    for name in COMMANDS:
        assert f"    {name} " in out


def test_stub_and_full_parsers_list_the_same_commands():
    full = build_parser()._subparsers._group_actions[0]
    lazy = build_parser(["fuse"])._subparsers._group_actions[0]
    assert list(full.choices) == list(lazy.choices) == list(COMMANDS)
    assert [a.help for a in full._choices_actions] == [a.help for a in lazy._choices_actions]


def test_unknown_command_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fusee"])
    assert exc.value.code == 2
    assert "invalid choice: 'fusee'" in capsys.readouterr().err
