"""The ``alignkit`` command line.

Each command group lives in its own module with a ``register(app)`` function; heavy
imports (torch, transformers, fastapi) happen inside the commands so ``alignkit --help``
stays fast. User mistakes (:class:`~alignkit.errors.AlignkitError`) print one line and
exit with status 2.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from alignkit.errors import AlignkitError
from alignkit.utils.process_group import leave_process_group

# Command modules, in help order. Each defines ``register(app: typer.Typer)``.
COMMAND_MODULES = [
    "alignkit.cli.data",
    "alignkit.cli.reward",
    "alignkit.cli.policy",
    "alignkit.cli.decoding",
    "alignkit.cli.annotate",
    "alignkit.cli.chat",
    "alignkit.cli.loop",
    "alignkit.cli.control",
    "alignkit.cli.humans",
]


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="alignkit",
        help="Align models with human preferences: feedback, reward models, policy optimisation.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
    return app


def main(argv: list[str] | None = None) -> None:
    # transformers/datasets read this when first imported: their weight-loading bars are noise
    # next to alignkit's own rich progress bars.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # under `accelerate launch` every process runs the command; rank 0 alone reports results
    if int(os.environ.get("RANK", "0")) > 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    app = build_app()
    try:
        app(args=argv, standalone_mode=True)
    except AlignkitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a file that cannot be opened or written: the user's to fix
        where = f"{str(e.filename)[:300]}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(2)
    except RecursionError:  # input nested past what Python can walk
        print("error: input nested too deeply", file=sys.stderr)
        sys.exit(2)
    finally:
        leave_process_group()
