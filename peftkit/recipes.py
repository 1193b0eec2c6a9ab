"""Built-in recipes: the YAML files under the repository's ``recipes/`` folder (``peftkit/_recipes`` in a wheel)."""

from __future__ import annotations

from pathlib import Path

from peftkit.errors import PeftkitError


def recipes_root() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "_recipes", here.parent / "recipes"):
        if candidate.is_dir():
            return candidate
    raise PeftkitError("built-in recipes not found; reinstall peftkit")


def recipe_path(name: str) -> Path:
    """``reviews/minilm-l6_lora.yaml`` (or without ``.yaml``) -> its file."""
    path = recipes_root() / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        known = ", ".join(
            sorted(str(p.relative_to(recipes_root()))[:-5] for p in recipes_root().rglob("*.yaml"))
        )
        raise PeftkitError(f"no built-in recipe {name!r}; known: {known}")
    return path
