"""The ``diga`` Typer app: verbs are joined here; user mistakes become one line and exit 1."""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from diga.cli.common import err_console, print_error
from diga.errors import RunStopped, UserError

# what the train extra adds to the runtime install: import name -> what it is
TRAINING_PACKAGES = {"torch": "PyTorch", "torchvision": "torchvision", "kornia": "kornia",
                     "safetensors": "safetensors", "onnx": "onnx", "onnxscript": "onnxscript",
                     "png": "pypng", "matplotlib": "matplotlib"}


class DigaGroup(TyperGroup):
    """Turns a ``UserError`` from any verb into one printed line and exit code 1, and a run
    stopped on a signal (``RunStopped``, checkpointed) into its line and exit code.

    Built, it escapes the rich markup in the help of its whole command tree (``escape_help``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        escape_help(self)

    def invoke(self, ctx):  # noqa: ANN001  (typer vendors its click)
        try:
            return super().invoke(ctx)
        except UserError as exc:
            print_error(exc)
            raise typer.Exit(1) from None
        except OSError as exc:  # a write no guarded path caught: a full disk, a read-only mount
            from diga.io import os_write_error

            error = os_write_error(exc)
            if error is None:
                raise
            print_error(error)
            raise typer.Exit(1) from None
        except ModuleNotFoundError as exc:  # a runtime-only install (pip install diga)
            package = (exc.name or "").split(".")[0]
            if package not in TRAINING_PACKAGES:
                raise
            print_error(UserError(
                f"this command needs {TRAINING_PACKAGES[package]}, which is not installed (the "
                "runtime install runs exported models only)",
                "pip install 'diga[train]' for training, evaluation of checkpoints and export"))
            raise typer.Exit(1) from None
        except RunStopped as exc:  # SIGTERM / Ctrl-C: checkpointed; rank 0 says where
            from diga.train.distributed import current

            if current().is_main:
                err_console.print(f"[yellow]{escape(exc.message)}[/]", highlight=False,
                                  soft_wrap=True)
            raise typer.Exit(exc.code) from None


app = typer.Typer(
    cls=DigaGroup,
    name="diga",
    help="DiGA domain adaptation for semantic segmentation: train, adapt, export, benchmark. "
    "'diga demo' runs every stage on the built-in benchmark in minutes on a CPU.\n\n"
    "Examples:\n  diga demo --out runs/demo\n  diga train warmup --help",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def package_version() -> str:
    """The installed distribution's version; ``diga.__version__`` where diga runs from a source
    tree that was never installed (no metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diga")
    except PackageNotFoundError:
        import diga

        return getattr(diga, "__version__", "unknown")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"diga {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", help="Print diga's version and exit.", is_eager=True,
        callback=_print_version)] = False) -> None:
    """The options of diga itself, before the verb. (Typer ranks this docstring below
    ``Typer(help=...)``: the app's help stays that.)"""


def escape_help(command: Any) -> None:
    """Help texts as plain text: in rich markup mode Typer reads every help string (a
    docstring, an option's or argument's help) as markup, so ``pip install 'diga[openvino]'``
    lost its ``[openvino]`` as an unknown tag. Escaped in the click tree Typer builds afresh
    on every run (the annotations that hold option help are evaluated anew each time, so
    they cannot be escaped once in place); sub-groups and their commands included."""
    if getattr(command, "rich_markup_mode", None) == "rich":
        for attr in ("help", "short_help", "epilog"):
            if getattr(command, attr, None):
                setattr(command, attr, escape(getattr(command, attr)))
        for param in command.params:
            if getattr(param, "help", None):
                param.help = escape(param.help)
    for sub in getattr(command, "commands", {}).values():
        escape_help(sub)


def reflow(doc: str | None) -> str | None:
    """A docstring as help text: its paragraphs, without the line breaks of the source inside
    them. In rich markup mode Typer keeps every newline, so a docstring's 100-column lines,
    rewrapped to the terminal, broke mid-sentence; rich now wraps each paragraph once. An
    ``Example:`` paragraph keeps its lines: one command each, short enough for 80 columns."""
    if not doc:
        return doc
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if p.startswith("Example") else  # one command a line
                       " ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _reflow_help(typer_app: typer.Typer) -> None:
    """Every command's and group's help through ``reflow``, the docstrings' included."""
    typer_app.info.help = reflow(typer_app.info.help)
    for command in typer_app.registered_commands:
        command.help = reflow(command.help or inspect.getdoc(command.callback))
    for group in typer_app.registered_groups:  # the help Typer would pick, a callback's included
        group.help = reflow(typer.main.solve_typer_info_help(group))
        _reflow_help(group.typer_instance)


def _register() -> None:
    from diga.cli import bench, config, data, evaluate, export, predict, pseudo, run, runs, train

    app.add_typer(data.app, name="data")
    app.add_typer(config.app, name="config")
    app.add_typer(train.app, name="train")
    app.command("eval")(evaluate.eval_command)
    for module in (run, pseudo, export, predict, bench, runs):
        module.register(app)
    _reflow_help(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
