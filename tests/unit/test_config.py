from dataclasses import dataclass, field

import pytest

from alignkit.config import apply_overrides, load_config
from alignkit.errors import ConfigError


@dataclass
class Cfg:
    lr: float = 1e-3
    """Learning rate."""
    epochs: int = 1
    """Passes over the data."""
    lora: bool = False
    """Use LoRA adapters."""
    betas: list[float] = field(default_factory=lambda: [0.1])
    """KL coefficients."""
    out: str | None = None
    """Output directory."""


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lr: 0.5\nepochs: 3\nbetas: [0.1, 0.2]\n")
    cfg = load_config(Cfg, p, epochs=4, out=None)
    assert (cfg.lr, cfg.epochs, cfg.betas, cfg.out) == (0.5, 4, [0.1, 0.2], None)


def test_unknown_key_suggests(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'epoch' \(did you mean 'epochs'\?\)"):
        load_config(Cfg, p)


def test_types_are_checked_and_coerced():
    assert apply_overrides(Cfg(), {"lora": "true", "epochs": "2"}).epochs == 2
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(Cfg(), {"epochs": "many"})
    with pytest.raises(ConfigError, match="true/false"):
        apply_overrides(Cfg(), {"lora": "maybe"})


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "x.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Cfg, p)


@dataclass
class Outer:
    seed: int = 0
    """Seed."""
    inner: Cfg = field(default_factory=lambda: Cfg(lr=0.5))
    """A sub-recipe's config."""


def test_nested_configs_from_yaml_and_dotted_keys(tmp_path):
    """A composed config: a nested mapping in YAML and dotted --set keys reach the sub-config,
    keeping its other (composed) defaults; unknown nested keys suggest the dotted name."""
    p = tmp_path / "c.yaml"
    p.write_text("seed: 2\ninner:\n  epochs: 3\n")
    cfg = load_config(Outer, p)
    assert (cfg.seed, cfg.inner.epochs, cfg.inner.lr) == (2, 3, 0.5)
    cfg = apply_overrides(cfg, {"inner.lr": "0.25", "inner.betas": "0.1,0.3"})
    assert (cfg.inner.lr, cfg.inner.epochs, cfg.inner.betas) == (0.25, 3, [0.1, 0.3])
    assert Outer().inner.lr == 0.5  # the default instance is not mutated
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.epoch' \(did you mean 'inner.epochs'\?\)"):
        apply_overrides(Outer(), {"inner.epoch": 1})
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(Outer(), {"inner": {"epochs": "many"}})
    with pytest.raises(ConfigError, match="has no sub-keys"):
        apply_overrides(Outer(), {"seed.x": 1})
    with pytest.raises(ConfigError, match="expected a mapping"):
        apply_overrides(Outer(), {"inner": 3})


def test_mapping_fields_from_yaml_and_json_overrides():
    """A dict field (``PPOConfig.vllm_kwargs``): a YAML mapping or a ``--set`` JSON object;
    anything else is a one-line error naming the key."""
    from alignkit.recipes.ppo import PPOConfig

    cfg = apply_overrides(PPOConfig(), {"vllm_kwargs": {"max_model_len": 256}})
    assert cfg.vllm_kwargs == {"max_model_len": 256}
    cfg = apply_overrides(PPOConfig(), {"vllm_kwargs": '{"dtype": "float32", "enforce_eager": true}'})
    assert cfg.vllm_kwargs == {"dtype": "float32", "enforce_eager": True}
    for bad in ("dtype=float32", "[1, 2]", 3):
        with pytest.raises(ConfigError, match="config key 'vllm_kwargs': expected a mapping"):
            apply_overrides(PPOConfig(), {"vllm_kwargs": bad})
