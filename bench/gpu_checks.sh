#!/usr/bin/env bash
# The GPU checks of the fast-training issue, in one script for a machine with a CUDA device.
# It needs torch, numpy and (for the last stage) pytest only: no fastapi/sqlalchemy/httpx.
#
#   bash bench/gpu_checks.sh            # every stage (about 6-8 min on an H100)
#   bash bench/gpu_checks.sh models     # or some stages: models lenet10 concurrent pytest
#
# Fashion-MNIST: TRAINSERVE_DATA_DIR, else ./var/fashion-mnist, else /usr/share/datasets/...
# To bring it to a machine without it, copy the four .gz files to var/fashion-mnist (ignored by
# git, 31 MB) and carry that folder. Each stage's output goes to $OUT (or /tmp/trainserve-gpu-checks) as a log.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT_DIR=${OUT:-/tmp/trainserve-gpu-checks}
mkdir -p "$OUT_DIR"
if [ -z "${TRAINSERVE_DATA_DIR:-}" ] && [ -e var/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  export TRAINSERVE_DATA_DIR=$PWD/var/fashion-mnist
fi
STAGES=${*:-models lenet10 concurrent pytest}
FAILED=0

run() {  # run NAME CMD...: print and log the command's output, remember a failure
  local name=$1; shift
  echo "=== $name: $*" | tee -a "$OUT_DIR/$name.log"
  "$@" 2>&1 | tee -a "$OUT_DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { echo "=== $name: exit $rc" | tee -a "$OUT_DIR/$name.log"; FAILED=1; }
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")'
} 2>&1 | tee "$OUT_DIR/device.log"

for stage in $STAGES; do
  case $stage in
    models)  # (a) the course's DataLoader loop vs (b) train(): all six nets, one epoch each
      run models $PY bench/train.py --epochs 1 --json "$OUT_DIR/models.json" ;;
    lenet10)  # LeNet over 10 epochs: throughput and both test accuracies
      run lenet10 $PY bench/train.py --models lenet --epochs 10 --json "$OUT_DIR/lenet10.json" ;;
    concurrent)  # aggregate examples/s of 1, 2, 4, 8 LeNet trainings sharing the GPU
      for n in 1 2 4 8; do
        run concurrent $PY bench/train.py --concurrent "$n" --epochs 3 \
          --json "$OUT_DIR/concurrent-$n.json"
      done ;;
    pytest)  # the training loop on CUDA (bf16 autocast, channels_last, resume); no conftest:
      # tests/conftest.py imports httpx for the server tests
      run pytest $PY -m pytest -m gpu tests/unit/test_training.py -q --noconftest \
        -p no:cacheprovider ;;
    *) echo "unknown stage $stage (models lenet10 concurrent pytest)"; FAILED=1 ;;
  esac
done
exit $FAILED
