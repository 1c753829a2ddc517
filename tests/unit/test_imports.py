"""The core imports light: losses and data must not pull in the web app, Ray or gymnasium."""

import subprocess
import sys

import pytest

HEAVY = ["fastapi", "starlette", "uvicorn", "sqlalchemy", "ray", "deepspeed", "gymnasium", "trl", "playwright"]


@pytest.mark.parametrize("module", ["alignkit.losses", "alignkit.data", "alignkit"])
def test_core_import_is_light(module):
    code = (
        f"import sys, {module}\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imported {out.stdout.strip()}"


def test_losses_need_only_torch():
    code = (
        "import sys, alignkit.losses\n"
        "print('transformers' in sys.modules, 'datasets' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
