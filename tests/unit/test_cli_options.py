"""The recipe commands' flags are generated from the config dataclasses: every field is a
flag whose help is its docstring; a field added to a config is a flag with no edit in cli/;
the shared option blocks keep their keys flat, so YAML files, --set keys, saved run configs
and every flag the docs use keep working."""

import dataclasses
import importlib
import json
import re
import shlex
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from rich.markup import escape
from typer.main import get_command

from alignkit.cli import build_app
from alignkit.cli.options import config_command, flag_name
from alignkit.config import apply_overrides, field_docs, load_config
from alignkit.recipes.configs.blocks import (
    CheckpointOptions,
    LoRAOptions,
    RunOptions,
    TrainingOptions,
)
from alignkit.recipes.configs.bon import BoNConfig
from alignkit.recipes.configs.control import ControlConfig
from alignkit.recipes.configs.dpo import DPOConfig
from alignkit.recipes.configs.loop import LoopConfig
from alignkit.recipes.configs.ppo import PPOConfig
from alignkit.recipes.configs.reward import FeatureRewardConfig, RewardConfig
from alignkit.recipes.configs.sft import SFTConfig

ROOT = Path(__file__).resolve().parents[2]

# command words → (its config, the module and function the command hands the config to)
RECIPE_COMMANDS = {
    ("sft",): (SFTConfig, "alignkit.recipes.sft", "train_sft"),
    ("dpo",): (DPOConfig, "alignkit.recipes.dpo", "train_dpo"),
    ("ppo",): (PPOConfig, "alignkit.recipes.ppo", "train_ppo"),
    ("bon",): (BoNConfig, "alignkit.recipes.bon", "run_bon"),
    ("reward", "train"): (RewardConfig, "alignkit.recipes.reward", "train_reward"),
    ("reward", "features"): (FeatureRewardConfig, "alignkit.recipes.feature_reward", "train_feature_reward"),
    ("loop",): (LoopConfig, "alignkit.recipes.loop", "run_loop"),
    ("control", "train"): (ControlConfig, "alignkit.recipes.control", "run_control"),
}


class Captured(Exception):
    """Raised by the fake recipe with the config the command built."""


def _click_command(words):
    cmd = get_command(build_app())
    for w in words:
        cmd = cmd.commands[w]
    return cmd


def _scalar_fields(cls):
    hints = typing.get_type_hints(cls)
    return [f for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(hints[f.name])]


def _invoke(words, args, monkeypatch, module, fn):
    """Run ``alignkit WORDS ARGS`` up to the recipe call; return the config it was given."""
    def fake(cfg, *a, **kw):
        raise Captured(cfg)

    monkeypatch.setattr(importlib.import_module(module), fn, fake)
    with pytest.raises(Captured) as e:
        build_app()([*words, *args], standalone_mode=False)
    return e.value.args[0]


