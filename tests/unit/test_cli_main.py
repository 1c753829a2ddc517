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
