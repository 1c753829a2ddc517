"""Leaving torch's process group at exit (alignkit.utils.process_group)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import atexit, sys
import torch.distributed as dist

# registered first, so it runs last (atexit is last in, first out): what teardown would find
atexit.register(lambda: print("at exit, still in the group:", dist.is_initialized()))
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
from alignkit.utils.process_group import leave_at_exit
leave_at_exit()
leave_at_exit()  # once per process
print("registered")
"""


def test_a_process_that_joined_a_group_leaves_it_before_teardown(tmp_path):
    """``leave_at_exit`` (what ``Distributed`` calls when it joins a group) has the group
    destroyed at exit, before the interpreter's teardown and before handlers registered
    earlier; registering twice leaves it once."""
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "store")], capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(root / "src"), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split("\n")[:2] == ["registered", "at exit, still in the group: False"]
