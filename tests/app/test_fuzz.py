"""Fuzz: hostile requests to every endpoint, and malformed files to the CLI (issue 15).

* API: a seeded corpus of hostile requests — odd ids, forged or missing credentials,
  bodies that are not JSON, nested 5000 deep, hold 5000-digit integers, lone surrogates,
  NUL, wrong types, oversized bodies, odd Range headers — against a real
  ``alignkit annotate serve`` (uvicorn, SQLite and PostgreSQL). Every reply must be a
  status below 500, no connection may be dropped, and the server log holds no traceback.
* CLI: ``data inspect``, ``data convert``, ``reward train`` and ``annotate import`` on
  malformed files (bad JSON of every kind, gzip/Parquet impostors, a directory, a name
  over 255 characters, a FIFO with no writer): each must exit 2 with one ``error:`` line,
  within a few seconds.
"""

import gzip
import json
import os
import random
import signal
import time

import httpx
import pytest

from alignkit.cli import main
from alignkit.feedback.store import FeedbackStore

N_PER_BACKEND = 520  # two backends: 1,040 hostile requests
DEEP = "[" * 5000 + "]" * 5000
HUGE_INT = "9" * 5000


def _bodies(rng):
    """Hostile request bodies (bytes), in the shapes the API reads."""
    good = {"choice": "A", "tags": [[], []], "comment": "ok"}
    text = rng.choice(["\\ud800", "\\udfff\\ud800", "\\u0000", "a\\u0000b", "x" * 200, ""])
    return rng.choice(
        [
            b"",
            b"{",
            b"\xff\xfe\x00garbage",
            b"null",
            b"[1, 2, 3]",
            b'"just a string"',
            ('{"choice": ' + DEEP + "}").encode(),
            ('{"ids": [' + HUGE_INT + "]}").encode(),
            ('{"choice": "A", "comment": "' + text + '"}').encode(),
            ('{"items": [{"prompt": "' + text + '", "responses": ["a", "b"]}]}').encode(),
            (b'{"items": [{"prompt": [], "responses": ["a", "b"]}]}'),
            (
                '{"items": [{"type": "video_pair", "responses": ["media:' + "0" * 64 + '"]}]}'
            ).encode(),
            (b'{"items": "nope", "gold": "yes"}'),
            ('{"items": [' + ",".join(["{}"] * 50) + "]}").encode(),
            (b'{"name": null}'),
            ('{"name": "u' + str(rng.randrange(10**6)) + '", "group": "' + text + '"}').encode(),
            (b'{"name": ["x"], "role": 7, "password": "yes"}'),
            (b'{"ids": [1, true, null, -1, 1e308]}'),
            (b'{"ids": "all"}'),
            (b'{"ranks": [1, 2], "ratings": ["a"], "edits": [1, {}], "tags": "x"}'),
            (b'{"choice": "B", "strength": "enormous"}'),
            ('{"choice": "A", "edits": ["' + "y" * 2000 + '", null]}').encode(),
            json.dumps(good).encode(),
            b'{"choice": 1e309}',
            b"x" * (70 * 1024),  # over the anonymous limit
        ]
    )


