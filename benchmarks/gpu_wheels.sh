#!/usr/bin/env bash
# Fill .whl/ (repository root, git-ignored) with the wheels that benchmarks/gpu.sh needs on the
# GPU machine: x86-64, Python 3.12, torch 2.11 (CUDA 13) preinstalled with numpy, scipy, pyyaml,
# tqdm, h5py, matplotlib, pandas, e3nn, opt-einsum(-fx), torchmetrics, setuptools and pip, but
# no OpenMM and no internet. Run it here, where pip reaches PyPI, right before the GPU run (the
# project's own wheel is a snapshot of the working tree; gpu.sh rebuilds it on the GPU machine
# if the tree changed since):
#
#   bash benchmarks/gpu_wheels.sh          (PYTHON=... picks the interpreter that runs pip)
#
# What goes in (one version each, all --no-deps; gpu.sh installs them with --no-deps too):
# - OpenMM 8.6.1 and its CUDA 13 platform plugin (openmm-cuda-13). Its other requirements,
#   nvidia-cuda-runtime/-nvrtc/-cupti and nvidia-cufft, come with the machine's torch; it also
#   names nvidia-cuda-nvcc (45 MB), which the plugin does not load: left out.
# - openmm-ml 1.8 (built from its sdist, pure Python), ase, and transip-openmm itself.
# - pytest and its requirements (iniconfig, pluggy, packaging, pygments), for the GPU tests.
# - MACE (mace-torch 0.3.16, the pin of our `bench` extra) with e3nn 0.4.4, the version it pins,
#   and the rest of its requirements that the machine lacks. Skip with NO_MACE=1 (then run
#   gpu.sh with NO_MACE=1 too).
# Left out on purpose: openmmtools (md_speed.py's test systems; with netCDF4, cftime, pymbar,
# mpiplus and mdtraj it would add ~33 MB: md_speed.py then builds the same two systems with openmm.app)
# and mdtraj (8 MB; only needed for atom-selection strings, which the benchmarks do not use).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
W=.whl

exclude="$(git rev-parse --git-path info/exclude 2>/dev/null || true)"
if [ -n "$exclude" ] && ! grep -qx '/.whl/' "$exclude" 2>/dev/null; then
    mkdir -p "$(dirname "$exclude")" && echo '/.whl/' >>"$exclude"
fi

# Binary wheels for CPython 3.12 on x86-64 Linux (pip matches manylinux tags exactly: name them all).
BINARY=(
    openmm==8.6.1 openmm-cuda-13==8.6.1 ase==3.29.0
    pytest==9.0.3 pluggy==1.6.0 iniconfig==2.3.0 packaging==26.2 pygments==2.20.0
)
# Pure-Python packages published only as sdists: built into wheels here.
SDIST=(openmmml==1.8)
if [ "${NO_MACE:-0}" != 1 ]; then
    BINARY+=(
        mace-torch==0.3.16 e3nn==0.4.4 matscipy==1.3.1 torch-ema==0.3 prettytable==3.18.0
        wcwidth==0.9.4 configargparse==1.9.0 gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3
        lmdb==3.0.0 orjson==3.13.0
    )
    SDIST+=(python-hostlist==2.3.0)
fi

PLATFORMS=(--platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for n in $(seq 5 39); do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done

rm -rf "$W"
mkdir -p "$W"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$W" "${BINARY[@]}"

"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$tmp/sdist" "${SDIST[@]}"
for sdist in "$tmp"/sdist/*; do
    "$PY" -m pip wheel -q --no-deps -w "$W" "$sdist"
done

# The project, built from a copy of the working tree (tracked and untracked-not-ignored files),
# so that no build/ or egg-info left in the tree can leak stale modules into the wheel.
mkdir -p "$tmp/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C "$tmp/src"
"$PY" -m pip wheel -q --no-deps -w "$W" "$tmp/src"

# The training-throughput data: the OMol25 sample of the reference data as one extxyz file (the GPU
# machine has no ase-db-backends to read .aselmdb); skipped where the reference data are absent.
if compgen -G "../shared/data/omol25_sample/*.aselmdb" >/dev/null; then
    "$PY" benchmarks/training_throughput.py --write-extxyz "$W/omol25_sample.extxyz"
fi

# Checks: pure-Python wheels built here must not be tied to this machine's Python.
for f in "$W"/*.whl; do
    case "$(basename "$f")" in
        *-cp3*|*-abi3-*|*-py3-none-any.whl|*-py2.py3-none-any.whl|*-py3-none-manylinux*) ;;
        *) echo "unexpected wheel tag: $f" >&2; exit 1 ;;
    esac
done
names="$(for f in "$W"/*.whl; do basename "$f" | cut -d- -f1 | tr 'A-Z_.' 'a-z--'; done | sort)"
if [ -n "$(uniq -d <<<"$names")" ]; then
    echo "two versions of: $(uniq -d <<<"$names")" >&2
    exit 1
fi
ls -l "$W" | awk 'NR > 1 {printf "%8.2f MiB  %s\n", $5 / 1048576, $9}'
du -sb "$W" | awk '{printf "total %.1f MiB in .whl/ (the working tree that travels must stay under 64 MiB)\n", $1 / 1048576}'
