"""Every ``diga ... --help``, rendered by rich at 80 columns, says what its source says.

Commands and groups come from Typer's click tree, so a new one is checked without a new test.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from collections.abc import Iterator

import pytest
import typer
from rich.cells import cell_len
from typer.models import ParameterInfo
from typer.testing import CliRunner
from typer.utils import get_params_from_function

from diga.cli.app import app
from diga.export.formats import BENCH_BACKENDS
from diga.runtime.segmenter import MODEL_FILE_SUFFIXES

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BOX = re.compile("[\u2500-\u257f]")  # rich's panel borders: ╭─╮│╰╯
EXTRA = re.compile(r"pip install '(diga\[[\w,-]+\])'")


def _commands(command=None, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    command = command or typer.main.get_command(app)
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _sources(typer_app: typer.Typer = app, path: tuple[str, ...] = (),
             doc: str | None = None) -> dict[tuple, list[str]]:
    """The help strings as written, by command path: the docstrings and the ``help=`` of
    Typer's parameter infos, evaluated afresh from each callback's annotations, so nothing the
    app does to the click tree it renders (escaping markup) can hide a lost word."""

    def params(callback) -> list[str]:
        infos = get_params_from_function(callback).values() if callback else []
        return [p.default.help for p in infos if isinstance(p.default, ParameterInfo)
                and p.default.help and not p.default.hidden]

    root = typer_app.registered_callback
    found = {path: [doc or typer_app.info.help or "", *params(root and root.callback)]}
    for info in typer_app.registered_commands:
        name = info.name or typer.main.get_command_name(info.callback.__name__)
        found[(*path, name)] = [info.help or inspect.getdoc(info.callback) or "",
                                *params(info.callback)]
    for group in typer_app.registered_groups:
        found.update(_sources(group.typer_instance, (*path, group.name),
                              typer.main.solve_typer_info_help(group)))
    return found


COMMANDS = list(_commands())
SOURCES = _sources()


@pytest.fixture(autouse=True)
def _width_from_columns(monkeypatch):
    """TERMINAL_WIDTH, read when typer was imported, would fix every help's width."""
    import typer.rich_utils

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", None)


def render(path: tuple[str, ...], columns: int) -> str:
    """``diga PATH --help`` as rich prints it in a terminal ``columns`` wide (colours removed)."""
    result = runner.invoke(app, [*path, "--help"], terminal_width=columns,
                           env={"COLUMNS": str(columns), "TERM": "xterm-256color"})
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.output)


def words(text: str) -> Counter:
    return Counter(BOX.sub(" ", text).split())


def test_every_command_has_its_sources():
    assert set(COMMANDS) == set(SOURCES)
    assert {("bench",), ("export",), ("train", "selftrain"), ("data", "check"),
            ("config", "show"), ("runs", "plot")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "diga")
def test_help_keeps_every_word_in_80_columns(path):
    """Rendered at 80 columns, the help is rich's (panels with box characters), no line is wider
    than 80 columns and nothing is shortened with '…'.

    No word is lost or cut: rich wraps only at spaces, so a help that wraps well at 80 columns
    has exactly the words (whitespace-separated tokens, borders removed, with their counts) it
    has at 1000 columns, where nothing wraps; a token folded in two, ellipsised or dropped
    changes that multiset. And every word of every source help string (docstring, option and
    argument help) is in the output as often as the sources have it, so text that rich took for
    markup (``pip install 'diga[openvino]'`` shown as ``pip install 'diga'``) fails."""
    text = render(path, 80)
    assert "╭" in text and "│" in text, text  # rich's panels, not click's plain help
    assert "…" not in text, text
    for line in text.splitlines():
        assert cell_len(line) <= 80, line
    assert words(text) == words(render(path, 1000)), text
    missing = Counter(" ".join(SOURCES[path]).split()) - words(text)
    assert not missing, f"{' '.join(path)} --help lost {sorted(missing)}:\n{text}"


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "diga")
def test_pip_extras_survive(path):
    extras = EXTRA.findall(" ".join(SOURCES[path]))
    text = " ".join(BOX.sub(" ", render(path, 80)).split())  # wrapped lines joined
    for extra in extras:
        assert f"pip install '{extra}'" in text, text


def test_extras_are_in_the_sources_checked():
    """The issue's cases: export's and predict's help name their extra."""
    assert "diga[openvino]" in " ".join(EXTRA.findall(" ".join(SOURCES[("export",)])))
    assert "diga[video]" in " ".join(EXTRA.findall(" ".join(SOURCES[("predict",)])))


def _names(text: str) -> set[str]:
    return {w.lstrip("('").rstrip(".,;:)'") for w in BOX.sub(" ", text).split()}


def test_bench_help_lists_every_backend_and_model_file():
    names = _names(render(("bench",), 80))
    assert set(BENCH_BACKENDS) <= names
    assert set(MODEL_FILE_SUFFIXES) <= names


def test_eval_help_lists_every_model_file():
    assert set(MODEL_FILE_SUFFIXES) <= _names(render(("eval",), 80))


def test_version():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"diga {version('diga')}\n"
    assert "--version" in render((), 80)
