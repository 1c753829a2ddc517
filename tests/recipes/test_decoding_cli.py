"""``alignkit mix`` and ``alignkit tokens`` through the real entry point, on tiny GPT-2
directories that share one tokenizer."""

from __future__ import annotations

import json

import pytest

from alignkit.cli import main


def run_cli(capsys, *args):
    code = 0
    try:
        main(list(args))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Two tiny GPT-2s (seeds 1, 2) saved with the same tokenizer, and one with another."""
    from alignkit.models import build_tiny_lm, build_tokenizer

    root = tmp_path_factory.mktemp("mix_models")
    tok = build_tokenizer()
    dirs = {}
    for name, seed in (("ref", 1), ("pol", 2)):
        d = root / name
        tok.save_pretrained(d)
        build_tiny_lm(tok, seed=seed).save_pretrained(d)
        dirs[name] = d
    other = build_tokenizer(["completely different corpus text"] * 3, vocab_size=300)
    d = root / "other"
    other.save_pretrained(d)
    build_tiny_lm(other, seed=3).save_pretrained(d)
    dirs["other"] = d
    return dirs


def test_mix_file_in_file_out_matches_library(capsys, tmp_path, model_dirs):
    from alignkit.decoding.mixing import mix_generate
    from alignkit.models import load_causal_lm, load_tokenizer

    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "Human: How do I bake"}, {"prompt": "The quick"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out" / "mixed.jsonl"
    code, stdout, err = run_cli(
        capsys, "mix", "--model", f"{model_dirs['ref']}:-0.5", "--model", f"{model_dirs['pol']}:1.5",
        "--prompts", str(prompts), "--out", str(out), "--max-new-tokens", "6", "--device", "cpu",
    )
    assert code == 0, err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    tok = load_tokenizer(model_dirs["ref"])
    models = [load_causal_lm(model_dirs[n]) for n in ("ref", "pol")]
    want = mix_generate(models, [-0.5, 1.5], [r["prompt"] for r in rows], tokenizer=tok, max_new_tokens=6)
    assert [g["prompt"] for g in got] == [r["prompt"] for r in rows]
    assert [g["response"] for g in got] == want.texts and "wrote 2 responses" in stdout


def test_mix_single_prompt_prints_response(capsys, model_dirs):
    code, stdout, err = run_cli(
        capsys, "mix", "--model", f"{model_dirs['pol']}:1", "--prompt", "The quick",
        "--max-new-tokens", "3", "--sample", "--seed", "0", "--top-p", "0.9", "--device", "cpu",
    )
    assert code == 0, err
    assert stdout.strip() != ""


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{ref}", "--prompt", "x"], "expected PATH:WEIGHT"),
        (["--model", "{ref}:abc", "--prompt", "x"], "is not a number"),
        (["--model", "{ref}:1", "--model", "{other}:1", "--prompt", "x"], "share one tokenizer"),
        (["--model", "{ref}:1"], "at least one --prompt"),
        (["--model", "{ref}:1", "--prompts", "missing.jsonl"], "prompts file not found"),
    ],
)
def test_mix_user_errors(capsys, model_dirs, args, message):
    args = [a.format(**{k: str(v) for k, v in model_dirs.items()}) for a in args]
    code, _, err = run_cli(capsys, "mix", *args)
    assert code == 2 and err.startswith("error: ") and message in err and "Traceback" not in err


def test_mix_bad_prompts_row_names_line_and_field(capsys, tmp_path, model_dirs):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    code, _, err = run_cli(capsys, "mix", "--model", f"{model_dirs['ref']}:1", "--prompts", str(bad))
    assert code == 2 and f"{bad}:2: field 'prompt'" in err


def test_tokens_writes_escaped_html_and_png(capsys, tmp_path, model_dirs):
    from alignkit.diagnostics.token_rewards import token_rewards
    from alignkit.models import load_causal_lm, load_tokenizer

    text = "<b>bold</b> & more"
    code, stdout, err = run_cli(
        capsys, "tokens", "--policy", str(model_dirs["pol"]), "--ref", str(model_dirs["ref"]),
        "--text", text, "--beta", "0.2", "--out", str(tmp_path / "heat.html"), "--device", "cpu",
    )
    assert code == 0, err
    page = (tmp_path / "heat.html").read_text()
    assert "<b>" not in page and "</b>" not in page and "&lt;" in page and "&amp;" in page
    assert (tmp_path / "heat.png").read_bytes()[:4] == b"\x89PNG"
    tok = load_tokenizer(model_dirs["ref"])
    (res,) = token_rewards(load_causal_lm(model_dirs["pol"]), load_causal_lm(model_dirs["ref"]), tok, [text], beta=0.2)
    assert f"sum of token rewards: {res.total:+.4f} over {len(res.tokens)} tokens" in stdout
