"""``alignkit chat``: talk to models in the annotation app, an arena, and what it yields.

    alignkit chat serve       --db feedback.db --project demo --model runs/base:base --model runs/dpo:dpo
    alignkit chat leaderboard --db feedback.db --project demo
    alignkit chat export      --db feedback.db --project demo --format trl --out chat.jsonl
    alignkit chat stats       --db feedback.db --project demo
    alignkit chat review      --db feedback.db --project demo
    alignkit chat revise      --db feedback.db --project demo --reviser smollm2 --out revisions.jsonl

Same database, accounts and projects as ``alignkit annotate``. fastapi/sqlalchemy/uvicorn
(the ``app`` extra) and torch are imported inside the commands.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from alignkit.cli.common import (
    CONFIG_HELP,
    DB_HELP,
    SET_HELP,
    TRUSTED_PROXY_HELP,
    Db,
    Host,
    Port,
    Project,
    SecureCookies,
)
from alignkit.errors import AlignkitError

MODEL_HELP = (
    "A model to chat with: PATH or PATH:NAME (a save_pretrained directory, smollm2, a *.gguf); "
    "repeat for several (the arena needs two)."
)


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``"runs/dpo:dpo"`` → ``("runs/dpo", "dpo")``; without a name the last path part."""
    path, sep, name = spec.rpartition(":")
    if not sep or not name or "/" in name or not path:
        path, name = spec, spec.rstrip("/").split("/")[-1]
    if not name:
        raise AlignkitError(f"--model: expected PATH or PATH:NAME, got {spec!r}")
    return path, name


