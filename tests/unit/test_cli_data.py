"""``alignkit data inspect | convert | split`` through the real entry point."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.cli import main
from alignkit.data import Comparison, Ranking, Rating, load_records, save_records

SHARED_HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh_harmless_dev.jsonl.gz"


def run_cli(capsys, *args):
    """Run ``alignkit *args`` in-process; return (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def trl_file(tmp_path):
    rows = [
        {"prompt": "p1", "chosen": "good", "rejected": "bad"},
        {"prompt": "p2", "chosen": "same", "rejected": "same too", "mu": 0.5},
        {"prompt": "p3", "chosen": "x", "rejected": "y", "incomparable": True},
    ]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_inspect_json_counts(capsys, trl_file):
    code, out, _ = run_cli(capsys, "data", "inspect", str(trl_file), "--json")
    assert code == 0
    s = json.loads(out)
    assert (s["format"], s["container"], s["rows"]) == ("trl", "jsonl", 3)
    assert s["comparisons"] == {
        "total": 3,
        "usable": 2,
        "ties": 1,
        "soft": 0,
        "incomparable": 1,
        "identical_responses": 0,
    }
    assert s["token_counter"].startswith("utf-8 bytes")
    # Byte-level count of "p1", "p2", "p3" is 2 each; responses "good", "bad", ... too.
    assert s["lengths"]["prompt_tokens"]["max"] == 2
    assert s["lengths"]["response_chars"]["max"] == len("same too")


def test_inspect_table_output(capsys, trl_file):
    code, out, _ = run_cli(capsys, "data", "inspect", str(trl_file))
    assert code == 0
    assert "format trl (jsonl)" in out
    assert "2 pairs (1 ties, 1 incomparable)" in out
    assert "utf-8 bytes" in out


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """Only a tokenizer (the tiny byte-level BPE), no model: cheaper than tiny_lm_dir."""
    from alignkit.models import build_tokenizer

    path = tmp_path_factory.mktemp("tok")
    build_tokenizer().save_pretrained(path)
    return path


def test_inspect_with_tokenizer_counts_tokens(capsys, tmp_path, tokenizer_dir):
    from alignkit.models import load_tokenizer

    text = "the cat sat on the mat " * 5
    save_records([Comparison(text, text + "!", "no")], tmp_path / "d.jsonl")
    code, out, _ = run_cli(
        capsys,
        "data",
        "inspect",
        str(tmp_path / "d.jsonl"),
        "--json",
        "--tokenizer",
        str(tokenizer_dir),
    )
    assert code == 0
    s = json.loads(out)
    expected = len(load_tokenizer(tokenizer_dir)(text, add_special_tokens=False)["input_ids"])
    assert s["lengths"]["prompt_tokens"]["max"] == expected
    assert s["lengths"]["prompt_tokens"]["max"] < len(text)  # merges make it shorter
    assert str(tokenizer_dir) in s["token_counter"]


@pytest.mark.parametrize("out_name", ["out.jsonl", "out.jsonl.gz", "out.parquet", "out_dir"])
def test_convert_to_trl_and_alignkit(capsys, tmp_path, trl_file, out_name):
    out = tmp_path / out_name
    code, stdout, _ = run_cli(
        capsys, "data", "convert", str(trl_file), "--to", "alignkit", "--out", str(out)
    )
    assert code == 0 and "wrote 2 rows" in stdout and "dropped 1 incomparable" in stdout
    assert load_records(out).format == "alignkit"
    back = tmp_path / ("trl_" + out_name)
    code, _, _ = run_cli(capsys, "data", "convert", str(out), "--to", "trl", "--out", str(back))
    assert code == 0
    recs = load_records(back).records
    assert [(r.prompt, r.a, r.b, r.mu) for r in recs] == [
        ("p1", "good", "bad", 1.0),
        ("p2", "same", "same too", 0.5),
    ]


def test_convert_rankings_and_ratings_to_trl_pairs(capsys, tmp_path):
    src = tmp_path / "mixed.jsonl"
    save_records(
        [
            Ranking("q", ["a", "b", "c"], order=[1, 0, 2]),
            Rating("r", "x", 6.0),
            Rating("r", "y", 2.0),
        ],
        src,
    )
    out = tmp_path / "pairs.jsonl"
    code, stdout, _ = run_cli(capsys, "data", "convert", str(src), "--to", "trl", "--out", str(out))
    assert code == 0 and "3 non-comparison records became 4 pairs" in stdout
    got = [(r.prompt, r.a, r.b) for r in load_records(out).records]
    assert got == [("q", "b", "a"), ("q", "b", "c"), ("q", "a", "c"), ("r", "x", "y")]


def test_convert_bad_target_format_is_one_line_error(capsys, tmp_path, trl_file):
    code, out, err = run_cli(
        capsys, "data", "convert", str(trl_file), "--to", "csv", "--out", str(tmp_path / "o.jsonl")
    )
    assert code == 2
    assert err.strip().count("\n") == 0 and err.startswith("error: --to: expected one of")


def test_split_command_keeps_prompts_apart(capsys, tmp_path):
    src = tmp_path / "d.jsonl"
    save_records([Comparison(f"p{i % 10}", "a", "b") for i in range(40)], src)
    tr, ev = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    code, _, _ = run_cli(
        capsys,
        "data",
        "split",
        str(src),
        "--eval-fraction",
        "0.2",
        "--train-out",
        str(tr),
        "--eval-out",
        str(ev),
    )
    assert code == 0
    train_p = {r.prompt for r in load_records(tr).records}
    eval_p = {r.prompt for r in load_records(ev).records}
    assert len(eval_p) == 2 and len(train_p) == 8 and not train_p & eval_p


def test_missing_path_is_exit_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "data", "inspect", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "no such file" in err


def test_missing_rejected_on_line_3_subprocess(tmp_path):
    """Acceptance: exit 2, a single line naming line 3 and 'rejected', no traceback."""
    rows = [{"prompt": "p", "chosen": "c", "rejected": "r"}] * 2 + [{"prompt": "p", "chosen": "c"}]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from alignkit.cli import main; main()",
            "data",
            "inspect",
            str(path),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=60,
    )
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1
    assert "Traceback" not in proc.stderr
    assert f"{path}:3: field 'rejected': missing (expected a string)" in lines[0]


@pytest.mark.skipif(not SHARED_HH.exists(), reason="shared HH dev file absent")
def test_inspect_shared_hh_reports_1800_pairs(capsys):
    code, out, _ = run_cli(capsys, "data", "inspect", str(SHARED_HH), "--json")
    assert code == 0
    s = json.loads(out)
    assert (s["format"], s["comparisons"]["usable"]) == ("hh", 1800)
