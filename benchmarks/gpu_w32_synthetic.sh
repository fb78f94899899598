#!/usr/bin/env bash
# Issue 12's GPU run, made for one call on a lent GPU machine (bare: its own python3 with torch,
# no project install): HRNet-W32 256x192 trained with the testbed's recipe on the synthetic pool
# (benchmarks/configs/gpu_w32_synthetic.toml), its learning curve and throughput, and where ONNX
# Runtime has the CUDA provider, bundles/demo on CUDA against the CPU.
#
#   bash benchmarks/gpu_w32_synthetic.sh OUT_DIR [TRAIN_SECONDS]
#
# Steps: the pool (all cores), a short probe run for the rate (samples/s), then one complete
# schedule sized to TRAIN_SECONDS (default 300; the whole call then about 8 min of the device's
# 10-min limit per command) at that rate, so that its learning-rate drops happen (a run cut by
# its time budget would stop before them); then
# benchmarks/learning_curve.py. pycocotools (training's validation) comes from wheels in .whl/
# when the machine lacks it: made here, before the call, with
#   echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all: \
#       --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 -d .whl pycocotools
# and carried (`carry: [".whl"]`). SMOKE=1: the same steps at toy size on any machine (the plumbing;
# hrnet_small_up on a 64-image pool).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: benchmarks/gpu_w32_synthetic.sh OUT_DIR [TRAIN_SECONDS]}
SECONDS_TRAIN=${2:-300}
PY=${PYTHON:-python3}
RUN=${RUN:-/tmp/gpu-w32}
mkdir -p "$OUT" "$RUN"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if ! "$PY" -c 'import pycocotools' 2>/dev/null; then
    ls .whl/pycocotools-*.whl >/dev/null 2>&1 || {
        echo "no pycocotools here and no wheel of it in .whl/ (see this script's header)" >&2
        exit 2
    }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/pycocotools-*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
CFG="$RUN/base.toml"
cp benchmarks/configs/gpu_w32_synthetic.toml "$CFG"
PROBE_SAMPLES=12800
if [ "${SMOKE:-0}" = 1 ]; then
    sed -i 's/^arch = .*/arch = "hrnet_small_up"/; s/^input_hw = .*/input_hw = [128, 96]/;
        s/^batch_size = .*/batch_size = 4/; s/^workers = .*/workers = 1/;
        s/^warmup_samples = .*/warmup_samples = 8/' "$CFG"
    printf '[data.synthetic]\ntrain_images = 64\nval_images = 8\n' >>"$CFG"
    PROBE_SAMPLES=16
fi
{
    "$PY" - <<'PY'
import json, os, platform
import torch, onnxruntime
info = {"python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.cuda.is_available(), "cpus": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "ort_providers": onnxruntime.get_available_providers()}
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
print(json.dumps(info))
PY
} | tee "$OUT/steps.txt"
t0=$(date +%s)
# 1. The pool, where the backbone run looks for it (its run folder's data/), on all cores.
"$PY" -c '
import sys
from pathlib import Path
from training.config import load_backbone_config
from training.data.sources import resolve_data
resolve_data(load_backbone_config(config_file=sys.argv[1]).data, Path(sys.argv[2]))
' "$CFG" "$RUN/main/data"
echo "pool: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/steps.txt"
mkdir -p "$RUN/probe"
ln -sfn "$RUN/main/data" "$RUN/probe/data"
# 2. The rate: a short run (its last report's samples/s, which includes the start-up).
t1=$(date +%s)
"$PY" -m service.cli train backbone --config "$CFG" --samples "$PROBE_SAMPLES" \
    --out "$RUN/probe" 2>&1 | tr '\r' '\n' | tee "$OUT/train.log" | tail -n 3
RATE=$("$PY" -c '
import json, sys
rows = [json.loads(x) for x in open(sys.argv[1])]
print(int(rows[-1]["samples_per_s"]))' "$RUN/probe/log.jsonl")
echo "probe: $(( $(date +%s) - t1 )) s, $RATE samples/s" | tee -a "$OUT/steps.txt"
# 3. One schedule sized to SECONDS_TRAIN at that rate, validated eight times along the way.
N=$(( RATE * SECONDS_TRAIN / 1000 * 1000 ))
[ "$N" -ge 64 ] || N=64
# (the two keys first: top-level keys must come before the config's tables)
{ printf 'train_samples = %d\nreport_every = %d\n' "$N" $(( N / 8 )); cat "$CFG"; } >"$RUN/main.toml"
t2=$(date +%s)
"$PY" -m service.cli train backbone --config "$RUN/main.toml" --out "$RUN/main" \
    --time-budget $(( SECONDS_TRAIN * 3 / 2 )) 2>&1 | tr '\r' '\n' | tee -a "$OUT/train.log" \
    | tail -n 3
echo "main: $(( $(date +%s) - t2 )) s for $N samples" | tee -a "$OUT/steps.txt"
cp "$RUN/main/log.jsonl" "$OUT/log.jsonl"
cp "$RUN/main.toml" "$OUT/config.toml"
"$PY" benchmarks/learning_curve.py --run "$RUN/main" --name learning_curve_gpu_w32_synthetic
# (at most 8 files come back from a device call: steps.txt, train.log, log.jsonl, config.toml,
# the curve's .md and .png, cuda_parity.txt)
cp benchmarks/results/learning_curve_gpu_w32_synthetic.{md,png} "$OUT/"
# 4. Where ONNX Runtime has CUDA: the shipped bundle on CUDA against the CPU.
if "$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())'; then
    timeout 120 "$PY" benchmarks/gpu_parity.py --bundle bundles/demo | tee "$OUT/cuda_parity.txt" || true
else
    echo "no CUDA provider in this ONNX Runtime: the service's CUDA path not checked" | tee -a "$OUT/steps.txt"
fi
echo "total: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/steps.txt"
