#!/usr/bin/env bash
# Everything the CUDA path needs measured, on one GPU (an H200 or H100), in at most ~8 minutes:
#   1. the GPU tests (CUDA graphs vs eager on both backends, the capture-safe neighbour list in a
#      graph, the neighbour-list and capture-safe model tests on CUDA);
#   2. md_speed on CUDA: alanine dipeptide and a 954-atom water box; the shipped models (default,
#      local, and local rebuilt with this code so its neighbour list can be captured), a
#      random d128/L4 and a relative local-attention model, python backend eager and in a CUDA
#      graph; MACE-OFF-small-like rows for the same systems;
#   3. scaling: energy+forces time and peak memory at 1,000, 10,000 and 100,000 atoms (local
#      attention open, periodic, periodic capture-safe in a CUDA graph; dense at 1,000 and 10,000);
#   4. training throughput of the shipped recipe (float32 and bf16 autocast) beside MACE, same data.
#
#   bash benchmarks/gpu.sh [OUTDIR]        (default OUTDIR: benchmarks/results/gpu)
#
# The GPU machine has Python 3.12 and torch 2.11 (CUDA 13) but no OpenMM, openmm-ml, ase, MACE or
# pytest, and no internet: first run `bash benchmarks/gpu_wheels.sh` here (fills the git-ignored
# .whl/ with wheels and the training data, ~30 MB), then, with the device tool, carry .whl and run
# from the repository root:
#
#   run(command='bash benchmarks/gpu.sh "$OUT" 2>&1 | tee "$OUT/log.txt"', carry=[".whl"], timeout_s=600)
#
# Results come back in OUTDIR: gpu.txt (GPU, versions, platform), log.txt, tests.txt,
# md_speed_cuda.json, scaling_cuda.json, scaling_cuda_dense.json, training_throughput_cuda.json
# (and their .meta.json). When .whl/ holds wheels, they are installed with --no-deps into
# /tmp/site (SITE=...) and put on PYTHONPATH; the project's own wheel is replaced by a build of
# the working tree if the tree changed since gpu_wheels.sh ran.
#
# Uses TransIPForce's python backend (openmm.PythonForce with the model on the GPU, eager and
# captured in a CUDA graph): the GPU machine's torch (2.11) cannot load openmm-torch, whose
# only release needs torch 2.9 (its tests skip). OpenMM runs on its CUDA platform when a CUDA
# context can be made, else on CPU (the model stays on the GPU). Every step has its own time
# limit and writes its JSON row by row, so a step that fails or runs out of time keeps what it
# measured and the next step still runs.
#
# Knobs (environment): PYTHON (default python3), SITE, NO_MACE=1 (skip the MACE rows), DEVICE
# (torch device, default cuda), PLATFORM (OpenMM platform, default: probed), TESTS_ARGS,
# SCALING_ARGS, SCALING_DENSE_ARGS, MD_SPEED_ARGS, THROUGHPUT_ARGS (replace the default
# arguments below, e.g. for a dry run on a CPU), SKIP (steps to skip, e.g. SKIP="tests scaling"),
# NO_WHEELS=1 (use this Python's packages, not .whl/: a dry run here, where the wheels do not fit).
set -u
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || true