def _requests(rng, aid, item_id, tokens):
    """One hostile request: (method, path, headers, body)."""
    ids = [
        str(aid),
        str(item_id),
        "0",
        "-1",
        str(2**63),
        str(2**64 + 1),
        "abc",
        "1e9",
        HUGE_INT,
        "%00",
        "..%2F..%2Fetc%2Fpasswd",
        "9" * 30,
    ]
    names = ["victim", "nobody", "x" * 300, "a%00b", "%F0%9F%98%80", ".."]
    i, name = rng.choice(ids), rng.choice(names)
    pos = rng.choice(["0", "1", "2", "-1", "99999999999999999999"])
    fmt = rng.choice(["raw", "trl", "comparisons", "xml", "%00", "../x", "r" * 500])
    routes = [
        ("GET", "/healthz"),
        ("GET", "/favicon.ico"),
        ("GET", "/"),
        ("GET", "/login"),
        ("POST", "/login"),
        ("POST", "/logout"),
        ("GET", "/annotate"),
        ("POST", f"/annotate/{i}"),
        ("POST", f"/annotate/{i}/skip"),
        ("GET", f"/annotate/{i}/clip/{pos}"),
        ("GET", "/admin"),
        ("GET", f"/admin/export/{fmt}"),
        ("GET", "/api/v1/me"),
        ("GET", "/api/v1/tasks/next"),
        ("GET", f"/api/v1/assignments/{i}"),
        ("POST", f"/api/v1/assignments/{i}/label"),
        ("POST", f"/api/v1/assignments/{i}/skip"),
        ("GET", f"/api/v1/assignments/{i}/clip/{pos}"),
        ("GET", "/api/v1/progress"),
        ("POST", "/api/v1/items"),
        ("POST", "/api/v1/items/labels"),
        ("POST", "/api/v1/items/close"),
        ("POST", "/api/v1/users"),
        ("POST", f"/api/v1/users/{name}/deactivate"),
        ("POST", f"/api/v1/users/{name}/activate"),
        ("POST", f"/api/v1/users/{name}/rotate-token"),
        ("POST", f"/api/v1/users/{name}/reset-password"),
        ("GET", f"/api/v1/export?format={fmt}"),
        ("GET", "/api/v1/stats"),
        ("GET", "/static/annotate.js"),
        ("GET", "/static/..%2F..%2Fserver.py"),
        ("PUT", "/api/v1/items"),
        ("DELETE", "/api/v1/me"),
    ]
    method, path = rng.choice(routes)
    headers = {}
    who = rng.choice(["none", "forged", "annotator", "admin", "admin", "annotator", "odd"])
    if who == "forged":
        headers["Authorization"] = "Bearer akt_" + "A" * 43
    elif who in ("annotator", "admin"):
        headers["Authorization"] = f"Bearer {tokens[who]}"
    elif who == "odd":
        headers["Authorization"] = rng.choice(["Basic eA==", "Bearer", "bearer  x y", "Bearer \xe9".encode("latin-1")])
    if rng.random() < 0.3:
        headers["Cookie"] = rng.choice(
            ["ak_session=aks_forged", "ak_session=", "ak_login_csrf=x; ak_session=" + "z" * 4000]
        )
    if rng.random() < 0.2:
        headers["Range"] = rng.choice(
            ["bytes=0-1", "bytes=-5", "bytes=5-1", "bytes=abc", "bytes=0-"]
        )
    body = None
    if method in ("POST", "PUT"):
        if path in ("/login", "/logout") or path.startswith("/annotate/"):
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = rng.choice(
                [
                    b"username=a%00b&password=x&csrf_token=x",
                    b"username=" + b"%ED%A0%80" * 3 + b"&password=%00",
                    b"csrf_token=&choice=A&edit_0=" + b"q" * 3000,
                    b"%%%&&&==",
                    b"choice=" + b"A" * 10,
                    b"x" * (70 * 1024),
                ]
            )
        else:
            headers["Content-Type"] = rng.choice(
                ["application/json", "text/plain", "application/json"]
            )
            body = _bodies(rng)
    return method, path, headers, body


