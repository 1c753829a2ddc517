"""Readers and writers: containers, formats, errors that name file/line/field, atomicity."""

import gzip
import json
import os
from pathlib import Path

import pytest

from alignkit.data import (
    Comparison,
    Correction,
    Ranking,
    Rating,
    TrajectoryPair,
    detect_container,
    detect_format,
    load_records,
    save_records,
)
from alignkit.errors import DataError

SHARED_HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh_harmless_dev.jsonl.gz"
H, A = "\n\nHuman:", "\n\nAssistant:"


def write_jsonl(path, rows, *, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        Path(path).write_text(text, encoding="utf-8")
    return path


def mixed_records():
    return [
        Comparison("p1", "a", "b", mu=0.7, annotator="ann1", meta={"src": "x", "n": [1, 2]}),
        Comparison("p2", "a", "b", mu=0.5, strength="slightly", group="g"),
        Ranking("p3", ["x", "y", "z"], order=[2, 0, 1], ties=[[0, 1]], meta={"k": 1}),
        Rating("p4", "r", score=5, scale=(1, 7)),
        Correction("p5", "bad", "good", annotator="ann2"),
        TrajectoryPair(
            {"obs": [[0.0, 1.0]], "actions": [1]}, {"obs": [[1.0, 0.0]], "actions": [0]}, mu=0.0
        ),
    ]


# ----------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.parquet", "d_dataset"])
def test_alignkit_round_trip_every_record_kind(tmp_path, name):
    records = mixed_records()
    assert save_records(records, tmp_path / name) == len(records)
    result = load_records(tmp_path / name)
    assert result.format == "alignkit"
    assert result.records == records
    assert result.kinds == {
        "comparison": 2,
        "ranking": 1,
        "rating": 1,
        "correction": 1,
        "trajectory_pair": 1,
    }


@pytest.mark.parametrize("fmt", ["trl", "trl_implicit", "hh", "trl_conversational"])
@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.parquet", "d_dataset"])
def test_trl_family_round_trip(tmp_path, fmt, name):
    # Replies differ from their first character, so the implicit formats (which
    # recover the prompt as a shared prefix) split exactly where we joined.
    def prompt(i):
        return f"{H} hello {i}{A}" if fmt == "hh" else f"Question {i}: why? "

    records = [
        Comparison(prompt(0), " because", " no idea"),
        Comparison(prompt(1), " first tie", " second tie", mu=0.5),
        Comparison(prompt(2), " sure", " nope", mu=0.9, annotator="a1"),
    ]
    if fmt == "trl_implicit":
        records = [
            Comparison(r.prompt, r.a.strip(), r.b.strip(), mu=r.mu, annotator=r.annotator)
            for r in records
        ]
    if fmt == "trl_conversational":  # start from message lists, as real data would
        for r in records:
            r.meta = {
                "prompt_messages": [{"role": "user", "content": r.prompt}],
                "chosen_messages": [{"role": "assistant", "content": r.a}],
                "rejected_messages": [{"role": "assistant", "content": r.b}],
            }
    save_records(records, tmp_path / name, format=fmt)
    result = load_records(tmp_path / name)
    assert result.format == fmt
    if fmt == "trl_conversational":
        assert [r.meta for r in result.records] == [r.meta for r in records]
        assert [r.a for r in result.records] == [r.a for r in records]
    else:
        assert [(r.prompt, r.a, r.b) for r in result.records] == [
            (r.prompt, r.a, r.b) for r in records
        ]
    assert [r.mu for r in result.records] == [1.0, 0.5, 0.9]
    assert result.records[2].annotator == "a1"


def test_trl_soft_label_below_half_is_written_swapped(tmp_path):
    save_records([Comparison("p", "x", "y", mu=0.2)], tmp_path / "d.jsonl", format="trl")
    (rec,) = load_records(tmp_path / "d.jsonl").records
    assert (rec.a, rec.b, rec.mu) == ("y", "x", pytest.approx(0.8))
    assert (rec.chosen, rec.rejected) == ("y", "x")


def test_hf_dataset_dict_train_split_is_read(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"prompt": "p", "chosen": "c", "rejected": "r"}])
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    result = load_records(tmp_path / "dd")
    assert (result.container, result.format, len(result.records)) == ("hf-dataset", "trl", 1)


def test_utf8_bom_and_crlf_are_accepted(tmp_path):
    row = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})
    (tmp_path / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + (row + "\r\n" + row + "\r\n").encode())
    assert len(load_records(tmp_path / "d.jsonl").records) == 2


def test_not_utf8_is_a_data_error(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match="d.jsonl: cannot read as UTF-8"):
        load_records(tmp_path / "d.jsonl")


def test_json_array_file_is_read(tmp_path):
    (tmp_path / "d.json").write_text(
        json.dumps([{"prompt": "p", "chosen": "c", "rejected": "r"}] * 2)
    )
    assert len(load_records(tmp_path / "d.json").records) == 2