# 0) Packages carried as wheels (.whl/, from benchmarks/gpu_wheels.sh).
if [ "${NO_WHEELS:-0}" != 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
    SITE="${SITE:-/tmp/site}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || { echo "installing .whl/*.whl into $SITE failed" >&2; exit 1; }
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    # Is the project wheel older than the working tree? Then install the tree over it.
    stale=$("$PY" - "$SITE" <<'PY'
import filecmp, pathlib, sys, tomllib
site = pathlib.Path(sys.argv[1])
dirs = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
stale = []
for package, source in dirs.items():
    for path in sorted(pathlib.Path(source).glob("*.py")) + sorted(pathlib.Path(source).glob("models/*.pt")):
        installed = site.joinpath(*package.split("."), path.relative_to(source))
        if not installed.is_file() or not filecmp.cmp(path, installed, shallow=False):
            stale.append(str(path))
print(" ".join(stale))
PY
)
    if [ -n "$stale" ]; then
        echo "the project wheel in .whl/ differs from the working tree ($stale): installing the tree"
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
            --target "$SITE" . || echo "WARNING: could not install the tree; running the older project wheel" >&2
    fi
fi

# OpenMM's CUDA plugin finds libcudart/libnvrtc/libcufft through a path relative to its own
# site-packages; when OpenMM lives in $SITE they are the ones that came with this Python's torch.
NVLIB=$("$PY" - <<'PY'
import glob, os, site
dirs = []
for sp in site.getsitepackages():
    for lib in ("libnvrtc.so.1*", "libcufft.so.1*", "libcudart.so.1*"):
        for path in sorted(glob.glob(os.path.join(sp, "nvidia", "*", "lib", lib))):
            if os.path.dirname(path) not in dirs:
                dirs.append(os.path.dirname(path))
print(":".join(dirs))
PY
)
[ -n "$NVLIB" ] && export LD_LIBRARY_PATH="$NVLIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# Which OpenMM platform: CUDA if a context can be made on it. (python -P: the repository root,
# whose transip_openmm/ lacks the subpackages that the install maps in, must not shadow $SITE.)
probe_log=$(mktemp)
PROBED=$("$PY" -P - 2>"$probe_log" <<'PY'
import sys
import torch  # first, as the benchmarks do
import openmm
import transip_openmm
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.cuda.is_available()}), "
      f"openmm {openmm.__version__} from {openmm.__file__}, transip_openmm from {transip_openmm.__file__}",
      file=sys.stderr)
names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
print(f"OpenMM platforms: {names}", file=sys.stderr)
for failure in openmm.Platform.getPluginLoadFailures():
    print(f"  plugin not loaded: {failure}", file=sys.stderr)
choice = "CPU"
if "CUDA" in names:
    try:
        system = openmm.System()
        system.addParticle(1.0)
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CUDA"))
        context.setPositions([openmm.Vec3(0, 0, 0)])
        context.getIntegrator().step(1)
        choice = "CUDA"
    except Exception as exc:
        print(f"CUDA platform unusable: {exc}", file=sys.stderr)
print(choice)
PY
)
PLATFORM="${PLATFORM:-${PROBED:-CPU}}"
echo "OpenMM platform: $PLATFORM" >>"$probe_log"
tee -a "$OUT/gpu.txt" <"$probe_log"
rm -f "$probe_log"

MACE_FLAG=""
if [ "${NO_MACE:-0}" = 1 ]; then
    MACE_FLAG="--no-mace"
elif ! "$PY" -P -c "import mace.modules, openmmml.models.macepotential" 2>/dev/null; then
    echo "MACE or openmm-ml does not import: MACE rows skipped"
    MACE_FLAG="--no-mace"
fi

status=0
skip() { case " ${SKIP:-} " in *" $1 "*) echo "step $1 skipped (SKIP)"; return 0 ;; esac; return 1; }

# 1) GPU tests (about 1 minute).
if ! skip tests; then
    # shellcheck disable=SC2086
    timeout 90 "$PY" -P -m pytest ${TESTS_ARGS:-tests/force/test_force_gpu.py tests/model/test_capture_safe.py \
        tests/model/test_neighbors.py} -q -p no:cacheprovider -rs >"$OUT/tests.txt" 2>&1
    rc=$?
    cat "$OUT/tests.txt"
    [ "$rc" = 0 ] || status=$rc
fi

# 2) MD steps/s: TransIP (python backend, model on the GPU, eager and in a CUDA graph) and MACE.
if ! skip md_speed; then
    # shellcheck disable=SC2086
    timeout 150 "$PY" -P benchmarks/md_speed.py ${MD_SPEED_ARGS:---quick --device $DEVICE --threads 0 \
        --backends python,python-graphs --mace-small-only --models transip-d128-L4,transip-d128-L4-local5A-relative,transip-default,transip-local,transip-local-rebuilt,mace-off-small} \
        $MACE_FLAG --platform "$PLATFORM" --json "$OUT/md_speed_cuda.json" || status=$?
fi

# 3) energy+forces time and peak memory against atom count (each case in its own process).
if ! skip scaling; then
    # shellcheck disable=SC2086
    timeout 130 "$PY" -P benchmarks/scaling.py ${SCALING_ARGS:---device $DEVICE --size transip-d128-L4 \
        --sizes 1000,10000,100000 --variants local5A,local5A-periodic,local5A-periodic-graph --max-gb 100 \
        --target-s 0.5 --case-timeout 60} --json "$OUT/scaling_cuda.json" || status=$?
    # shellcheck disable=SC2086
    timeout 40 "$PY" -P benchmarks/scaling.py ${SCALING_DENSE_ARGS:---device $DEVICE --size transip-d128-L4 \
        --sizes 1000,10000 --variants dense-nobias,dense --max-gb 100 --target-s 0.5 --case-timeout 30} \
        --json "$OUT/scaling_cuda_dense.json" || status=$?
fi

# 4) training throughput: the shipped recipe in float32 and bf16 autocast, MACE on the same data.
if ! skip throughput; then
    # shellcheck disable=SC2086
    timeout 80 "$PY" -P benchmarks/training_throughput.py ${THROUGHPUT_ARGS:---device $DEVICE --threads 0 \
        --steps 20 --warmup 3} $MACE_FLAG --json "$OUT/training_throughput_cuda.json" || status=$?
fi

echo "results in $OUT (exit status $status)"
exit $status