@pytest.mark.timeout(120)
def test_api_fuzz_no_5xx_no_dropped_connections(db_url, start_server, tmp_path):
    if db_url.startswith("sqlite"):
        db = tmp_path / "fuzz.db"
    else:
        db = db_url
    store = FeedbackStore(db)
    store.ensure_project("fz", gold_every=0)
    store.add_items("fz", [{"prompt": f"q{i}", "responses": ["a", "b"]} for i in range(5)])
    admin = store.add_user("boss", role="admin", password=False)
    ann = store.add_user("ann", password=False, projects=["fz"])
    store.add_user("victim", projects=["fz"])
    task = store.next_task("fz", ann.user)
    store.close()
    server = start_server(db, "fz")
    tokens = {"annotator": ann.token, "admin": admin.token}
    rng = random.Random(15)
    statuses, failures = {}, []
    t0 = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(N_PER_BACKEND):
            method, path, headers, body = _requests(rng, task.assignment_id, task.item_id, tokens)
            try:
                r = client.request(method, path, headers=headers, content=body)
            except httpx.HTTPError as e:  # a dropped connection, a protocol error
                failures.append(f"{method} {path[:80]}: {type(e).__name__} {e}")
                continue
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code >= 500:
                failures.append(f"{method} {path[:80]} -> {r.status_code}: {r.text[:200]}")
        assert client.get("/healthz").status_code == 200
    elapsed = time.monotonic() - t0
    log = server.log.name
    server.stop()
    text = open(log, encoding="utf-8", errors="replace").read()
    assert not failures, failures[:10]
    assert "Traceback" not in text, text[-3000:]
    assert sum(statuses.values()) == N_PER_BACKEND
    assert sum(v for k, v in statuses.items() if 200 <= k < 300) > 20, statuses  # not all refused
    print(f"{N_PER_BACKEND} requests in {elapsed:.1f} s: {dict(sorted(statuses.items()))}")


# ---------------------------------------------------------------------- CLI


