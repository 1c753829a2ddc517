"""configs/accelerate/*.yaml go through accelerate's own launch-argument processing, and the
FSDP2 / DeepSpeed plugins are built from the environment `accelerate launch` would set.

accelerate alone runs FSDP and DeepSpeed configs on CPU as plain DDP (it must be told cpu=True
to join CPU processes at all); alignkit switches an FSDP2 launch on CPU to accelerate's FSDP2
(training under it: tests/recipes/test_engine_recipes.py) and refuses DeepSpeed on CPU (a ZeRO-2
launch through DeepSpeed's own CPU back-end did not get past start-up within 2 minutes here;
benchmarks/gpu_bench.py --engines runs it on GPUs)."""

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def _launch_args(name: str):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(
        ["--config_file", str(CONFIGS / f"{name}.yaml"), "-m", "alignkit", "dpo"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    return args, defaults, mp_from_config


@pytest.mark.parametrize("name,engine,precision", [
    ("ddp_cpu", "MULTI_GPU", "no"), ("ddp_gpu", "MULTI_GPU", "bf16"), ("fsdp2", "FSDP", "bf16"),
    ("zero2", "DEEPSPEED", "bf16"), ("zero3", "DEEPSPEED", "bf16")])
def test_config_parses(name, engine, precision):
    args, defaults, _ = _launch_args(name)
    assert defaults.distributed_type.name == engine
    assert args.num_processes == 2 and args.mixed_precision == precision


def test_fsdp2_plugin_from_launch_env():
    from accelerate.utils import FullyShardedDataParallelPlugin, patch_environment
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _, _ = _launch_args("fsdp2")
    with patch_environment(**prepare_multi_gpu_env(args)):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"  # the recipes save whole weights
    assert plugin.auto_wrap_policy is not None


@pytest.mark.parametrize("name,stage", [("zero2", 2), ("zero3", 3)])
def test_deepspeed_plugin_from_launch_env(name, stage):
    # accelerate builds the plugin without DeepSpeed installed (the `deepspeed` extra is
    # opt-in: once installed, every save_pretrained imports it through accelerate's unwrap)
    from accelerate.utils import DeepSpeedPlugin, patch_environment
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults, mp_from_config = _launch_args(name)
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)  # as `accelerate launch` does
    _, env = prepare_deepspeed_cmd_env(args)
    with patch_environment(**env):
        plugin = DeepSpeedPlugin()
    cfg = plugin.deepspeed_config
    assert plugin.zero_stage == stage and cfg["zero_optimization"]["stage"] == stage
    assert cfg["gradient_clipping"] == 1.0 and cfg["gradient_accumulation_steps"] == 1
    # the recipe fills the per-rank batch in (no dataloader is prepared)
    assert cfg["train_micro_batch_size_per_gpu"] == "auto"
    assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is (stage == 3)
