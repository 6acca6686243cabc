"""Recipes by name: the YAML configurations shipped with pseudoseg and its plug-ins.

``--config polyp_momentum_cvc`` reads ``pseudoseg/configs/polyp_momentum_cvc.yaml``
when no file of that name exists where the command runs, so a recipe is usable
from any folder after ``pip install``; ``pseudoseg recipes`` lists them and
``pseudoseg recipes show NAME`` prints one to copy and edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pseudoseg.errors import UserError

_SUFFIX = ".yaml"


@dataclass(frozen=True)
class Recipe:
    name: str
    """The file name without ``.yaml``: what ``--config`` accepts."""
    path: Path
    method: str
    """Its ``method.name`` (empty when the file names none)."""
    summary: str
    """The first sentence of its leading comment."""


def _summary(text: str) -> str:
    comment: list[str] = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        words = line.lstrip("#").strip()
        if not words:
            break
        comment.append(words)
    joined = " ".join(comment)
    sentence, dot, _ = joined.partition(". ")
    sentence = (sentence + dot).strip().rstrip(":").rstrip(".")
    return sentence if len(sentence) <= 110 else sentence[:107].rstrip() + "..."


def _method_of(path: Path) -> str:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return ""
    method = loaded.get("method") if isinstance(loaded, dict) else None
    return str(method.get("name", "")) if isinstance(method, dict) else ""


def recipe_files() -> dict[str, Path]:
    """Every recipe by name: those in ``pseudoseg/configs``, then the plug-ins' (registered with their method)."""
    from pseudoseg.methods.registry import list_methods

    found = {path.stem: Path(path) for path in sorted(Path(str(resources.files("pseudoseg") / "configs")).glob(f"*{_SUFFIX}"))}
    for info in list_methods():
        for path in info.recipe_files():
            found.setdefault(path.stem, path)
    return found


def list_recipes() -> list[Recipe]:
    return [Recipe(name, path, _method_of(path), _summary(path.read_text(encoding="utf-8"))) for name, path in recipe_files().items()]


def find_recipe(name: str) -> Path | None:
    """The recipe called ``name`` (with or without ``.yaml``), or None; a path with a folder is never a recipe name."""
    if "/" in name or "\\" in name:
        return None
    return recipe_files().get(name.removesuffix(_SUFFIX))


def resolve_config_path(path: str | Path) -> Path:
    """``path`` when that file exists, else the shipped recipe of that name.

    Raises:
        UserError: neither exists (the message says how to list the recipes).
    """
    path = Path(path)
    if path.is_file():
        return path
    recipe = find_recipe(str(path))
    if recipe is not None:
        return recipe
    if path.exists():
        raise UserError(f"{path}: not a configuration file")
    raise UserError(f"{path}: configuration file not found, and no recipe of that name (pseudoseg recipes lists them)")


def recipe_text(name: str) -> str:
    """The YAML text of the recipe ``name``."""
    recipe = find_recipe(name)
    if recipe is None:
        raise UserError(f"{name}: no recipe of that name; recipes: {', '.join(recipe_files())}")
    return recipe.read_text(encoding="utf-8")