def _malformed_files(d):
    """(name, path) of malformed inputs; each is something a user could plausibly pass."""
    d.mkdir(exist_ok=True)
    out = []

    def put(name, data: bytes):
        p = d / name
        p.write_bytes(data)
        out.append((name, p))

    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    put("empty.jsonl", b"")
    put("blank.jsonl", b"\n\n   \n")
    put("bom_only.jsonl", b"\xef\xbb\xbf")
    put("latin1.jsonl", '{"prompt": "café", "chosen": "a", "rejected": "b"}'.encode("latin-1"))
    put("binary.jsonl", bytes(random.Random(0).randrange(256) for _ in range(2000)))
    put("nul.jsonl", b"\x00" * 100)
    put("deep_array.jsonl", b"[" * 100_000 + b"]" * 100_000)
    put("deep_field.jsonl", b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    put("deep_object.jsonl", b'{"a":' * 50_000 + b"1" + b"}" * 50_000)
    put(
        "huge_int.jsonl",
        b'{"prompt": "p", "chosen": "a", "rejected": "b", "mu": ' + HUGE_INT.encode() + b"}",
    )
    put("huge_float.jsonl", b'{"prompt": "p", "chosen": "a", "rejected": "b", "mu": 1e999999}')
    put("nan_mu.jsonl", b'{"prompt": "p", "chosen": "a", "rejected": "b", "mu": NaN}')
    put("mu_string.jsonl", b'{"prompt": "p", "chosen": "a", "rejected": "b", "mu": "high"}')
    put("mu_big.jsonl", b'{"prompt": "p", "chosen": "a", "rejected": "b", "mu": 7}')
    put("truncated.jsonl", json.dumps(row).encode()[:-5])
    put("unterminated_array.json", b"[{" + b'"prompt": "p"')
    put("array_of_scalars.json", b"[1, 2, 3]")
    put("scalar_lines.jsonl", b"1\n2\n3\n")
    put("string_lines.jsonl", b'"a"\n"b"\n')
    put("null_line.jsonl", b"null\n")
    put("list_line.jsonl", b"[]\n")
    put("surrogate.jsonl", b'{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}\n')
    put("surrogate_key.jsonl", b'{"\\udc80": 1}\n')
    put("prompt_int.jsonl", b'{"prompt": 5, "chosen": "a", "rejected": "b"}\n')
    put("chosen_list.jsonl", b'{"prompt": "p", "chosen": ["a"], "rejected": "b"}\n')
    put("missing_rejected.jsonl", b'{"prompt": "p", "chosen": "a"}\n')
    put("unknown_shape.jsonl", b'{"foo": 1, "bar": 2}\n')
    put("kind_unknown.jsonl", b'{"kind": "essay", "text": "x"}\n')
    put("kind_int.jsonl", b'{"kind": 5}\n')
    put("mixed.jsonl", (json.dumps(row) + "\n" + '{"kind": "ranking"}\n').encode())
    put("second_bad.jsonl", (json.dumps(row) + "\n{bad json\n").encode())
    put(
        "ranking_bad.jsonl",
        b'{"kind": "ranking", "prompt": "p", "responses": ["a"], "order": [5]}\n',
    )
    put("rating_bad.jsonl", b'{"kind": "rating", "prompt": "p", "response": "a", "score": "x"}\n')
    put("hh_types.jsonl", b'{"chosen": 1, "rejected": null}\n')
    put("items_bad_type.jsonl", b'{"type": "essay", "prompt": "p", "responses": ["a", "b"]}\n')
    put("items_responses.jsonl", b'{"prompt": "p", "responses": "ab"}\n')
    put(
        "items_27.jsonl",
        json.dumps({"type": "ranking", "prompt": "p", "responses": ["r"] * 27}).encode(),
    )
    put("items_empty_turns.jsonl", b'{"prompt": [], "responses": ["a", "b"]}\n')
    put("items_bad_turns.jsonl", b'{"prompt": [{"role": 1}], "responses": ["a", "b"]}\n')
    put("items_gold.jsonl", b'{"prompt": "p", "responses": ["a", "b"], "gold": {"choice": 5}}\n')
    put("items_meta.jsonl", b'{"prompt": "p", "responses": ["a", "b"], "meta": [1]}\n')
    put("items_video.jsonl", b'{"type": "video_pair", "video_a": "nope.webm", "video_b": 3}\n')
    put("dup_keys.jsonl", b'{"prompt": "p", "prompt": 3, "chosen": "a", "rejected": "b"}\n')
    put("fake.jsonl.gz", b"\x1f\x8b" + b"not gzip at all")
    put("truncated.jsonl.gz", gzip.compress(json.dumps(row).encode() * 50)[:40])
    put("gz_garbage.jsonl.gz", gzip.compress(b"\xff\xfe\xfd" * 100))
    put("fake.parquet", b"PAR1" + b"\x00" * 100)
    put("crlf_bad.jsonl", b'{"prompt": "p",\r\n "chosen": "a"}\r\n')
    (d / "a_directory").mkdir(exist_ok=True)
    out.append(("directory", d / "a_directory"))
    out.append(("missing", d / "does_not_exist.jsonl"))
    out.append(("long_name", d / ("n" * 300 + ".jsonl")))
    fifo = d / "no_writer.fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    out.append(("fifo", fifo))
    loop = d / "loop.jsonl"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    out.append(("symlink_loop", loop))
    return out


class Hung(Exception):
    pass


def _alarm(signum, frame):
    raise Hung()


@pytest.mark.timeout(60)
def test_cli_fuzz_malformed_files_are_one_line_errors(tmp_path, capsys):
    files = _malformed_files(tmp_path / "bad")
    db = str(tmp_path / "fz.db")
    commands = [
        lambda p: ["data", "inspect", str(p)],
        lambda p: ["data", "convert", str(p), "--to", "trl", "--out", str(tmp_path / "o.jsonl")],
        lambda p: ["reward", "train", "--data", str(p), "--out", str(tmp_path / "rm")],
        lambda p: ["annotate", "import", "--db", db, "--project", "fz", str(p)],
    ]
    problems, runs = [], 0
    import alignkit.models.reward  # noqa: F401  (torch & co. load before the clock starts)
    import alignkit.recipes.reward  # noqa: F401

    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for name, path in files:
            for make in commands:
                args = make(path)
                runs += 1
                signal.alarm(10)
                try:
                    main(args)
                    code = 0
                except SystemExit as e:
                    code = e.code
                except Hung:
                    problems.append(f"{name}: {args[:2]} hung")
                    continue
                except BaseException as e:  # a traceback the user would see
                    problems.append(f"{name}: {args[:2]} raised {type(e).__name__}: {e!s:.200}")
                    continue
                finally:
                    signal.alarm(0)
                err = capsys.readouterr().err
                lines = [x for x in err.splitlines() if x.strip()]
                if code != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
                    problems.append(f"{name}: {args[:2]} exit {code}, stderr {err[-300:]!r}")
    finally:
        signal.signal(signal.SIGALRM, old)
    assert runs >= 200
    assert not problems, "\n".join(problems)