def _chat_store(db: str):
    from alignkit.cli.annotate import _store
    from alignkit.feedback.conversations import ChatStore

    return ChatStore(_store(db))


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Chat with models and collect feedback from conversations; arena and leaderboard.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="chat")

    @group.command("serve")
    def serve(
        db: Db,
        project: Project = "default",
        model: list[str] = typer.Option(..., "--model", help=MODEL_HELP),
        host: Host = "127.0.0.1",
        port: Port = 8000,
        secure_cookies: SecureCookies = False,
        max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Longest answer in tokens."),
        temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature (0: greedy)."),
        config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
        overrides: list[str] = typer.Option([], "--set", help=SET_HELP),
        trusted_proxy: list[str] = typer.Option([], "--trusted-proxy", help=TRUSTED_PROXY_HELP),
    ):
        """Serve the annotation app with the chat page, the arena and the leaderboard."""
        import uvicorn

        from alignkit.app.chat import create_chat_app
        from alignkit.app.chat_service import ChatConfig, ChatService
        from alignkit.app.generation import load_chat_model
        from alignkit.cli.annotate import UVICORN_OPTIONS, _listen, _store, _warn_if_no_accounts
        from alignkit.cli.common import build_config

        cfg = build_config(ChatConfig, config, overrides, max_new_tokens=max_new_tokens, temperature=temperature)
        sock = _listen(host, port)  # before loading models: a taken port is one line, not a minute later
        store = _store(db)
        store.ensure_project(project)
        specs = [parse_model_spec(s) for s in model]
        models = []
        for path, name in specs:
            typer.echo(f"loading {name} from {path} …", err=True)
            try:
                models.append(load_chat_model(path, name))
            except AlignkitError as e:
                raise AlignkitError(f"--model {path}:{name}: {e}") from None
        svc = ChatService(store, models, cfg)
        if n := svc.chat.mark_interrupted():
            typer.echo(f"{n} answer(s) left unfinished by the last run are marked interrupted", err=True)
        _warn_if_no_accounts(store, db)
        web = create_chat_app(store.url, project, svc, secure_cookies=secure_cookies, store=store,
                              trusted_proxies=tuple(trusted_proxy))
        names = ", ".join(m.name for m in models)
        typer.echo(f"alignkit chat: project {project!r}, models {names} on http://{host}:{port}/chat", err=True)
        try:
            # proxy_headers=False: uvicorn would otherwise believe X-Forwarded-For from
            # 127.0.0.1 (a client could dodge the per-client limits by rotating it)
            uvicorn.Server(uvicorn.Config(web, proxy_headers=False, **UVICORN_OPTIONS)).run(sockets=[sock])
        finally:
            svc.worker.close()

    @group.command("leaderboard")
    def leaderboard_(
        db: Db,
        project: Project = "default",
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the intervals."),
        seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ):
        """Bradley–Terry standings of the arena's models with bootstrap intervals and Elo."""
        from alignkit.feedback.exports import json_safe
        from alignkit.feedback.leaderboard import leaderboard

        if bootstrap < 0:
            raise AlignkitError("--bootstrap: expected a number ≥ 0")
        chat = _chat_store(db)
        with _flags(db):
            battles = chat.battles(project)
            models = chat.arena_models_seen(project)
        st = leaderboard(battles, models, bootstrap=bootstrap, seed=seed)
        if as_json:
            typer.echo(json.dumps(json_safe({
                "project": project, "battles": st.battles, "alpha": st.alpha,
                "regularised": st.regularised, "bootstrap": st.bootstrap, "level": st.level,
                "rows": [r.__dict__ for r in st.rows],
            }), indent=2))
            return
        typer.echo(f"{st.battles} arena votes in project {project!r}; Bradley–Terry MLE, "
                   f"{st.level:.0%} bootstrap intervals ({st.bootstrap} resamples); Elo = 1000 + 400·θ/ln 10")
        if st.regularised:
            typer.echo(f"note: a model has not lost (or won) yet, so the MLE is infinite: ridge α = {st.alpha}")
        typer.echo(f"{'rank':>4}  {'model':<24} {'Elo':>6}  {'interval':>13}  {'θ':>7}  "
                   f"{'battles':>7} {'W':>4} {'L':>4} {'T':>4} {'bad':>4}")

        def f(x, fmt):
            return format(x, fmt) if math.isfinite(x) else "—"

        for i, r in enumerate(st.rows, 1):
            interval = f"{f(r.elo_lo, '.0f')}–{f(r.elo_hi, '.0f')}"
            typer.echo(f"{i if math.isfinite(r.theta) else '—':>4}  {r.model:<24} {f(r.elo, '.0f'):>6}  "
                       f"{interval:>13}  {f(r.theta, '.3f'):>7}  {r.battles:>7} {r.wins:>4} {r.losses:>4} "
                       f"{r.ties:>4} {r.both_bad:>4}")

    @group.command("export")
    def export(
        db: Db,
        project: Project = "default",
        format: str = typer.Option("trl", "--format", help="trl, comparisons, ratings, corrections, sft or raw."),
        out: Path = typer.Option(..., "--out", help="Output JSONL file."),
    ):
        """Write the chat's feedback: TRL conversational preferences, records, SFT rows, raw."""
        from alignkit.feedback.conversations import CHAT_EXPORT_FORMATS
        from alignkit.feedback.exports import write_jsonl

        if format not in CHAT_EXPORT_FORMATS:
            raise AlignkitError(f"--format: expected one of {', '.join(CHAT_EXPORT_FORMATS)}, got {format!r}")
        with _flags(db):
            n = write_jsonl(_chat_store(db).export_rows(project, format), out)
        typer.echo(f"wrote {n} rows ({format}) to {out}")

    @group.command("stats")
    def stats(db: Db, project: Project = "default"):
        """Signals per kind and model, "both bad" counted, agreement on reviewed pairs (JSON)."""
        from alignkit.feedback.exports import json_safe

        with _flags(db):
            s = _chat_store(db).stats(project)
        typer.echo(json.dumps(json_safe(s), indent=2))

    @group.command("review")
    def review(db: Db, project: Project = "default"):
        """Queue the chat's comparisons as pairwise items of the project, for other annotators."""
        with _flags(db):
            r = _chat_store(db).queue_for_review(project)
        typer.echo(f"queued {r.added} pairs for review in project {project!r} ({r.skipped} already queued)")

    @group.command("revise")
    def revise_(
        out: Path = typer.Option(..., "--out", help="TRL conversational rows: revision ≻ original."),
        db: str | None = typer.Option(None, "--db", help=DB_HELP + " Its comments are revised."),
        project: Project = "default",
        data: Path | None = typer.Option(None, "--data", help="Or: a record file whose comments are revised."),
        reviser: str = typer.Option("smollm2", "--reviser", help="The model that revises (a path, smollm2)."),
        sft_out: Path | None = typer.Option(None, "--sft-out", help="Also write the revisions as SFT rows."),
        max_new_tokens: int = typer.Option(96, "--max-new-tokens", help="Longest revision in tokens."),
    ):
        """Language feedback: a model revises each commented answer given the comment.

        The chat's "what was the issue" texts (thumbs down) and the annotators' comments on
        votes (the rejected or worst-ranked response is revised). Writes revision ≻ original
        as TRL conversational rows marked "machine_revised": true (and, with --sft-out, the
        revisions as SFT rows), ready to join the human data.
        """
        from alignkit.data import load_records
        from alignkit.feedback.exports import write_jsonl
        from alignkit.feedback.revision import (
            lm_reviser,
            requests_from_records,
            revise,
            revision_records,
            revision_trl_rows,
        )
        from alignkit.models.loading import load_causal_lm, load_tokenizer

        if (db is None) == (data is None):
            raise AlignkitError("give either --db (with --project) or --data")
        if max_new_tokens < 1:
            raise AlignkitError("--max-new-tokens: expected a number ≥ 1")
        if data is not None:
            records = load_records(data, keep_incomparable=True).records
        else:
            chat = _chat_store(db)
            with _flags(db):
                records = chat.export_records(project, "ratings")
                for kind in ("comparisons", "rankings", "ratings"):
                    records += chat.store.export_records(project, kind)
        requests = requests_from_records(records)
        if not requests:
            typer.echo("no commented answers to revise")
            write_jsonl([], out)
            return
        typer.echo(f"revising {len(requests)} commented answers with {reviser} …", err=True)
        model = load_causal_lm(reviser).eval()
        revisions = revise(requests, lm_reviser(model, load_tokenizer(reviser), max_new_tokens=max_new_tokens))
        comparisons, sft = revision_records(requests, revisions, str(reviser))
        n = write_jsonl(revision_trl_rows(comparisons), out)
        typer.echo(f"wrote {n} revision ≻ original rows to {out} "
                   f"({len(requests) - n} revisions empty or unchanged, dropped)")
        if sft_out is not None:
            typer.echo(f"wrote {write_jsonl(sft, sft_out)} SFT rows to {sft_out}")


def _flags(db: str):
    from alignkit.cli.annotate import _flags as annotate_flags

    return annotate_flags(db)

