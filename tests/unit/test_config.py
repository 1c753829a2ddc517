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
