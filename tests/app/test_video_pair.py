"""video_pair items: two clips stored in the database, compared side by side.

Store and API on SQLite (and PostgreSQL when configured); the browser test is in
test_browser.py. The clips are real WebM files written by imageio-ffmpeg (VP8/VP9).
"""

import re

import pytest
from fastapi.testclient import TestClient

from alignkit.app.server import create_app
from alignkit.data import load_records
from alignkit.errors import DataError
from alignkit.feedback.errors import InvalidAnswer, NotFound
from alignkit.feedback.media import import_video_pairs, sniff_content_type
from alignkit.feedback.store import FeedbackStore


def make_webm(path, shade: int, codec: str = "libvpx-vp9", n: int = 20):
    """A tiny clip: ``n`` frames of 32×48 fading from ``shade`` (2 s at 10 fps)."""
    import imageio
    import numpy as np

    frames = [np.full((32, 48, 3), (shade + 9 * i) % 256, np.uint8) for i in range(n)]
    imageio.mimwrite(path, frames, fps=10, codec=codec, macro_block_size=16)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {
        "a": make_webm(d / "a.webm", 10),
        "b": make_webm(d / "b.webm", 120, codec="libvpx"),
        "c": make_webm(d / "c.webm", 200),
    }


def bot(store, name):
    return store.add_user(name, password=False, projects=["ctl"]).user


def shown(task, letter):
    """The display letter of original response ``letter`` ("a" = responses[0])."""
    return "AB"[task.display_order.index(0 if letter == "a" else 1)]


def test_import_play_label_export_as_comparisons(db_url, clips):
    store = FeedbackStore(db_url, shuffle=True)
    store.ensure_project("ctl", overlap=1, gold_every=0)
    pairs = [
        {"video_a": "a.webm", "video_b": "b.webm", "meta": {"segments": [1, 2]}},
        {"video_a": "b.webm", "video_b": "c.webm", "meta": {"segments": [2, 3]}},
        {"video_a": "a.webm", "video_b": "c.webm", "meta": {"segments": [1, 3]}},
        {"video_a": "c.webm", "video_b": "a.webm", "meta": {"segments": [3, 1]}},
    ]
    first = import_video_pairs(store, "ctl", pairs, base_dir=clips["a"].parent)
    again = import_video_pairs(store, "ctl", pairs, base_dir=clips["a"].parent)
    assert (first.added, again.added, again.skipped) == (4, 0, 4)
    assert again.item_ids == first.item_ids
    with store.engine.connect() as c:  # three distinct clips, each stored once
        assert c.exec_driver_sql("SELECT count(*) FROM ak_media").scalar() == 3

    ann, eve = bot(store, "ann"), bot(store, "eve")
    want = {1: "a", 2: "b", 3: "tie", 4: "incomparable"}  # by segments[0] of each pair
    for _ in pairs:
        task = store.next_task("ctl", ann)
        assert task.type == "video_pair" and task.media_types == ["video/webm"] * 2
        kind, data = store.clip(task.assignment_id, ann, 0)
        assert kind == "video/webm" and sniff_content_type(data) == "video/webm"
        with pytest.raises(NotFound):
            store.clip(task.assignment_id, eve, 0)  # not eve's assignment
        with pytest.raises(NotFound):
            store.clip(task.assignment_id, ann, 2)
        with pytest.raises(InvalidAnswer):
            store.record_vote(task.assignment_id, ann, {"choice": "both_bad"})
        with pytest.raises(InvalidAnswer):
            store.record_vote(task.assignment_id, ann, {"choice": "A", "edits": ["x", None]})
        item = first.item_ids.index(task.item_id)
        choice = want[item + 1]
        answer = shown(task, choice) if choice in "ab" else choice
        store.record_vote(task.assignment_id, ann, {"choice": answer})

    comps = {c.meta["item_id"]: c for c in store.export_records("ctl", "comparisons")}
    mus = [(comps[i].mu, comps[i].incomparable) for i in first.item_ids]
    assert mus == [(1.0, False), (0.0, False), (0.5, False), (0.5, True)]
    assert [comps[i].meta["item_meta"]["segments"] for i in first.item_ids] == [
        p["meta"]["segments"] for p in pairs
    ]
    assert comps[first.item_ids[0]].a.startswith("media:")
    labels = store.item_labels("ctl", first.item_ids)  # what the loop reads back
    assert labels[first.item_ids[0]].mu == 1.0
    assert labels[first.item_ids[3]].incomparable
    assert labels[first.item_ids[1]].meta["item_meta"] == {"segments": [2, 3]}
    assert store.export_rows("ctl", "trl") == []  # clips are not text pairs
    store.close()


