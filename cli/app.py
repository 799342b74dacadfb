"""The ``diga`` Typer app: verbs are joined here; user mistakes become one line and exit 1."""

from __future__ import annotations

import inspect

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
    stopped on a signal (``RunStopped``, checkpointed) into its line and exit code."""

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
    for group in typer_app.registered_groups:
        group.help = reflow(group.help)
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
