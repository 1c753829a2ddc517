"""What every command module shares: building a recipe's config from ``--config FILE``,
``--set key=value`` and the command's own options (in that order; explicit options win).

Nested configs take dotted keys: ``--set ppo.kl_coef=0.1`` (see :mod:`alignkit.config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignkit.errors import ConfigError

CONFIG_HELP = "YAML file of config keys (explicit options override it)."
SET_HELP = "Override any config key, e.g. --set lr=1e-5 or --set ppo.kl_coef=0.1 (repeatable)."


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """``["lr=1e-5", "ppo.kl_coef=0.1"]`` → ``{"lr": "1e-5", "ppo.kl_coef": "0.1"}``."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def build_config(cls: type, config: str | Path | None, sets: list[str] | None, **explicit: Any):
    """``cls()`` ← the YAML file ← ``--set`` items ← explicit options that are not None."""
    from alignkit.config import apply_overrides, load_config

    cfg = load_config(cls, config)
    cfg = apply_overrides(cfg, parse_sets(sets), source="--set")
    return apply_overrides(cfg, {k: v for k, v in explicit.items() if v is not None}, source="options")
