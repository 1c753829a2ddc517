"""Recipe configs: one dataclass per recipe, YAML files are overrides.

Every field carries a docstring (the line after it, as in CleanRL). Unknown keys are
errors with a suggestion, types are checked and coerced from YAML/CLI strings.

A recipe built from other recipes composes their configs: a field whose type is another
recipe's dataclass (``LoopConfig.ppo: PPOConfig``) is set from a nested YAML mapping
(``ppo: {kl_coef: 0.1}``) or a dotted key (``ppo.kl_coef=0.1``), checked like the top level.
Options that several recipes share are written once, in blocks the configs inherit
(:mod:`alignkit.recipes.configs.blocks`), so their keys stay top-level.

:func:`field_docs` reads the field docstrings back: the command line's flags take their help
from them (:mod:`alignkit.cli.options`).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from alignkit.errors import ConfigError

T = TypeVar("T")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(name, value, args[0]) if len(args) == 1 else value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{name}': expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        out = [_coerce(name, v, inner) for v in value]
        return out if origin is list else tuple(out)
    if tp is dict or origin is dict:
        if isinstance(value, str):  # --set key='{"a": 1}'
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"config key '{name}': expected a mapping (JSON object), got {value!r}") from None
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{name}': expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "1", "yes", "false", "0", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise ConfigError(f"config key '{name}': expected true/false, got {value!r}")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"config key '{name}': expected {tp.__name__}, got {value!r}"
            ) from None
    return value


def apply_overrides(cfg: T, overrides: dict[str, Any], *, source: str = "overrides", prefix: str = "") -> T:
    """Return a copy of dataclass ``cfg`` with ``overrides`` applied (checked, coerced).

    Keys may be dotted (``ppo.kl_coef``) and values of nested-config fields may be mappings;
    both reach the nested dataclass. ``prefix`` names the nesting in error messages."""
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]
    nested: dict[str, dict[str, Any]] = {}
    changes = {}
    for key, value in overrides.items():
        key = key.replace("-", "_")
        head, dot, rest = key.partition(".")
        if head not in names:
            close = difflib.get_close_matches(head, names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown config key '{prefix}{key}'{hint}")
        is_nested = dataclasses.is_dataclass(hints[head])
        if dot and not is_nested:
            raise ConfigError(f"{source}: config key '{prefix}{head}' has no sub-keys (got '{prefix}{key}')")
        if is_nested:
            if dot:
                nested.setdefault(head, {})[rest] = value
            elif isinstance(value, dict):
                nested.setdefault(head, {}).update(value)
            elif isinstance(value, hints[head]):
                changes[head] = value
            else:
                raise ConfigError(f"{source}: config key '{prefix}{head}': expected a mapping of "
                                  f"{hints[head].__name__} keys, got {value!r}")
        else:
            changes[head] = _coerce(prefix + head, value, hints[head])
    for head, sub in nested.items():
        base = changes.get(head, getattr(cfg, head))
        changes[head] = apply_overrides(base, sub, source=source, prefix=f"{prefix}{head}.")
    return dataclasses.replace(cfg, **changes)


def load_config(cls: type[T], path: str | Path | None = None, **overrides: Any) -> T:
    """Build ``cls()`` then apply a YAML file's keys, then keyword overrides (None = unset)."""
    cfg = cls()
    if path is not None:
        import yaml

        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of config keys at the top level")
        cfg = apply_overrides(cfg, data, source=str(p))
    return apply_overrides(cfg, {k: v for k, v in overrides.items() if v is not None})


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


@functools.cache
def _module_classes(path: str) -> dict[str, ast.ClassDef]:
    """The top-level classes of a source file, parsed once (the CLI reads every config's docs
    at start-up: one parse a file, not one ``inspect.getsource`` a class)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


@functools.cache
def _own_field_docs(cls: type) -> dict[str, str]:
    """The docstrings of the fields written in ``cls``'s own body (the string after each)."""
    path = getattr(sys.modules.get(cls.__module__), "__file__", None)
    node = _module_classes(path).get(cls.__name__) if path and "<" not in cls.__qualname__ else None
    if node is None:  # a class defined inside a function, or with no source file to parse
        try:
            node = ast.parse(inspect.cleandoc(inspect.getsource(cls))).body[0]
        except (OSError, TypeError, SyntaxError):
            return {}
    docs, body = {}, node.body
    for stmt, nxt in zip(body, body[1:], strict=False):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Field name → its docstring, for every field of dataclass ``cls`` (a field inherited
    from an option block, or redeclared without a docstring, takes the nearest one up the
    class hierarchy; "" where none is written)."""
    out = {}
    for f in dataclasses.fields(cls):
        out[f.name] = next((d[f.name] for c in cls.__mro__ if f.name in (d := _own_field_docs(c))), "")
    return out

