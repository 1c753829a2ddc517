#!/usr/bin/env bash
# Build the `imitation` 1.0.1 virtualenv that benchmarks/imitation_side.py runs in.
#
#   bash benchmarks/control_imitation_venv.sh [VENV (default /work/venv_imitation)] [MAIN_VENV (default /work/main/.venv)]
#
# imitation 1.0.1 pins gymnasium 0.29 and stable-baselines3 2.2, so it never shares the
# project's venv. Its only heavy dependency, torch, is borrowed from the project's venv (a .pth
# file appended to sys.path, so every package installed here wins over the project's copy):
# a PyPI torch wheel would pull the CUDA libraries. imitation and SB3 are installed without
# dependencies for that reason, and their other dependencies are listed here by hand (from the
# wheels' METADATA). numpy < 2: gymnasium 0.29 predates NumPy 2.
set -euo pipefail
VENV=${1:-/work/venv_imitation}
MAIN=${2:-/work/main/.venv}
PY=$("$MAIN/bin/python" -c 'import sys; print(sys._base_executable)')
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q --no-deps imitation==1.0.1 stable-baselines3==2.2.1
"$VENV/bin/pip" install -q "numpy<2" "gymnasium[classic-control]==0.29.1" "mujoco==$("$MAIN/bin/python" -c 'import mujoco; print(mujoco.__version__)')" \
    matplotlib tqdm rich "scikit-learn>=0.21.2" "seals~=0.2.1" "sacred>=0.8.4" "tensorboard>=1.14" \
    "huggingface-sb3~=3.0" "optuna>=3.0.1" "datasets>=2.8.0" cloudpickle pandas
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
MAIN_SITE=$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# torch (and what it imports) from the project's venv, searched after this venv's own packages
echo "import sys; sys.path.append('$MAIN_SITE')" > "$SITE/zz_borrow_torch.pth"
"$VENV/bin/python" -c 'import torch, gymnasium, stable_baselines3, imitation, numpy; print("imitation", imitation.__version__, "gymnasium", gymnasium.__version__, "sb3", stable_baselines3.__version__, "torch", torch.__version__, "numpy", numpy.__version__)'
