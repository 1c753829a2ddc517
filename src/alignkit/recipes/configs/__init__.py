"""Every recipe's config: one flat dataclass per recipe, a docstring on every field.

``recipes/X.py``'s config is ``recipes/configs/X.py`` (``DPOConfig`` in ``configs/dpo.py``,
the demos' too): a new option is a new field there, with its docstring, and nothing else.

``blocks.py`` holds the option blocks that several recipes share (LoRA; seed, device and
precision; resume and logging; checkpoints), each field written once; a recipe's config
inherits the blocks it uses, so their keys stay top-level (``lora_r: 16`` in YAML,
``--set lora_r=16``, ``--lora-r 16``) and the config stays flat.

The configs live here, apart from their recipes' loops, because they import nothing heavy:
the command line builds every command's flags from these dataclasses (the field docstring
is the flag's help), so ``alignkit --help`` must be able to read them without torch. A
field added to the config of ``sft``, ``dpo``, ``ppo``, ``bon``, ``reward train``, ``reward
features``, ``loop`` or ``control train`` is a YAML key, a ``--set`` key and a flag at once
(:mod:`alignkit.cli.options`); the demos' fields are YAML and ``--set`` keys (``alignkit
demo`` serves five configs, its few flags are its own).
"""
