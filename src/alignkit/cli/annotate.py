"""``alignkit annotate``: the annotation web app and its store, from the command line.

    alignkit annotate import   --db feedback.db --project demo items.jsonl
    alignkit annotate add-user --db feedback.db alice --group fr
    alignkit annotate serve    --db feedback.db --project demo
    alignkit annotate stats    --db feedback.db --project demo
    alignkit annotate export   --db feedback.db --project demo --format trl --out prefs.jsonl

``--db`` takes a SQLite path or a ``postgresql://`` URL. fastapi/sqlalchemy are imported
inside the commands (the ``app`` extra).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from alignkit.cli.common import (
    TRUSTED_PROXY_HELP,
    Db,
    Host,
    LoginName,
    Port,
    Project,
    SecureCookies,
)
from alignkit.errors import AlignkitError, DataError
from alignkit.feedback.errors import InvalidRequest, ProjectNotFound, UnknownFormat


def _store(db: str, *, existing: bool = False):
    """The store at ``db``; with ``existing`` a SQLite file must already be there (commands
    that only read or serve never create a database from a mistyped path)."""
    try:
        from alignkit.feedback.store import FeedbackStore, normalise_db_url
    except ModuleNotFoundError as e:
        raise AlignkitError(
            f"`alignkit annotate` needs the app extra ({e.name} is missing): "
            "pip install 'alignkit[app]'"
        ) from None
    try:
        url = normalise_db_url(db)
        if (
            existing
            and url.startswith("sqlite:///")
            and not Path(url.removeprefix("sqlite:///")).is_file()
        ):
            raise AlignkitError(
                f"--db: no database at {db} (a new one is made by `alignkit annotate import`, "
                "`project` or `add-user`)"
            )
        return FeedbackStore(db)
    except InvalidRequest as e:  # not a database URL
        raise AlignkitError(f"--db: {e}") from None


def _existing_project(store, db: str, project: str) -> None:
    """Refuse a project name the database does not hold, naming the ones it does."""
    try:
        store.project(project)
    except ProjectNotFound:
        known = store.project_names()
        listed = f" (projects: {', '.join(known)})" if known else " (it has no projects yet)"
        raise AlignkitError(
            f"--project: no project named {project!r} in {db}{listed}; create it with "
            f"`alignkit annotate project --db {db} --project {project}` or import items into it"
        ) from None


def _listen(host: str, port: int):
    """A listening socket on (host, port), or a one-line error when it is taken."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, as getaddrinfo gives: asyncio sets TCP_NODELAY on accepted
    # connections only then (without it every response waits out a 40 ms delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise AlignkitError(
                f"--port: {host}:{port} is already in use (another server?); pick another with --port"
            ) from None
        raise AlignkitError(
            f"--host/--port: cannot listen on {host}:{port}: {e.strerror}"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _warn_if_no_accounts(store, db: str) -> None:
    """What `annotate serve` and `chat serve` say when nobody can log in yet."""
    if not store.list_users():
        typer.echo(
            "warning: no accounts yet; create one with "
            f"`alignkit annotate add-user --db {db} NAME --role admin`",
            err=True,
        )


UVICORN_OPTIONS = {"log_level": "warning", "access_log": False, "server_header": False}
"""The uvicorn options `annotate serve` and `chat serve` share: warnings only, no access log,
no ``Server`` header."""


@contextmanager
def _flags(db: str) -> Iterator[None]:
    """Say the store's refusals in the command line's terms (its flags and commands)."""
    try:
        yield
    except ProjectNotFound as e:
        raise AlignkitError(
            f"--project: no project named {e.project!r}; import items with "
            f"`alignkit annotate import --db {db} --project {e.project} FILE` first"
        ) from None
    except UnknownFormat as e:
        raise AlignkitError(
            f"--format: expected one of {', '.join(e.choices)}, got {e.format!r}"
        ) from None


def read_item_file(path: Path) -> list:
    """Item dicts (rows with ``responses``) or alignkit/TRL/HH records from ``path``."""
    from alignkit.data import load_records, read_rows

    rows = list(read_rows(path))  # a missing file, a pipe, bad JSON: one-line DataErrors
    if not rows:
        raise DataError("no items (the file is empty)", path=str(path))
    first = rows[0][1]
    is_item = isinstance(first, dict) and "kind" not in first
    if is_item and ("responses" in first or first.get("type") == "video_pair"):
        out = []
        for line, row in rows:
            if not isinstance(row, dict):
                raise DataError("expected a JSON object", path=str(path), line=line)
            out.append(row)
        return out
    return load_records(path, keep_incomparable=True).records


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Collect human feedback: annotation web app, annotators, agreement, export.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="annotate")

    @group.command("serve")
    def serve(
        db: Db,
        project: Project = "default",
        host: Host = "127.0.0.1",
        port: Port = 8000,
        secure_cookies: SecureCookies = False,
        trusted_proxy: list[str] = typer.Option([], "--trusted-proxy", help=TRUSTED_PROXY_HELP),
        create: bool = typer.Option(
            False, "--create", help="Create the project when the database does not hold it yet."
        ),
    ):
        """Run the annotation web app (HTML for people, /api/v1 for bots)."""
        import uvicorn

        from alignkit.app.server import create_app

        store = _store(db, existing=not create)
        if not create:
            _existing_project(store, db, project)
        sock = _listen(host, port)  # before creating or saying anything: a taken port is one line
        _warn_if_no_accounts(store, db)
        web = create_app(
            store.url,
            project,
            secure_cookies=secure_cookies,
            store=store,
            trusted_proxies=tuple(trusted_proxy),
        )
        typer.echo(f"alignkit annotate: project {project!r} on http://{host}:{port}/", err=True)
        # proxy_headers=False: uvicorn would otherwise believe X-Forwarded-For from
        # 127.0.0.1; the app reads it itself, from --trusted-proxy addresses only
        config = uvicorn.Config(web, proxy_headers=False, **UVICORN_OPTIONS)
        uvicorn.Server(config).run(sockets=[sock])

    @group.command("import")
    def import_(
        file: Path = typer.Argument(..., help="JSONL/Parquet/HF dataset of items or records."),
        *,
        db: Db,
        project: Project = "default",
        gold: bool = typer.Option(
            False, "--gold", help="The records' labels are known answers: import as gold items."
        ),
    ):
        """Import items: prompt + responses (pairwise, ranking, rating), or data-layer records.

        Item rows: {"type": "pairwise"|"ranking"|"rating", "prompt": text or
        [{"role", "content"}, ...], "responses": [...], "id"?, "gold"?, "meta"?}; or clip
        pairs {"type": "video_pair", "video_a": "a.webm", "video_b": "b.webm", "prompt"?,
        "id"?, "meta"?} (paths relative to the file; .webm, .mp4 or .gif).
        Records (alignkit, TRL, HH): a comparison becomes a pairwise item, a ranking a
        ranking item, a rating a rating item. Importing the same file twice adds nothing.
        """
        from alignkit.feedback.media import import_video_pairs

        entries = read_item_file(file)
        store = _store(db)
        store.ensure_project(project)
        try:
            if all(isinstance(e, dict) and e.get("type") == "video_pair" for e in entries):
                result = import_video_pairs(
                    store, project, entries, gold=gold, base_dir=file.parent
                )
            else:
                result = store.add_items(project, entries, gold=gold)
        except DataError as e:
            raise DataError(e.reason, path=str(file), line=e.line, field=e.field) from None
        typer.echo(
            f"imported {result.added} items into project {project!r} "
            f"({result.skipped} already present)"
        )

    @group.command("project")
    def project_(
        db: Db,
        project: Project = "default",
        guidelines: Path | None = typer.Option(
            None, help="Text file shown in the guidelines panel."
        ),
        overlap: int | None = typer.Option(None, help="Annotators per item (k)."),
        tags: str | None = typer.Option(None, help="Extra comma-separated tags for this project."),
        gold_every: int | None = typer.Option(
            None,
            help="Serve an unseen gold item on 1 in n tasks, at random (0: only when nothing else).",
        ),
    ):
        """Create a project or change its settings."""
        text = None
        if guidelines is not None:
            if not guidelines.is_file():
                raise AlignkitError(f"--guidelines: no such file {guidelines}")
            text = guidelines.read_text(encoding="utf-8")
        store = _store(db)
        p = store.ensure_project(
            project,
            guidelines=text,
            overlap=overlap,
            tags=tags.split(",") if tags is not None else None,
            gold_every=gold_every,
        )
        typer.echo(
            f"project {p.name!r}: overlap {p.overlap}, gold every {p.gold_every}, "
            f"tags {', '.join(p.all_tags)}"
        )

    @group.command("add-user")
    def add_user(
        name: LoginName,
        db: Db,
        role: str = typer.Option("annotator", help="annotator or admin."),
        group_: str | None = typer.Option(
            None, "--group", help="The annotator's group (e.g. country) for per-group rates."
        ),
        password: bool = typer.Option(True, "--password/--no-password", help="Create a password."),
        token: bool = typer.Option(True, "--token/--no-token", help="Create an API token."),
        projects: list[str] = typer.Option(
            ["default"],
            "--project",
            help="Project the annotator may work on (repeat for several; admins: all).",
        ),
    ):
        """Create an account and print its one-time password and API token (shown once)."""
        store = _store(db)
        for p in projects:
            store.ensure_project(p)
        new = store.add_user(
            name, role=role, group=group_, password=password, token=token, projects=projects
        )
        typer.echo(f"created {new.user.role} {new.user.name!r}; these secrets are shown only once:")
        if new.password:
            typer.echo(f"password: {new.password}")
        if new.token:
            typer.echo(f"token:    {new.token}")

    user = typer.Typer(
        help="Revoke or restore access: deactivate, rotate a token, reset a password.",
        no_args_is_help=True,
    )
    group.add_typer(user, name="user")

    @user.command("deactivate")
    def user_deactivate(name: LoginName, db: Db):
        """Stop an account at once: its token, password and sessions no longer work."""
        _store(db, existing=True).set_active(name, False)
        typer.echo(f"deactivated {name!r}; its sessions are ended")

    @user.command("activate")
    def user_activate(name: LoginName, db: Db):
        """Let a deactivated account log in again (with its current secrets)."""
        _store(db, existing=True).set_active(name, True)
        typer.echo(f"activated {name!r}")

    @user.command("rotate-token")
    def user_rotate_token(name: LoginName, db: Db):
        """Replace an account's API token (the old one stops working; sessions end)."""
        tok = _store(db, existing=True).rotate_token(name)
        typer.echo(f"new token for {name!r} (shown only once):\ntoken:    {tok}")

    @user.command("reset-password")
    def user_reset_password(name: LoginName, db: Db):
        """Replace an account's password (the old one stops working; sessions end)."""
        pw = _store(db, existing=True).reset_password(name)
        typer.echo(f"new password for {name!r} (shown only once):\npassword: {pw}")

    @user.command("add-to-project")
    def user_add_to_project(name: LoginName, db: Db, project: Project = "default"):
        """Let an annotator work on another project."""
        with _flags(db):
            _store(db, existing=True).add_to_project(name, project)
        typer.echo(f"{name!r} is a member of project {project!r}")

    @group.command("stats")
    def stats(
        db: Db,
        project: Project = "default",
        as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
    ):
        """Agreement (Cohen's κ, Fleiss' κ, Krippendorff's α), gold accuracy, group rates."""
        from alignkit.feedback.store import format_stat, json_safe

        with _flags(db):
            s = _store(db, existing=True).stats(project)
        if as_json:
            typer.echo(json.dumps(json_safe(s), indent=2))
            return
        fs = format_stat
        typer.echo(
            f"project {s['project']}: {s['items']} items ({s['gold_items']} gold), "
            f"{s['votes']} labels, overlap {s['overlap']}"
        )
        for kind, a in s["agreement"].items():
            typer.echo(
                f"{kind}: {a['n_units']} units, {a['n_annotators']} annotators, "
                f"Krippendorff α {fs(a['krippendorff_alpha'])}, Fleiss κ {fs(a['fleiss_kappa'])} "
                f"({a['fleiss_units']} units × {a['fleiss_raters']} raters)"
            )
            for p in a["cohen_kappa"]:
                typer.echo(f"  Cohen κ {p['a']} / {p['b']}: {fs(p['kappa'])} on {p['n']} units")
        for u in s["annotators"]:
            gold = (
                f"gold accuracy {fs(u['gold_accuracy'])} on {u['gold_n']}"
                if u["gold_n"]
                else "no gold"
            )
            typer.echo(
                f"annotator {u['annotator']} ({u['group'] or '-'}): {u['votes']} labels, "
                f"median {fs(u['median_time_ms'])} ms, {gold}"
            )
        for g, r in s["groups"].items():
            rates = ", ".join(f"{k} {v:.2f}" for k, v in r["rates"].items() if not math.isnan(v))
            typer.echo(f"group {g}: {r['n']} pairwise labels: {rates}")

    @group.command("export")
    def export(
        db: Db,
        project: Project = "default",
        format: str = typer.Option(
            "trl",
            "--format",
            help="trl | trl_conversational | comparisons | rankings | ratings | corrections | raw",
        ),
        out: Path = typer.Option(..., "--out", help="Output JSONL file (written atomically)."),
    ):
        """Export labels: TRL prompt/chosen/rejected (+ mu for ties), records, or raw votes."""
        with _flags(db):
            n = _store(db, existing=True).export(project, format, out)
        typer.echo(f"wrote {n} rows ({format}) to {out}")