def test_never_replaces_a_directory_that_is_not_a_dataset(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing to replace"):
        save_records([Comparison("p", "a", "b")], tmp_path / "results")
    assert (tmp_path / "results" / "precious.txt").read_text() == "keep me"
    (tmp_path / "plainfile").write_text("x")
    with pytest.raises(DataError, match="refusing to replace"):
        save_records([Comparison("p", "a", "b")], tmp_path / "plainfile")


def test_overwriting_an_hf_dataset_directory(tmp_path):
    save_records([Comparison("p", "a", "b")], tmp_path / "ds")
    save_records([Comparison("q", "a", "b"), Comparison("r", "a", "b")], tmp_path / "ds")
    assert [r.prompt for r in load_records(tmp_path / "ds").records] == ["q", "r"]
    assert sorted(os.listdir(tmp_path)) == ["ds"]


# ---------------------------------------------------------------------- gzip


def test_gz_detected_by_magic_bytes_not_name(tmp_path):
    path = write_jsonl(
        tmp_path / "plain_name.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}], gz=True
    )
    assert detect_container(path) == "jsonl.gz"
    assert load_records(path).records == [Comparison("p", "c", "r")]


def test_gz_writer_is_deterministic(tmp_path):
    save_records(mixed_records(), tmp_path / "a.jsonl.gz")
    save_records(mixed_records(), tmp_path / "b.jsonl.gz")
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    assert (tmp_path / "a.jsonl.gz").read_bytes()[:2] == b"\x1f\x8b"


def test_truncated_gz_is_a_data_error(tmp_path):
    good = tmp_path / "g.jsonl.gz"
    save_records([Comparison("p" * 500, "a", "b")] * 20, good)
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(DataError, match="bad.jsonl.gz: cannot read as gzip"):
        load_records(bad)


# ------------------------------------------------------------- incomparable


def test_incomparable_dropped_and_counted(tmp_path):
    rows = [
        {"prompt": "p", "chosen": "c", "rejected": "r"},
        {"prompt": "p", "chosen": "c", "rejected": "r", "incomparable": True},
        {"prompt": "q", "chosen": "c", "rejected": "r", "incomparable": True},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    result = load_records(path)
    assert (len(result.records), result.n_incomparable, result.n_rows) == (1, 2, 3)
    kept = load_records(path, keep_incomparable=True)
    assert (len(kept.records), kept.n_incomparable) == (3, 2)
    assert [r.incomparable for r in kept.records] == [False, True, True]


def test_incomparable_survives_alignkit_round_trip(tmp_path):
    recs = [Comparison("p", "a", "b"), Comparison("q", "a", "b", mu=0.5, incomparable=True)]
    save_records(recs, tmp_path / "d.jsonl")
    assert load_records(tmp_path / "d.jsonl", keep_incomparable=True).records == recs
    assert load_records(tmp_path / "d.jsonl").n_incomparable == 1


def test_only_incomparable_is_an_error(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "p", "chosen": "c", "rejected": "r", "incomparable": True}],
    )
    with pytest.raises(DataError, match="no usable records"):
        load_records(path)


# ------------------------------------------------------------------ bad input


def test_missing_rejected_names_file_line_field(tmp_path):
    rows = [{"prompt": "p", "chosen": "c", "rejected": "r"}] * 2 + [{"prompt": "p", "chosen": "c"}]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_records(path)
    assert str(e.value) == f"{path}:3: field 'rejected': missing (expected a string)"
    assert (e.value.line, e.value.field) == (3, "rejected")


def test_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n\n{"prompt": oops}\n')
    with pytest.raises(DataError, match=r"d.jsonl:3: invalid JSON"):
        load_records(path)


def test_non_object_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n"just a string"\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: expected a JSON object, got str"):
        load_records(path)


def test_blank_lines_keep_real_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '\n{"prompt": "p", "chosen": "c", "rejected": "r"}\n\n{"prompt": "p", "chosen": 1, "rejected": "r"}\n'
    )
    with pytest.raises(DataError, match=r"d.jsonl:4: field 'chosen': expected a string, got int"):
        load_records(path)


def test_bad_alignkit_field_names_line_and_field(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"kind": "comparison", "prompt": "p", "a": "x", "b": "y", "mu": 2}]
    )
    with pytest.raises(DataError, match=r"d.jsonl:1: field 'mu': expected a number in \[0, 1\]"):
        load_records(path)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match="empty.jsonl: no records"):
        load_records(path)


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "nope.jsonl")


def test_directory_that_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="save_to_disk"):
        load_records(tmp_path)


def test_parquet_row_errors_name_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist(
            [
                {"prompt": "p", "chosen": "c", "rejected": "r"},
                {"prompt": "p", "chosen": "c", "rejected": None},
            ]
        ),
        tmp_path / "d.parquet",
    )
    with pytest.raises(DataError, match=r"d.parquet:2: field 'rejected': missing"):
        load_records(tmp_path / "d.parquet")


