"""Recipes: Python files under `recipes/` whose `get_config()` returns a `TrainConfig` (nested frozen dataclasses).

Command-line overrides are `--recipe.KEY=VALUE` with dotted keys (`--recipe.optim.language.peak_lr=1e-5`). Values
are parsed into the type of the field they replace (ints, floats, bools, strings, tuples as comma lists); an
unknown key is an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import typing
from typing import Any

from bard_jax.errors import BardError


class RecipeError(BardError, ValueError):
    """A recipe file or override that cannot be applied."""


def load_recipe(path: str) -> Any:
    """Import a recipe file and return its `get_config()`."""
    if not os.path.isfile(path):
        raise RecipeError(f"recipe file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"bard_recipe_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a recipe is user code: say which file failed
        raise RecipeError(f"recipe {path} failed to import: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise RecipeError(f"recipe {path} has no get_config()")
    return module.get_config()


def field_names(cfg: Any, prefix: str = "") -> list[str]:
    """All dotted leaf keys of a dataclass tree."""
    names = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            names += field_names(value, f"{prefix}{f.name}.")
        else:
            names.append(prefix + f.name)
    return names


def _parse(text: str, current: Any, key: str, annotation: Any = None) -> Any:
    try:
        if isinstance(current, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if isinstance(current, int):
            if "e" not in text.lower():
                return int(text)
            value = float(text)  # 1e5 is a whole number; 1.9e0 is not, and truncating it would hide the typo
            if not value.is_integer():
                raise ValueError(f"{value:g} is not a whole number")
            return int(value)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple):
            items = [t for t in text.replace("(", "").replace(")", "").split(",") if t.strip()]
            sample = current[0] if current else ""
            return tuple(_parse(t.strip(), sample, key) for t in items)
        if current is None and annotation is not None:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if args and args[0] in (int, float):
                return args[0](text)
        return text
    except ValueError as e:
        raise RecipeError(f"override {key}={text!r}: cannot parse as {type(current).__name__} ({e})") from e


def apply_overrides(cfg: Any, overrides: dict[str, str]) -> Any:
    """Return cfg with dotted-key overrides applied (values given as strings)."""
    valid = set(field_names(cfg))
    for key, text in overrides.items():
        if key not in valid:
            close = sorted(k for k in valid if k.split(".")[-1] == key.split(".")[-1])
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise RecipeError(f"unknown recipe key {key!r}{hint}; valid keys: {', '.join(sorted(valid))}")
        cfg = _replace_path(cfg, key.split("."), text, key)
    return cfg


def _replace_path(cfg: Any, path: list[str], text: str, key: str) -> Any:
    name = path[0]
    current = getattr(cfg, name)
    if len(path) == 1:
        hints = typing.get_type_hints(type(cfg))
        return dataclasses.replace(cfg, **{name: _parse(text, current, key, hints.get(name))})
    return dataclasses.replace(cfg, **{name: _replace_path(current, path[1:], text, key)})


def parse_override_args(args: list[str]) -> dict[str, str]:
    """['--recipe.a.b=1', '--recipe.c', '2'] -> {'a.b': '1', 'c': '2'}."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--recipe."):
            raise RecipeError(f"unrecognised argument {arg!r} (overrides look like --recipe.KEY=VALUE)")
        body = arg[len("--recipe.") :]
        if "=" in body:
            key, value = body.split("=", 1)
        else:
            if i + 1 >= len(args):
                raise RecipeError(f"override {arg} has no value")
            key, value = body, args[i + 1]
            i += 1
        out[key] = value
        i += 1
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
