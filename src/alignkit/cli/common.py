"""What every command module shares: building a recipe's config from ``--config FILE``,
``--set key=value`` and the command's own options (in that order; explicit options win), and
the options several commands take (``--db``, ``--project``), declared once.

Nested configs take dotted keys: ``--set ppo.kl_coef=0.1`` (see :mod:`alignkit.config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from alignkit.errors import ConfigError

CONFIG_HELP = "YAML file of config keys (explicit options override it)."
SET_HELP = "Override any config key, e.g. --set lr=1e-5 or --set ppo.kl_coef=0.1 (repeatable)."
DB_HELP = "SQLite file path (created if missing) or postgresql://user:pw@host/db URL."
PROJECT_HELP = ("Project name (items, settings and labels are kept per project; `alignkit annotate` and "
                "`alignkit chat` share the projects, accounts and store).")

# the feedback-store options of `alignkit annotate` and `alignkit chat`, declared once
Db = Annotated[str, typer.Option("--db", help=DB_HELP)]
"""``--db URL`` (required)."""
Project = Annotated[str, typer.Option("--project", help=PROJECT_HELP)]
"""``--project NAME``; give it a default in the signature: ``project: Project = "default"``."""
LoginName = Annotated[str, typer.Argument(help="Login name.")]
"""An account's login name (positional)."""
# and of their web servers (`annotate serve`, `chat serve`)
Host = Annotated[str, typer.Option("--host", help="Interface to listen on (loopback by default).")]
Port = Annotated[int, typer.Option("--port", help="TCP port.")]
SecureCookies = Annotated[bool, typer.Option("--secure-cookies", help="Mark cookies Secure (when served behind HTTPS).")]
TRUSTED_PROXY_HELP = ("Address of a reverse proxy whose X-Forwarded-For/-Proto/-Host are believed "
                      "(repeatable; e.g. 127.0.0.1 for Caddy on the same host). Without it they are ignored.")
"""``--trusted-proxy ADDR`` (a list option: give it ``[]`` as default in the signature)."""


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
