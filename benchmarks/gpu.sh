#!/usr/bin/env bash
# md_speed and scaling on one CUDA GPU (an H100 was the target), in about 5 minutes (at most ~9).
#
#   bash benchmarks/gpu.sh [OUTDIR]        (default OUTDIR: benchmarks/results/gpu)
#
# The GPU machine has Python 3.12 and torch 2.11 (CUDA 13) but no OpenMM, openmm-ml, ase or
# MACE, and no internet: first run `bash benchmarks/gpu_wheels.sh` here (fills the git-ignored
# .whl/, ~24 MB), then, with the device tool, carry .whl and run from the repository root:
#
#   run(command='bash benchmarks/gpu.sh "$OUT" 2>&1 | tee "$OUT/log.txt"', carry=[".whl"], timeout_s=600)
#
# (results come back as 6 files: gpu.txt, log.txt, scaling_cuda.json, md_speed_cuda.json and
# their .meta.json). When .whl/ holds wheels, they are installed with --no-deps into /tmp/site
# (SITE=...) and put on PYTHONPATH; the project's own wheel is replaced by a build of the working
# tree if the tree changed since gpu_wheels.sh ran.
#
# Uses TransIPForce's python backend (openmm.PythonForce with the model on the GPU, eager and
# captured in a CUDA graph): the GPU machine's torch (2.11) cannot load openmm-torch, whose
# only release needs torch 2.9. OpenMM runs on its CUDA platform when a CUDA context can be
# made, else on CPU (the model stays on the GPU). md_speed's test systems come from openmmtools
# where it is installed, else (not carried: ~33 MB with its dependencies) the same two systems
# are built with openmm.app. Both steps write their JSON row by row, so a step that fails or
# is stopped by its timeout keeps what it measured.
#
# Knobs (environment): PYTHON (default python3), SITE, NO_MACE=1 (skip the MACE rows), DEVICE
# (torch device, default cuda), PLATFORM (OpenMM platform, default: probed), SCALING_ARGS and
# MD_SPEED_ARGS (replace the default arguments below, e.g. for a dry run on a CPU).
set -u
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || true

# 0) Packages carried as wheels (.whl/, from benchmarks/gpu_wheels.sh).
if compgen -G ".whl/*.whl" >/dev/null; then
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
# 1) energy+forces time and memory against atom count (each case in its own process).
# shellcheck disable=SC2086
timeout 240 "$PY" benchmarks/scaling.py ${SCALING_ARGS:---device $DEVICE --size transip-d128-L4 \
    --sizes 22,1000,10000,30000,100000 --variants dense-nobias,local5A,local5A-periodic,dense --max-gb 60 \
    --target-s 1.0 --case-timeout 100} --json "$OUT/scaling_cuda.json" || status=$?

# 2) MD steps/s: TransIP (python backend, model on the GPU) and MACE-OFF-like via openmm-ml.
# shellcheck disable=SC2086
timeout 300 "$PY" -P benchmarks/md_speed.py ${MD_SPEED_ARGS:---quick --device $DEVICE --threads 0 \
    --backends python,python-graphs --mace-small-only} $MACE_FLAG --platform "$PLATFORM" \
    --json "$OUT/md_speed_cuda.json" || status=$?

echo "results in $OUT (exit status $status)"
exit $status