def test_training_loaders_drop_cant_tell(tmp_path, clips):
    store = FeedbackStore(tmp_path / "f.db", shuffle=False)
    store.ensure_project("ctl", gold_every=0)
    import_video_pairs(
        store,
        "ctl",
        [
            {"video_a": "a.webm", "video_b": "b.webm"},
            {"video_a": "b.webm", "video_b": "c.webm"},
        ],
        base_dir=clips["a"].parent,
    )
    u = bot(store, "ann")
    for choice in ("tie", "incomparable"):
        task = store.next_task("ctl", u)
        store.record_vote(task.assignment_id, u, {"choice": choice})
    store.export("ctl", "comparisons", tmp_path / "c.jsonl")
    loaded = load_records(tmp_path / "c.jsonl")
    assert len(loaded.records) == 1 and loaded.records[0].mu == 0.5 and loaded.n_incomparable == 1


def test_bad_clips_are_refused_clearly(tmp_path, clips):
    store = FeedbackStore(tmp_path / "f.db")
    store.ensure_project("ctl")
    (tmp_path / "x.webm").write_bytes(b"not a video")
    (tmp_path / "a.webm").write_bytes(clips["a"].read_bytes())
    with pytest.raises(DataError, match=r"line 1: field 'video_b': .*x\.webm.*WebM, MP4 or GIF"):
        import_video_pairs(store, "ctl", [{"video_a": "a.webm", "video_b": "x.webm"}], base_dir=tmp_path)
    with pytest.raises(DataError, match="field 'video_a'.*no such file"):
        import_video_pairs(store, "ctl", [{"video_a": "gone.webm", "video_b": "a.webm"}], base_dir=tmp_path)
    with pytest.raises(DataError, match="field 'video_a'.*expected a .webm"):
        import_video_pairs(store, "ctl", [{"video_a": "a.avi", "video_b": "a.webm"}], base_dir=tmp_path)
    with pytest.raises(NotFound, match="clip"):  # a reference to a clip that was never stored
        store.add_items("ctl", [{"type": "video_pair", "responses": ["media:" + "0" * 64] * 2}])
    with pytest.raises(DataError, match="responses"):
        store.add_items("ctl", [{"type": "video_pair", "responses": ["a.webm", "b.webm"]}])
    assert store.count_items("ctl")["items"] == 0


def test_api_serves_clips_only_to_their_annotator(tmp_path, clips):
    store = FeedbackStore(tmp_path / "f.db")
    store.ensure_project("ctl", gold_every=0)
    import_video_pairs(store, "ctl", [{"video_a": "a.webm", "video_b": "b.webm"}], base_dir=clips["a"].parent)
    ann = store.add_user("ann", password=False, projects=["ctl"])
    eve = store.add_user("eve", password=False, projects=["ctl"])
    app = create_app(store.url, "ctl", store=store)
    with TestClient(app) as client:
        auth = {"Authorization": f"Bearer {ann.token}"}
        task = client.get("/api/v1/tasks/next", headers=auth).json()
        assert task["type"] == "video_pair" and len(task["clips"]) == 2
        r = client.get(task["clips"][1], headers=auth)
        assert r.status_code == 200 and r.headers["content-type"] == "video/webm"
        assert r.content == clips["ab"[task["display_order"][1]]].read_bytes()
        part = client.get(task["clips"][1], headers=auth | {"Range": "bytes=4-11"})
        assert part.status_code == 206 and part.content == r.content[4:12]
        assert part.headers["content-range"] == f"bytes 4-11/{len(r.content)}"
        assert (
            client.get(task["clips"][1], headers=auth | {"Range": "bytes=99999-"}).status_code
            == 416
        )
        assert client.get(task["clips"][0]).status_code == 401
        other = {"Authorization": f"Bearer {eve.token}"}
        assert client.get(task["clips"][0], headers=other).status_code == 404
        assert "media-src 'self'" in r.headers["content-security-policy"]
        url = f"/api/v1/assignments/{task['assignment_id']}/label"
        assert client.post(url, json={"choice": "both_bad"}, headers=auth).status_code == 422
        assert client.post(url, json={"choice": "incomparable"}, headers=auth).status_code == 201
    (c,) = store.export_records("ctl", "comparisons")
    assert c.incomparable


def test_cli_imports_a_file_of_clip_pairs(tmp_path, clips, capsys):
    import json

    from alignkit.cli import main

    rows = [{"type": "video_pair", "video_a": "a.webm", "video_b": "clips0/b.webm"}]
    sub = tmp_path / "sub"
    (sub / "clips0").mkdir(parents=True)
    (sub / "a.webm").write_bytes(clips["a"].read_bytes())
    (sub / "clips0" / "b.webm").write_bytes(clips["b"].read_bytes())
    items = sub / "pairs.jsonl"
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = str(tmp_path / "f.db")
    with pytest.raises(SystemExit) as e:
        main(["annotate", "import", "--db", db, "--project", "ctl", str(items)])
    assert e.value.code in (0, None), capsys.readouterr().err
    assert "imported 1 items" in capsys.readouterr().out
    items.write_text(json.dumps({"type": "video_pair", "video_a": "nope.webm", "video_b": "x"}))
    with pytest.raises(SystemExit) as e:
        main(["annotate", "import", "--db", db, "--project", "ctl", str(items)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and re.search(r"pairs\.jsonl:1: field 'video_a'", err), err
