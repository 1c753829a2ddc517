"""A recipe command's flags, generated from its config dataclass.

    @config_command(app, "dpo", DPOConfig)
    def dpo(cfg: DPOConfig):
        ...

gives ``alignkit dpo`` a ``--config FILE``, a repeatable ``--set key=value`` and one flag per
field of :class:`DPOConfig`: ``--kebab-name`` (a bool: ``--name/--no-name``), typed from the
field's annotation, its help the field's docstring, its shown default the dataclass's. A
field added to a config is therefore a flag, a YAML key and a ``--set`` key at once, with no
edit here. The command receives the config built by :func:`~alignkit.cli.common.build_config`:
defaults ← the YAML file ← ``--set`` ← the flags typed on the command line (a flag left out
never overrides the file or ``--set``: its shown default is the dataclass's, but only flags
whose value came from the command line are applied). The flags are built when the command
is first parsed or its help printed, so ``alignkit --help`` costs no more than before.

Lists take comma-separated values (``--lora-targets q_proj,v_proj``), mappings a JSON object;
a field whose type is another recipe's config (``LoopConfig.ppo``) has no flags of its own:
``--set ppo.kl_coef=0.1`` or a nested YAML mapping reaches it. Options that are not config
fields (positional arguments, ``--seeds``, ``--ray``) stay written in the command.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import json
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

import typer
import typer.main
from typer.core import TyperCommand

from alignkit.cli.common import CONFIG_HELP, SET_HELP, build_config

_BUILT_IN = ("config_file", "set_items", "typer_ctx")  # --config, --set, the click context


def flag_name(field_name: str) -> str:
    """``max_new_tokens`` → ``--max-new-tokens``."""
    return "--" + field_name.replace("_", "-")


def ordered_fields(cls: type) -> list[dataclasses.Field]:
    """The config's fields in help order: its own first, then each option block's (the
    dataclass order puts inherited blocks first)."""
    owner = {}
    for depth, c in enumerate(cls.__mro__):
        for name in getattr(c, "__dataclass_fields__", {}):
            owner[name] = depth  # the deepest class that declares it wins: where it was defined
    return sorted(dataclasses.fields(cls), key=lambda f: owner[f.name])  # stable: order kept within


@functools.cache
def _annotation(text: str, module: str) -> Any:
    """A field's annotation string (``from __future__ import annotations``) as a type, evaluated
    once per distinct string: ``typing.get_type_hints`` would compile every field's anew, which
    is a noticeable share of ``alignkit --help`` with every command's flags built."""
    return eval(text, vars(sys.modules[module]))  # noqa: S307 (our own source's annotations)


def field_types(cls: type) -> dict[str, Any]:
    """Field name → its type, resolved in the module of the class that declares it."""
    out = {}
    for f in dataclasses.fields(cls):
        owner = next(c for c in cls.__mro__ if f.name in c.__dict__.get("__annotations__", {}))
        out[f.name] = _annotation(f.type, owner.__module__) if isinstance(f.type, str) else f.type
    return out


