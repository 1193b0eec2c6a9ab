"""``peftkit recipes ls | show | cp``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from peftkit.cli.common import JsonFlag, command, emit

app = typer.Typer(
    help="List, show and copy the built-in recipes (flat YAML: task, data, model, method, train).",
    no_args_is_help=True,
)


@app.command("ls")
@command
def ls(json_: JsonFlag = False) -> None:
    """List the built-in recipes with their one-line summary.

    ```
    peftkit recipes ls
    ```
    """
    from peftkit.recipes import list_recipes

    rows = [{"name": r.name, "summary": r.summary, "path": str(r.path)} for r in list_recipes()]

    def human() -> None:
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            typer.echo(f"{r['name']:<{width}}  {r['summary']}")

    emit(rows, json_, human)


@app.command("show")
@command
def show(name: Annotated[str, typer.Argument(help="Recipe name from `peftkit recipes ls`.")]) -> None:
    """Print a recipe, with its comments.

    ```
    peftkit recipes show reviews/minilm-l6_lora
    ```
    """
    from peftkit.recipes import recipe_path

    typer.echo(recipe_path(name).read_text(encoding="utf-8"), nl=False)


@app.command("cp")
@command
def cp(
    name: Annotated[str, typer.Argument(help="Recipe name from `peftkit recipes ls`.")],
    dest: Annotated[Path, typer.Argument(help="File to write, or an existing folder to copy into.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Copy a recipe to edit: point `data.train` at your file, map the columns, then `peftkit train --recipe FILE`.

    ```
    peftkit recipes cp purchase_intent/smollm2-135m_adalora my_intent.yaml
    ```
    """
    from peftkit.recipes import copy_recipe

    target = copy_recipe(name, dest, overwrite=overwrite)
    typer.echo(f"wrote {target}; edit it, then: peftkit train --recipe {target}")
