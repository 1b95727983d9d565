#!/usr/bin/env bash
# bench/gpu.py on a lent GPU machine (the device tool's `run`), in one call. That machine has torch,
# torchvision and lightning but no network: lightly travels as a wheel in .whl/ and Fashion-MNIST's
# IDX files in .data/fashion-mnist/, both prepared here by `bash bench/gpu_device.sh --prepare`
# and named in the call's `carry`: run(command="bash bench/gpu_device.sh", carry=[".whl", ".data"]).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    grep -qx '/.data/' .git/info/exclude 2>/dev/null || echo /.data/ >> .git/info/exclude
    mkdir -p .whl .data/fashion-mnist
    # lightly's loss, head, transform and helper modules import nothing beyond torch, torchvision and PIL
    python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "lightly==${LIGHTLY_VERSION:-1.6.0}"
    cp /usr/share/datasets/fashion-mnist/train-*-ubyte.gz .data/fashion-mnist/
    du -sh .whl .data
    exit 0
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH="$PWD/src:/tmp/site" REPLEARN_DATA="$PWD/.data/fashion-mnist" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
python3 -c "import torch, torchvision, lightning; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'lightning', lightning.__version__)"
# arguments go to bench/gpu.py (default: --compile, every contender at the issue's setting)
[ $# -gt 0 ] || set -- --compile
python3 bench/gpu.py "$@" --write docs/benchmarks.md 2>&1 | tee "$OUT/gpu.log"
cp docs/benchmarks.md "$OUT/benchmarks.md"