def _flag_type(tp: Any) -> tuple[type, str | None]:
    """The option's type and metavar for a field annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _flag_type(args[0]) if len(args) == 1 else (str, None)
    if origin in (list, tuple):
        return str, "A,B,..."
    if tp is dict or origin is dict:
        return str, "JSON"
    if tp in (bool, int, float, str):
        return tp, None
    return str, None


def _default(f: dataclasses.Field, flag_tp: type) -> Any:
    """The field's default as the flag's (shown in the help; never applied: see the module)."""
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or None
    if isinstance(value, dict):
        return json.dumps(value) if value else None
    return value if value != "" else None


def config_parameters(cls: type, aliases: dict[str, tuple[str, ...]] | None = None) -> list[inspect.Parameter]:
    """One keyword ``typer.Option`` per field that is not a nested config."""
    from rich.markup import escape  # typer's help is rich markup: "[prompt+chosen; ...]" is text

    from alignkit.config import field_docs

    hints, docs, aliases = field_types(cls), field_docs(cls), aliases or {}
    params = []
    for f in ordered_fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            continue
        flag_tp, metavar = _flag_type(tp)
        decls = ([f"{flag_name(f.name)}/--no-{flag_name(f.name)[2:]}"] if flag_tp is bool
                 else [flag_name(f.name), *aliases.get(f.name, ())])
        option = typer.Option(_default(f, flag_tp), *decls, help=escape(docs[f.name]), metavar=metavar,
                              rich_help_panel=f"{cls.__name__} fields")
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=flag_tp | None))
    return params


def with_config_flags(fn: Callable, cls: type, aliases: dict[str, tuple[str, ...]] | None = None) -> Callable:
    """``fn(cfg, **its own options)`` as the function typer reads: its own options plus
    ``--config``, ``--set`` and the generated flags of ``cls`` (``aliases``: more names for a
    field's flag, e.g. ``{"env_id": ("--env",)}``); ``fn`` gets the built config as ``cfg``."""
    own = [p.replace(annotation=eval(p.annotation, fn.__globals__) if isinstance(p.annotation, str)  # noqa: S307
                     else p.annotation)
           for p in inspect.signature(fn).parameters.values() if p.name != "cfg"]  # cfg: only for readers
    built_in = [
        inspect.Parameter("typer_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
        inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, annotation=str | None,
                          default=typer.Option(None, "--config", help=CONFIG_HELP)),
        inspect.Parameter("set_items", inspect.Parameter.KEYWORD_ONLY, annotation=list[str] | None,
                          default=typer.Option(None, "--set", help=SET_HELP)),
    ]
    generated = config_parameters(cls, aliases)
    names = [p.name for p in generated]
    clash = {p.name for p in own} & {*names, *_BUILT_IN}
    if clash:
        raise TypeError(f"{fn.__name__}: options {sorted(clash)} are also fields of {cls.__name__}")

    @functools.wraps(fn)
    def command(**kwargs: Any) -> Any:
        source = kwargs.pop("typer_ctx").get_parameter_source
        flags = {name: value for name in names
                 if (value := kwargs.pop(name)) is not None and source(name).name != "DEFAULT"}
        cfg = build_config(cls, kwargs.pop("config_file"), kwargs.pop("set_items"), **flags)
        return fn(cfg=cfg, **kwargs)

    params = [*own, *built_in, *generated]
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__  # typer reads the signature above, not fn's
    return command


class _LazyFlagsCommand(TyperCommand):
    """A config command whose flags are built the first time they are needed (to parse its
    arguments or print its help), not when the app is built: ``alignkit --help`` and every
    other command never read this config's fields and docstrings (start-up time)."""

    fn: Callable
    config: type | str
    aliases: dict[str, tuple[str, ...]] | None

    def _built(self) -> TyperCommand:
        if "_inner" not in self.__dict__:
            one = typer.Typer(add_completion=False)
            one.command(self.name, help=self.help)(with_config_flags(self.fn, config_class(self.config), self.aliases))
            self.__dict__["_inner"] = typer.main.get_command(one)  # a one-command app is that command
        return self.__dict__["_inner"]

    # click sets both in __init__ (from the placeholder typer registered); they come from _built
    params = property(lambda self: self._built().params, lambda self, value: None)
    callback = property(lambda self: self._built().callback, lambda self, value: None)


def config_class(config: type | str) -> type:
    """A config class, or its ``"module:Name"`` (imported when the command is first used)."""
    if isinstance(config, str):
        module, _, name = config.partition(":")
        return getattr(importlib.import_module(module), name)
    return config


def config_command(app: typer.Typer, name: str, config: type | str, *,
                   aliases: dict[str, tuple[str, ...]] | None = None) -> Callable[[Callable], Callable]:
    """Register ``fn(cfg, **its own options)`` as command ``name`` of ``app``, with the flags of
    :func:`with_config_flags` (built on first use); returns ``fn`` unchanged. ``config`` may be
    named as ``"alignkit.recipes.configs.dpo:DPOConfig"``: then ``alignkit --help`` does not even
    import it."""

    def decorate(fn: Callable) -> Callable:
        lazy = type(f"{name.title()}Command", (_LazyFlagsCommand,),
                    {"fn": staticmethod(fn), "config": config, "aliases": aliases})

        def placeholder() -> None:  # what typer sees at start-up: no parameters to build
            raise AssertionError("replaced by the command's own callback")

        app.command(name, cls=lazy, help=inspect.getdoc(fn))(placeholder)
        return fn

    return decorate
