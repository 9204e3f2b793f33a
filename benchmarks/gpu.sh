#!/usr/bin/env bash
# md_speed and scaling on one CUDA GPU (an H100 was the target), in a few minutes.
#
#   bash benchmarks/gpu.sh [OUTDIR]        (default OUTDIR: benchmarks/results/gpu)
#
# Uses TransIPForce's python backend (openmm.PythonForce with the model on the GPU, eager and
# captured in a CUDA graph): the
# GPU machine's torch (2.11) cannot load openmm-torch, whose only release needs torch 2.9.
# OpenMM runs on its CUDA platform when available, else CPU (the model stays on the GPU).
# Untested where this was written (no GPU there); every step writes its JSON as it finishes,
# so a step that fails leaves the others' results.
set -u
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || true

PLATFORM=$(python - <<'PY'
import openmm
names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
print("CUDA" if "CUDA" in names else "CPU")
PY
)
echo "OpenMM platform: $PLATFORM"

status=0
# 1) energy+forces time and memory against atom count (each case in its own process).
timeout 420 python benchmarks/scaling.py --device cuda --size transip-d128-L4 \
    --sizes 22,1000,10000,30000,100000 --variants dense-nobias,local5A,dense --max-gb 60 \
    --target-s 1.0 --case-timeout 150 --json "$OUT/scaling_cuda.json" || status=$?

# 2) MD steps/s: TransIP (python backend, model on the GPU) and MACE-OFF-like via openmm-ml.
timeout 420 python benchmarks/md_speed.py --quick --platform "$PLATFORM" --device cuda --threads 0 \
    --backends python,python-graphs --mace-small-only --json "$OUT/md_speed_cuda.json" || status=$?

echo "results in $OUT (exit status $status)"
exit $status
