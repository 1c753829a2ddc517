"""The command line: every command is registered, help is fast to build, errors are one line."""

import subprocess
import sys

EXPECTED = ["data", "reward", "sft", "ppo", "dpo", "bon", "mix", "tokens", "annotate", "loop", "demo"]


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "alignkit", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_every_command():
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    for name in EXPECTED:
        assert f" {name} " in out.stdout, name


def test_help_does_not_import_torch():
    code = "import sys; from alignkit.cli import build_app; build_app(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_user_error_is_one_line_exit_2(tmp_path):
    out = _run("data", "inspect", str(tmp_path / "missing.jsonl"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    assert "Traceback" not in out.stderr


def test_dpo_loss_help_lists_every_loss():
    from alignkit.recipes.dpo import LOSSES

    out = _run("dpo", "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for loss in LOSSES:
        assert loss in text, loss


def test_one_set_parser_with_nested_keys():
    """Every command's --set goes through cli.common: dotted keys reach nested configs,
    explicit options win over --set, and a malformed item is a one-line user error."""
    import pytest

    from alignkit.cli.common import build_config, parse_sets
    from alignkit.errors import ConfigError
    from alignkit.recipes.loop import LoopConfig

    cfg = build_config(LoopConfig, None, ["ppo.kl_coef=0.1", "rounds=5", "reward.epochs=4"], rounds=2)
    assert (cfg.ppo.kl_coef, cfg.rounds, cfg.reward.epochs) == (0.1, 2, 4)
    with pytest.raises(ConfigError, match="key=value"):
        parse_sets(["rounds"])


def test_a_command_leaves_the_process_group_it_ran_in(tmp_path):
    """Every process of a launched run leaves torch's process group when its command ends,
    succeeded or refused, and collects the garbage that still holds it (left to the
    interpreter's teardown, gloo's C++ side can abort a rank whose run succeeded). One gloo
    process, a command that succeeds and one that fails."""
    import gc
    import weakref

    import pytest
    import torch.distributed as dist

    from alignkit.cli import main

    class Holder:
        pass

    for i, args in enumerate([["--help"], ["data", "inspect", str(tmp_path / "missing.jsonl")]]):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / f'store{i}'}", rank=0, world_size=1)
        # garbage in a cycle that holds the group: freed before main returns, not at teardown
        held = Holder()
        held.group, held.cycle = dist.group.WORLD, held
        freed = weakref.ref(held)
        del held
        was_enabled = gc.isenabled()
        gc.disable()  # no automatic collection: only main's own can free it
        try:
            with pytest.raises(SystemExit):
                main(args)
        finally:
            if was_enabled:
                gc.enable()
        assert not dist.is_initialized()
        assert freed() is None
