"""The ``diga`` Typer app: verbs are joined here; user mistakes become one line and exit 1."""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from diga.cli.common import print_error
from diga.errors import UserError


class DigaGroup(TyperGroup):
    """Turns a ``UserError`` from any verb into one printed line and exit code 1."""

    def invoke(self, ctx):  # noqa: ANN001  (typer vendors its click)
        try:
            return super().invoke(ctx)
        except UserError as exc:
            print_error(exc)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=DigaGroup,
    name="diga",
    help="DiGA domain adaptation for semantic segmentation: train, adapt, export, benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from diga.cli import data, evaluate, pseudo, train

    app.add_typer(data.app, name="data")
    app.add_typer(train.app, name="train")
    app.command("eval")(evaluate.eval_command)
    pseudo.register(app)
    for optional in ("export", "predict", "bench", "demo"):
        # verbs land one issue at a time; each module registers its own commands
        try:
            module = __import__(f"diga.cli.{optional}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"diga.cli.{optional}":
                raise
            continue
        module.register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