def test_forced_format_and_unknown_format(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"chosen": f"{H} q{A} a", "rejected": f"{H} q{A} b"}])
    assert detect_format(path) == "hh"
    assert load_records(path, format="trl_implicit").records[0].prompt == f"{H} q{A} "
    with pytest.raises(DataError, match="expected a format"):
        load_records(path, format="csv")


def test_save_creates_missing_parent_directories(tmp_path):
    save_records([Comparison("p", "a", "b")], tmp_path / "new" / "sub" / "d.jsonl")
    assert len(load_records(tmp_path / "new" / "sub" / "d.jsonl")) == 1


def test_save_rejects_bad_output_name_and_empty(tmp_path):
    with pytest.raises(DataError, match=r"\.jsonl, \.jsonl\.gz or \.parquet"):
        save_records([Comparison("p", "a", "b")], tmp_path / "x.csv")
    with pytest.raises(DataError, match="no records"):
        save_records([], tmp_path / "x.jsonl")
    with pytest.raises(DataError, match="record 1: expected a record"):
        save_records(["not a record"], tmp_path / "x.jsonl")
    assert not list(tmp_path.iterdir())


def test_save_trl_of_non_comparisons_names_the_record(tmp_path):
    with pytest.raises(DataError, match="record 2: .*to_comparisons"):
        save_records(
            [Comparison("p", "a", "b"), Rating("p", "r", 3.0)], tmp_path / "x.jsonl", format="trl"
        )


# --------------------------------------------------------------------- atomic


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.parquet"])
def test_failed_write_leaves_target_untouched(tmp_path, monkeypatch, name):
    target = tmp_path / name
    save_records([Comparison("old", "a", "b")], target)
    before = target.read_bytes()

    import alignkit.data.io as io

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    # Fail after the temporary file has been written, right at the final rename.
    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        save_records([Comparison("new", "a", "b")] * 100, target)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temp file left


def test_failure_mid_stream_leaves_target_untouched(tmp_path, monkeypatch):
    target = tmp_path / "d.jsonl"
    save_records([Comparison("old", "a", "b")], target)
    before = target.read_bytes()

    import alignkit.data.io as io

    real_dumps = io.json.dumps
    calls = {"n": 0}

    def dumps_then_fail(obj, **kw):
        calls["n"] += 1
        if calls["n"] == 50:
            raise RuntimeError("crash mid-write (simulated)")
        return real_dumps(obj, **kw)

    monkeypatch.setattr(io.json, "dumps", dumps_then_fail)
    with pytest.raises(RuntimeError, match="simulated"):
        save_records([Comparison(f"new{i}", "a", "b") for i in range(100)], target)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.jsonl"]


# -------------------------------------------------------------- shared HH data


@pytest.mark.skipif(not SHARED_HH.exists(), reason="shared HH dev file absent")
def test_shared_hh_file_converts_to_trl_and_back(tmp_path):
    import gzip as _gz

    raw = [json.loads(line) for line in _gz.open(SHARED_HH, "rt", encoding="utf-8")]
    result = load_records(SHARED_HH)
    assert (result.format, result.container, len(result.records)) == ("hh", "jsonl.gz", 1800)
    assert result.n_incomparable == 0
    for row, rec in zip(raw, result.records, strict=True):
        assert rec.prompt + rec.a == row["chosen"] and rec.prompt + rec.b == row["rejected"]
        assert rec.prompt.endswith(A)
    save_records(result.records, tmp_path / "hh_trl.jsonl", format="trl")
    back = load_records(tmp_path / "hh_trl.jsonl")
    assert back.format == "trl"
    triples = [(r.prompt, r.a, r.b) for r in result.records]
    assert [(r.prompt, r.chosen, r.rejected) for r in back.records] == triples


def test_import_alignkit_data_stays_stdlib_only():
    """pyarrow / datasets / torch are imported only when a Parquet file or dataset is used."""
    import subprocess
    import sys

    code = (
        "import sys, alignkit.data, alignkit.data.stats\n"
        "print([m for m in ('pyarrow', 'datasets', 'torch', 'transformers', 'numpy') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("fail_at", [1, 2])
def test_failed_dataset_write_keeps_old_dataset(tmp_path, monkeypatch, fail_at):
    """Replacing a dataset directory takes two renames (old aside, new in); a failure at
    either leaves the old dataset in place and no temporary directories behind."""
    import alignkit.data.io as io

    target = tmp_path / "ds"
    save_records([Comparison("old", "a", "b")], target)
    real_replace, calls = io.os.replace, {"n": 0}

    def flaky_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise OSError("rename failed (simulated)")
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="simulated"):
        save_records([Comparison("new", "a", "b")], target)
    monkeypatch.undo()
    assert [r.prompt for r in load_records(target).records] == ["old"]
    assert sorted(os.listdir(tmp_path)) == ["ds"]
