"""The ``diga`` Typer app: verbs are joined here; user mistakes become one line and exit 1."""

from __future__ import annotations

import typer
from rich.markup import escape
from typer.core import TyperGroup

from diga.cli.common import err_console, print_error
from diga.errors import RunStopped, UserError


class DigaGroup(TyperGroup):
    """Turns a ``UserError`` from any verb into one printed line and exit code 1, and a run
    stopped on a signal (``RunStopped``, checkpointed) into its line and exit code."""

    def invoke(self, ctx):  # noqa: ANN001  (typer vendors its click)
        try:
            return super().invoke(ctx)
        except UserError as exc:
            print_error(exc)
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
    help="DiGA domain adaptation for semantic segmentation: train, adapt, export, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from diga.cli import bench, data, demo, evaluate, export, predict, pseudo, train

    app.add_typer(data.app, name="data")
    app.add_typer(train.app, name="train")
    app.command("eval")(evaluate.eval_command)
    for module in (pseudo, export, predict, bench, demo):
        module.register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
