"""``alignkit mix`` (decode from a weighted product of models) and ``alignkit tokens``
(per-token implicit rewards as an HTML/PNG heat map)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from alignkit.data import load_prompts
from alignkit.errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("mix")(mix_cmd)
    app.command("tokens")(tokens_cmd)


def parse_model_spec(spec: str) -> tuple[str, float]:
    """``PATH:WEIGHT`` → (path, weight); the weight may be negative (``runs/ref:-0.5``)."""
    path, sep, weight = spec.rpartition(":")
    if not sep or not path:
        raise ConfigError(f"--model {spec!r}: expected PATH:WEIGHT, e.g. runs/policy:1.5")
    try:
        return path, float(weight)
    except ValueError:
        raise ConfigError(f"--model {spec!r}: weight {weight!r} is not a number") from None


def load_shared_tokenizer(paths: list[str]):
    """The tokenizer of the first model, after checking every model directory holds the
    same vocabulary and special tokens (mixing needs one token space)."""
    from alignkit.decoding.mixing import check_shared_tokenizer
    from alignkit.models import load_tokenizer

    toks = []
    for p in paths:
        try:
            toks.append(load_tokenizer(p))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{p}: no tokenizer found here ({type(e).__name__})") from None
    check_shared_tokenizer(toks, paths)
    return toks[0]


def mix_cmd(
    model: list[str] = typer.Option(
        ..., "--model", help="PATH:WEIGHT of a save_pretrained model; repeat for each model."
    ),
    prompt: list[str] = typer.Option(None, "--prompt", help="A prompt (repeatable)."),
    prompts: Path | None = typer.Option(
        None, "--prompts", help="Prompts file: .txt (one per line), or JSONL/Parquet/HF rows with 'prompt' (or records)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write JSONL rows {prompt, response} here."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="Tokens to generate at most."),
    sample: bool = typer.Option(False, "--sample/--greedy", help="Sample (default: greedy)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Temperature of the mixture."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k likeliest mixed tokens (0 = all)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus of the mixed distribution."),
    stop: list[str] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for sampling."),
    batch_size: int = typer.Option(16, "--batch-size", help="Prompts decoded together."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    chat_template: bool = typer.Option(
        True, "--chat-template/--no-chat-template",
        help="Render prompts (plain text or HH transcripts) with the tokenizer's chat template when it has one.",
    ),
) -> None:
    """Decode from Π_k π_k^{w_k}: per-token logits Σ_k w_k log π_k, renormalised.

    Example, β re-scaling from β=0.1 to β′=0.04: --model runs/ref:-1.5 --model runs/pol:2.5
    """
    specs = [parse_model_spec(s) for s in model]
    texts = list(prompt or []) + (load_prompts(prompts) if prompts is not None else [])
    if not texts:
        raise ConfigError("give at least one --prompt or a --prompts FILE")
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be ≥ 1, got {max_new_tokens}")

    from alignkit.decoding.mixing import mix_generate
    from alignkit.models import load_causal_lm
    from alignkit.models.chat import render_prompt
    from alignkit.utils.device import pick_device

    tokenizer = load_shared_tokenizer([p for p, _ in specs])
    rendered = [render_prompt(tokenizer, t, None, chat_template) for t in texts]
    dev = pick_device(device)
    models = [load_causal_lm(p).to(dev).eval() for p, _ in specs]
    weights = [w for _, w in specs]
    responses: list[str] = []
    for start in range(0, len(texts), batch_size):
        result = mix_generate(
            models, weights, rendered[start : start + batch_size], tokenizer=tokenizer,
            max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature,
            top_k=top_k, top_p=top_p, stop=list(stop or []),
            seed=None if seed is None else seed + start,
        )
        responses.extend(result.texts)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(
            "".join(json.dumps({"prompt": p, "response": r}, ensure_ascii=False) + "\n"
                    for p, r in zip(texts, responses, strict=True)),
            encoding="utf-8",
        )
        tmp.replace(out)
        typer.echo(f"wrote {len(responses)} responses to {out}")
    else:
        for p, r in zip(texts, responses, strict=True):
            typer.echo(r if len(texts) == 1 else json.dumps({"prompt": p, "response": r}, ensure_ascii=False))


def tokens_cmd(
    policy: Path = typer.Option(..., "--policy", help="The trained (DPO/RLHF) policy directory."),
    ref: Path = typer.Option(..., "--ref", help="Its reference model directory."),
    text: str = typer.Option(..., "--text", help="The response to score."),
    prompt: str = typer.Option("", "--prompt", help="Prompt before the response (not scored)."),
    beta: float = typer.Option(0.1, "--beta", help="The β the policy was trained with."),
    out: Path = typer.Option(Path("tokens"), "--out", help="Writes OUT.html and OUT.png."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
) -> None:
    """Per-token implicit rewards β·log π(y_t|·)/π_ref(y_t|·) as a heat map (HTML + PNG)."""
    if not text:
        raise ConfigError("--text is empty: nothing to score")
    if beta <= 0:
        raise ConfigError(f"--beta must be > 0, got {beta}")
    from alignkit.diagnostics.token_rewards import token_rewards
    from alignkit.models import load_causal_lm
    from alignkit.report.heatmap import token_heatmap_html, token_heatmap_png
    from alignkit.utils.device import pick_device

    tokenizer = load_shared_tokenizer([str(policy), str(ref)])
    dev = pick_device(device)
    pol_model = load_causal_lm(policy).to(dev)
    ref_model = load_causal_lm(ref).to(dev)
    (res,) = token_rewards(
        pol_model, ref_model, tokenizer, [text], prompts=[prompt] if prompt else None, beta=beta
    )
    base = out.with_suffix("") if out.suffix in {".html", ".png"} else out
    html_path, png_path = Path(f"{base}.html"), Path(f"{base}.png")
    html_path.parent.mkdir(parents=True, exist_ok=True)
    note = (
        f"r_t = β·log π(y_t|·)/π_ref(y_t|·) with β = {beta}; policy {policy}, reference {ref}."
        + (f" Prompt: {prompt}" if prompt else "")
    )
    html_path.write_text(
        token_heatmap_html([("response", res.tokens, res.rewards)], title="Per-token implicit rewards",
                           note=note),
        encoding="utf-8",
    )
    token_heatmap_png(res.tokens, res.rewards, png_path, title=f"Per-token implicit rewards (β={beta})")
    typer.echo(f"sum of token rewards: {res.total:+.4f} over {len(res.tokens)} tokens")
    typer.echo(f"wrote {html_path} and {png_path}")
