#!/usr/bin/env bash
# The GPU check of the full-catalog loss (issue 16), in one command on a machine with a CUDA GPU:
#   1. benchmarks/bench_train.py on CUDA: dense fp32 vs chunked fp32 vs chunked bf16 for CORE-ave,
#      CORE-trm and CORE-HN (epoch and validation time, peak RSS and device memory, valid
#      R@20 / MRR@20, where a batch's time goes, the speed-up line);
#   2. the README's search on the GPU: launch.py --space dahn.yaml --dataset synthetic
#      --gpus-per-trial 0.25 (four trials per GPU), with its wall time.
# It needs nothing outside the repository but the benchmark's data directory; the synthetic
# dataset and the search's outputs go to a temporary directory, removed at the end.
#
#   bash benchmarks/gpu_check.sh --data-dir path/to/datasets [--dataset tmall] [--seeds 3]
#       [--limit-rows N] [--device cuda:0]
set -euo pipefail

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
}

data_dir=""
dataset="tmall"
seeds=1
limit_rows=0
device="cuda"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --data-dir) data_dir="$2"; shift 2 ;;
        --dataset) dataset="$2"; shift 2 ;;
        --seeds) seeds="$2"; shift 2 ;;
        --limit-rows) limit_rows="$2"; shift 2 ;;
        --device) device="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [[ -z "$data_dir" ]]; then
    echo "--data-dir is required" >&2
    usage >&2
    exit 2
fi

cd "$(dirname "$0")/.."
python - "$device" <<'EOF'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: this check needs a GPU")
device = torch.device(sys.argv[1])
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.get_device_name(device)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,memory.used,utilization.gpu --format=csv
fi

echo
echo "== 1. training benchmark on $device ($dataset, $seeds seed(s))"
python benchmarks/bench_train.py --dataset "$dataset" --data-dir "$data_dir" \
    --device "$device" --seeds "$seeds" --limit-rows "$limit_rows"

echo
echo "== 2. search on the GPU: launch.py --space dahn.yaml --dataset synthetic --gpus-per-trial 0.25"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
start=$(date +%s)
python launch.py --space dahn.yaml --dataset synthetic --data-dir "$scratch/datasets" \
    --output-dir "$scratch/outputs" --gpus-per-trial 0.25 --require-cuda 2>&1 | tail -n 40
echo "search wall time: $(( $(date +%s) - start )) s (synthetic data generated included)"
