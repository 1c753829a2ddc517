"""``alignkit data``: inspect, convert and split feedback files."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from alignkit.data.formats import FORMATS

data_app = typer.Typer(
    help="Inspect, convert and split feedback files (JSONL, .jsonl.gz, Parquet, HF datasets).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _check_format(value: str | None, option: str) -> str | None:
    from alignkit.errors import ConfigError

    if value is not None and value not in FORMATS:
        raise ConfigError(f"{option}: expected one of {', '.join(FORMATS)}, got {value!r}")
    return value


@data_app.command("inspect")
def inspect_cmd(
    file: Path = typer.Argument(..., help="Feedback file or saved HF dataset directory."),
    tokenizer: Path | None = typer.Option(
        None, "--tokenizer", help="Tokenizer directory for token counts (default: UTF-8 bytes)."
    ),
    format: str | None = typer.Option(
        None, "--format", help=f"Force the record format ({', '.join(FORMATS)})."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Detected format, counts per record kind, ties/incomparable, length statistics."""
    from alignkit.data import load_records
    from alignkit.data.stats import byte_length, inspect_records, tokenizer_length

    _check_format(format, "--format")
    result = load_records(file, keep_incomparable=True, format=format)
    if tokenizer is not None:
        from alignkit.models import load_tokenizer

        count, counter = tokenizer_length(load_tokenizer(tokenizer)), f"tokenizer {tokenizer}"
    else:
        count, counter = byte_length, "utf-8 bytes (no --tokenizer given)"
    summary = inspect_records(result, count_tokens=count, token_counter=counter)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)


def _print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    c = s["comparisons"]
    headline = f"{s['path']}: format {s['format']} ({s['container']}), {s['rows']} rows"
    if c["total"]:
        headline += f", {c['usable']} pairs ({c['ties']} ties, {c['incomparable']} incomparable)"
    console.print(headline, highlight=False, soft_wrap=True)
    overview = Table(show_header=False)
    overview.add_column(style="bold")
    overview.add_column()
    overview.add_row("format", f"{s['format']} ({s['container']})")
    overview.add_row("rows", str(s["rows"]))
    for kind, n in sorted(s["kinds"].items()):
        overview.add_row(f"  {kind}", str(n))
    if c["total"]:
        overview.add_row("pairs (usable)", str(c["usable"]))
        overview.add_row("ties (mu = ½)", str(c["ties"]))
        overview.add_row("soft labels", str(c["soft"]))
        overview.add_row("incomparable", str(c["incomparable"]))
        overview.add_row("identical a/b", str(c["identical_responses"]))
    overview.add_row("distinct prompts", str(s["distinct_prompts"]))
    overview.add_row("annotators", str(s["annotators"]))
    console.print(overview)

    lengths = Table(title=f"Lengths (tokens: {s['token_counter']})", title_justify="left")
    for col in ("", "n", "min", "mean", "median", "p95", "max"):
        lengths.add_column(col, justify="left" if not col else "right")
    for name, st in s["lengths"].items():
        lengths.add_row(
            name.replace("_", " "),
            *(str(st[k]) for k in ("n", "min", "mean", "median", "p95", "max")),
        )
    console.print(lengths)


@data_app.command("convert")
def convert_cmd(
    file: Path = typer.Argument(..., help="Input feedback file or saved HF dataset directory."),
    to: str = typer.Option(
        ..., "--to", help=f"Output format: {', '.join(FORMATS)} (trl: prompt/chosen/rejected)."
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        help="Output path; .jsonl, .jsonl.gz or .parquet, or a directory (HF dataset).",
    ),
    format: str | None = typer.Option(None, "--format", help="Force the input record format."),
    keep_incomparable: bool = typer.Option(
        False, "--keep-incomparable", help="Keep incomparable comparisons (flagged in the output)."
    ),
) -> None:
    """Convert between formats (TRL/HH output: rankings, ratings and corrections become
    pairs)."""
    from rich.console import Console

    from alignkit.data import load_records, save_records, to_comparisons

    _check_format(to, "--to")
    _check_format(format, "--format")
    result = load_records(file, keep_incomparable=keep_incomparable, format=format)
    records = result.records
    note = ""
    if to != "alignkit" and any(r.kind != "comparison" for r in records):
        kept = [r for r in records if r.kind == "comparison"]  # incomparable ones stay
        others = [r for r in records if r.kind != "comparison"]
        pairs = to_comparisons(others, ratings_to_pairs=True, rankings_to_pairs=True)
        note = f" ({len(others)} non-comparison records became {len(pairs)} pairs)"
        records = kept + pairs
    n = save_records(records, out, format=to)
    dropped = (
        f", dropped {result.n_incomparable} incomparable"
        if result.n_incomparable and not keep_incomparable
        else ""
    )
    Console().print(
        f"wrote {n} rows ({to}) to {out} from {result.format} input{note}{dropped}",
        highlight=False,
    )


@data_app.command("split")
def split_cmd(
    file: Path = typer.Argument(..., help="Input feedback file."),
    eval_fraction: float = typer.Option(0.1, "--eval-fraction", help="Share of prompts to eval."),
    seed: int = typer.Option(0, "--seed", help="Shuffle seed (the split is deterministic)."),
    train_out: Path = typer.Option(..., "--train-out", help="Train output path."),
    eval_out: Path = typer.Option(..., "--eval-out", help="Eval output path."),
    to: str = typer.Option("alignkit", "--to", help="Output format."),
) -> None:
    """Split by prompt into train/eval (no prompt in both halves)."""
    from rich.console import Console

    from alignkit.data import load_records, save_records, train_eval_split

    _check_format(to, "--to")
    result = load_records(file)
    train, eval_ = train_eval_split(result.records, eval_fraction, seed)
    save_records(train, train_out, format=to)
    save_records(eval_, eval_out, format=to)
    Console().print(
        f"train: {len(train)} records → {train_out}; eval: {len(eval_)} records → {eval_out}",
        highlight=False,
    )
