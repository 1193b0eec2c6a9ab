"""Built-in recipes: the YAML files under the repository's ``recipes/`` folder (``peftkit/_recipes`` in a wheel).

A recipe is named by its path below that folder without ``.yaml``: ``reviews/minilm-l6_lora``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from peftkit.errors import PeftkitError


@dataclass(frozen=True)
class RecipeInfo:
    name: str
    path: Path
    summary: str  # the header comment's first line


def recipes_root() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "_recipes", here.parent / "recipes"):
        if candidate.is_dir():
            return candidate
    raise PeftkitError("built-in recipes not found; reinstall peftkit")


def list_recipes() -> list[RecipeInfo]:
    root = recipes_root()
    out = []
    for path in sorted(root.rglob("*.yaml")):
        first = next((ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("#")), "#")
        out.append(RecipeInfo(str(path.relative_to(root).with_suffix("")), path, first.lstrip("# ").strip()))
    return out


def recipe_path(name: str) -> Path:
    """``reviews/minilm-l6_lora`` (``.yaml`` optional) -> its file; a path to an existing file is returned as is."""
    if Path(name).is_file():
        return Path(name)
    path = recipes_root() / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        known = ", ".join(r.name for r in list_recipes())
        raise PeftkitError(f"no built-in recipe {name!r}; known: {known}")
    return path


def copy_recipe(name: str, dest: Path, *, overwrite: bool = False) -> Path:
    """Copy a built-in recipe to `dest` (a file, or a folder to put it in) to edit and point at your own data."""
    src = recipe_path(name)
    target = dest / src.name if dest.is_dir() else dest
    if target.exists() and not overwrite:
        raise PeftkitError(f"{target} already exists; pass --overwrite or choose another destination")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    return target
