#!/usr/bin/env bash
# A Python like the GPU machine's, on this CPU, to dry-run the GPU run against before device time
# is spent: CPython 3.12, torch/torchaudio 2.11 (PyPI's CUDA 13 build, which runs on a CPU), and
# the packages of the machine's image that our code path imports, at the versions
# /work/.library/device/KINDS.md lists for it; none of AudioCraft's stack (that comes from the
# wheelhouse, as there).
#
#   PYTHON312=/root/.pyenv/versions/3.12.1/bin/python3.12 bash benchmarks/gpu/device_sim.sh [DEST]
#   PYTHON=DEST/bin/python bash benchmarks/gpu/run_gpu.sh --dry-run-cpu
#
# Downloads about 4 GB from PyPI (torch pulls the CUDA libraries, needed to import it) and takes
# 4 GB of disk; DEST defaults to ~/.cache/audiocraft-ext/device-sim.
set -euo pipefail

dest=${1:-$HOME/.cache/audiocraft-ext/device-sim}
python=${PYTHON312:-python3.12}
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' \
    || { echo "error: $python is not CPython 3.12 (set PYTHON312)" >&2; exit 1; }
"$python" -m venv "$dest"
pip=("$dest/bin/python" -m pip --disable-pip-version-check --quiet)
"${pip[@]}" install torch==2.11.0 torchaudio==2.11.0
# What the machine has (KINDS.md's versions where it gives one).
"${pip[@]}" install numpy==2.5.2 transformers==5.17.0 huggingface_hub==1.33.0 safetensors==0.8.0 \
    sentencepiece==0.2.2 tokenizers==0.23.2 torchmetrics==1.9.0 accelerate==1.15.0 peft numba llvmlite \
    scipy matplotlib scikit-learn einops pyyaml tqdm requests regex packaging psutil pillow rich typer \
    lazy-loader lightning-utilities joblib msgpack protobuf jinja2 filelock pytest pytest-timeout
# Pulled in by the resolver, absent from the machine's image: remove, so that nothing hides a
# package the wheelhouse lacks.
"${pip[@]}" uninstall -y pydantic pydantic-core annotated-types typing-inspection tzdata
"$dest/bin/python" -c 'import torch; print("device-like Python ready:", torch.__version__)'