def _other_value(tp, default):
    """A flag value (as typed on the command line) and the field value it must give."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, typing.get_origin(int | None)):
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
        origin = typing.get_origin(tp)
    if tp is bool:
        return None, not default
    if tp is int:
        assert default != 7
        return "7", 7
    if tp is float:
        return "0.375", 0.375
    if tp is str:
        return "x-value", "x-value"
    if origin is list:
        (inner,) = typing.get_args(tp)
        values = {str: ["a", "b"], int: [3, 4], float: [0.5, 1.5]}[inner]
        return ",".join(map(str, values)), values
    if tp is dict or origin is dict:
        return '{"k": 1}', {"k": 1}
    raise AssertionError(f"no test value for {tp}")


@pytest.mark.parametrize("words", list(RECIPE_COMMANDS), ids=" ".join)
def test_every_config_field_is_a_flag_with_its_docstring_as_help(words):
    cls = RECIPE_COMMANDS[words][0]
    options = {p.name: p for p in _click_command(words).params}
    docs = field_docs(cls)
    for f in _scalar_fields(cls):
        assert f.name in options, f"{' '.join(words)}: no flag for {cls.__name__}.{f.name}"
        opt = options[f.name]
        assert flag_name(f.name) in opt.opts, (f.name, opt.opts)
        assert docs[f.name] and opt.help == escape(docs[f.name]), f.name
    # the docstrings themselves, read independently of field_docs for a few fields
    if cls is DPOConfig:
        assert options["beta"].help == "KL weight β: implicit reward r̂ = β log(π_θ/π_ref)."
        assert options["lora_r"].help == "LoRA rank."  # from the LoRA block
        assert "--batch-size" in options["batch_size"].opts
    for hand in ("--config", "--set"):
        assert any(hand in p.opts for p in options.values()), hand


@pytest.mark.parametrize("words", list(RECIPE_COMMANDS), ids=" ".join)
def test_every_flag_sets_its_field_and_flags_left_out_set_nothing(words, monkeypatch):
    """Each field gets a value other than its default through its flag; the command hands
    the recipe exactly the default config with those values (types coerced)."""
    cls, module, fn = RECIPE_COMMANDS[words]
    hints = typing.get_type_hints(cls)
    args, expected = [], {}
    for f in _scalar_fields(cls):
        default = getattr(cls(), f.name)
        typed, value = _other_value(hints[f.name], default)
        if typed is None:  # a bool: the flag that flips it
            args.append(flag_name(f.name) if value else f"--no-{f.name.replace('_', '-')}")
        else:
            args += [flag_name(f.name), typed]
        expected[f.name] = value
    assert _invoke(words, args, monkeypatch, module, fn) == dataclasses.replace(cls(), **expected)
    assert _invoke(words, [], monkeypatch, module, fn) == cls()


def test_old_flag_names_that_are_not_field_names_still_work(monkeypatch):
    cfg = _invoke(("ppo",), ["--batch-size", "5"], monkeypatch, "alignkit.recipes.ppo", "train_ppo")
    assert cfg.rollout_batch_size == 5
    cfg = _invoke(("control", "train"), ["--env", "CartPole-v1"], monkeypatch, "alignkit.recipes.control",
                  "run_control")
    assert cfg.env_id == "CartPole-v1"


def test_flags_win_over_set_which_wins_over_the_yaml_file(tmp_path, monkeypatch):
    p = tmp_path / "c.yaml"
    p.write_text("beta: 0.2\nlr: 0.001\nlora_r: 4\nlora_targets: [q_proj]\n")
    cfg = _invoke(("dpo",), ["--config", str(p), "--set", "lr=0.002", "--set", "lora_r=32", "--lora-r", "2"],
                  monkeypatch, "alignkit.recipes.dpo", "train_dpo")
    assert (cfg.beta, cfg.lr, cfg.lora_r, cfg.lora_targets) == (0.2, 0.002, 2, ["q_proj"])


@dataclass
class DPOWithAKnob(DPOConfig):
    knob: int = 3
    """A knob added to a config in a test."""
    knob_names: list[str] = dataclasses.field(default_factory=lambda: ["a"])
    """Names of the knob."""


def test_a_field_added_to_a_config_is_a_flag_with_no_edit_in_cli():
    app, seen = typer.Typer(add_completion=False), {}

    @config_command(app, "run", DPOWithAKnob)
    def run(cfg: DPOWithAKnob):
        seen["cfg"] = cfg

    cmd = get_command(app)
    options = {p.name: p for p in cmd.params}
    assert options["knob"].opts == ["--knob"] and options["knob"].help == "A knob added to a config in a test."
    assert options["beta"].help == field_docs(DPOConfig)["beta"]
    app(["--knob", "5", "--knob-names", "x,y", "--beta", "0.5"], standalone_mode=False)
    assert (seen["cfg"].knob, seen["cfg"].knob_names, seen["cfg"].beta) == (5, ["x", "y"], 0.5)
    app(["--set", "knob=9"], standalone_mode=False)
    assert seen["cfg"] == DPOWithAKnob(knob=9)


def test_help_renders_the_docstring_and_the_dataclass_default():
    from typer.testing import CliRunner

    out = CliRunner().invoke(build_app(), ["dpo", "--help"], env={"COLUMNS": "3000"}, terminal_width=3000)
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    doc = " ".join(field_docs(DPOConfig)["pair_layout"].split())  # holds "[prompt+chosen; ...]"
    assert "[prompt+chosen; prompt+rejected]" in doc and doc in text
    assert "[default: runs/dpo]" in text and "--lora --no-lora" in text


def test_blocks_are_written_once_and_composed():
    """The shared fields are declared in one block each, and every recipe that has them
    inherits them (nothing redeclares a block field except to change its default)."""
    for block in (RunOptions, TrainingOptions, CheckpointOptions, LoRAOptions):
        for f in dataclasses.fields(block):
            assert field_docs(block)[f.name], (block.__name__, f.name)
    composed = {SFTConfig: (LoRAOptions, CheckpointOptions, TrainingOptions),
                DPOConfig: (LoRAOptions, CheckpointOptions, TrainingOptions),
                PPOConfig: (LoRAOptions, CheckpointOptions, TrainingOptions),
                RewardConfig: (LoRAOptions, TrainingOptions), BoNConfig: (RunOptions,)}
    for cls, blocks in composed.items():
        assert all(issubclass(cls, b) for b in blocks), cls
        for b in blocks:
            for f in dataclasses.fields(b):
                redeclared = f.name in cls.__dict__.get("__annotations__", {})
                assert not redeclared or getattr(cls(), f.name) != getattr(b(), f.name), (cls, f.name)
    assert RewardConfig().log_every == 10 and DPOConfig().log_every == 1


@pytest.mark.parametrize("cls", [c for c, _, _ in RECIPE_COMMANDS.values()], ids=lambda c: c.__name__)
def test_a_saved_run_config_loads_back(cls, tmp_path):
    """``alignkit_config.json`` holds asdict(cfg) (plus the run's layout): its keys are still
    config keys, nested ones included, and give the same config back."""
    cfg = cls()
    saved = tmp_path / "alignkit_config.json"
    saved.write_text(json.dumps({**dataclasses.asdict(cfg), "distributed": {"world_size": 1}}))
    keys = {k: v for k, v in json.loads(saved.read_text()).items() if k != "distributed"}
    assert apply_overrides(cls(), keys, source=str(saved)) == cfg


def _shipped_yaml():
    """(path, command words) of every recipe config under configs/: its first line names the
    command (``# alignkit loop --config configs/loop_example.yaml``)."""
    out = []
    for p in sorted((ROOT / "configs").rglob("*.yaml")):
        if p.parent.name == "accelerate":  # accelerate's own launch configs (test_accelerate_configs)
            continue
        m = re.match(r"# alignkit ((?:[a-z]+ )+)--config", p.read_text())
        assert m, f"{p}: the first line should name the command that reads it"
        out.append((p, tuple(m.group(1).split())))
    return out


@pytest.mark.parametrize(("path", "words"), _shipped_yaml(), ids=lambda x: x.name if isinstance(x, Path) else " ".join(x))
def test_every_shipped_yaml_config_loads_through_its_command(path, words, monkeypatch):
    cls, module, fn = RECIPE_COMMANDS[words]
    cfg = _invoke(words, ["--config", str(path)], monkeypatch, module, fn)
    assert cfg == load_config(cls, path) and cfg != cls()


def _documented_command_lines():
    """Every ``alignkit ...`` command line in README.md, docs/*.md and the Makefile."""
    lines = []
    for p in [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"\\\n\s*", " ", p.read_text())  # shell line continuations
        for m in re.finditer(r"(?:^|[\s`$(/])(?:python -m )?alignkit ((?:[a-z][a-z-]* ?)+(?:--[^`\n|;&>#)]*)?)",
                             text, re.M):
            lines.append((p.name, m.group(1).strip()))
    return lines


def test_every_flag_in_the_readme_docs_and_makefile_parses():
    """The flags users copy from the docs exist (a placeholder value of the wrong type, e.g.
    ``--n N``, is not the flag's fault and is not checked)."""
    import typer._click as click

    root, checked = get_command(build_app()), 0
    for where, line in _documented_command_lines():
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        cmd, i = root, 0
        while i < len(words) and hasattr(cmd, "commands") and words[i] in cmd.commands:
            cmd, i = cmd.commands[words[i]], i + 1
        if cmd is root or hasattr(cmd, "commands") or not any(w.startswith("--") for w in words[i:]):
            continue  # prose ("alignkit trains ..."), a group, or no flags to check
        known = {"--help", *(o for p in cmd.params for o in [*p.opts, *p.secondary_opts])}
        for w in words[i:]:
            flag = w.split("=", 1)[0]
            if flag.startswith("--") and flag != "--":
                assert flag in known, f"{where}: `alignkit {line}`: {flag} is not a flag of {cmd.name}"
        try:
            cmd.make_context(cmd.name, words[i:], resilient_parsing=True)
        except click.NoSuchOption as e:
            raise AssertionError(f"{where}: `alignkit {line}`: {e}") from None
        checked += 1
    assert checked >= 20, checked


def test_building_every_commands_flags_imports_no_torch():
    code = ("import sys; from alignkit.cli import build_app; from typer.main import get_command; "
            "get_command(build_app()); print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_flags_are_built_when_first_needed_not_when_the_app_is_built():
    """``alignkit --help`` lists the commands without importing any config or reading its docstrings."""
    code = ("import sys; from alignkit.cli import build_app; from typer.main import get_command; "
            "get_command(build_app()); print(sorted(m for m in sys.modules if m.startswith('alignkit.recipes')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert any("--beta" in p.opts for p in _click_command(("dpo",)).params)  # built on first use
