#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md ("On a GPU") in one command, from the repository root of a
# machine with a CUDA GPU. Every step has its own time limit and appends its output to
# $OUT/steps.log as it goes; a failing step does not stop the next; the steps share one deadline
# (DEADLINE seconds, default 540, inside a 10-minute command), and a step that would start with
# under 30 s left is skipped. $OUT/summary.txt gets one line per step: status and seconds. Three
# files in all (with gsplat_build.log), for remote runners that return only a few files.
#
#   bash benchmarks/gpu/check.sh [STEP ...]   # default: env nvdiffrast render profile joint gsplat tests
#
# Steps, most telling first:
#   env        GPU, driver, Python and package versions, nvcc, gcc
#   nvdiffrast nvdiffrast's CUDA plugin built and loaded (its compile log, on its own)
#   tests      the triton kernels compiled, against the torch backend (test_render_triton.py);
#              the torch backend on CUDA and nvdiffrast against the CPU (the `cuda` tests);
#              every stage on CUDA, torch and triton backends, against the CPU (test_cuda.py)
#   render     benchmarks/render.py: mesh (torch, nvdiffrast) and Gaussians (torch, triton),
#              100k Gaussians at 550 × 802, forward and forward + backward, classic and antialiased
#   profile    benchmarks/render_profile.py: the same render on the hair's path (SH degree 3)
#              under torch's profiler, torch and triton: kernel launches, waits, top kernels
#   joint      benchmarks/joint_step.py: one real-size joint step (1024² textures, 150k
#              Gaussians, 550 × 802, batch 16), triton and torch, float32 and bfloat16 decoders
#   gsplat     gsplat's plain rasterization of the same 100k Gaussians, the speed reference
#              (its CUDA sources compile in the background from the start, on half the cores)
#   synthetic  the default synthetic avatar's three stages on CUDA with the triton backend
#              (benchmarks/synthetic_stages.py): times and quality, beside the workflow's run
#              when its metrics are there
#
# Inputs: the wheels of what the GPU machine lacks in .whl/ (bash benchmarks/gpu/fetch_wheels.sh);
# for joint and synthetic, the synthetic subject's results/data/synthetic,
# results/preprocess/synthetic/hair_rigid.npz and results/train/synthetic/mega/ (face.pt for
# joint; the metrics for synthetic's comparison), made by the workflow beforehand (the head
# model is made here when missing).
# DEVICE=cpu runs the same steps at toy sizes on a CPU, without the wheels: a dry run.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-results/gpu_check}
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-540}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
# Build caches outside the tree; a build killed by a time limit leaves a lock file there that
# would make the next build wait forever: they are removed before each step.
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
    TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions} \
    TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton}
if [ "$DEVICE" != cpu ] || [ -n "${WHEELS:-}" ]; then
    WHEELS=${WHEELS:-.whl}
    if compgen -G "$WHEELS/*.whl" > /dev/null; then
        if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$WHEELS"/*.whl; then
            export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
        else
            echo "installing $WHEELS/*.whl failed: steps that need them will fail" | tee -a "$OUT/summary.txt"
        fi
    fi
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
# nvdiffrast and gsplat compile against torch's headers, which include cuSPARSE's and cuBLAS's:
# where the CUDA toolkit lacks them, the pip packages of the CUDA libraries have them.
CUDA_HOME=${CUDA_HOME:-$($PY -c 'from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or "")' \
    2> /dev/null)}
# torch guesses the toolkit from nvcc's folder, which misses it where nvcc is a wrapper elsewhere.
[ -f "$CUDA_HOME/include/cuda_runtime.h" ] || [ ! -f /usr/local/cuda/include/cuda_runtime.h ] || CUDA_HOME=/usr/local/cuda
export CUDA_HOME
if [ ! -f "$CUDA_HOME/include/cusparse.h" ]; then
    NVIDIA_INCLUDES=$($PY -c 'import glob, os, nvidia
print(":".join(sorted(p for root in nvidia.__path__ for p in glob.glob(os.path.join(root, "*", "include")))))' \
        2> /dev/null)
    export CPATH=${NVIDIA_INCLUDES}${CPATH:+:$CPATH}
fi

# A build killed by an earlier run's time limit leaves a lock file that would make the next build
# of that extension wait forever: removed once here, before any build of this run starts.
find "$TORCH_EXTENSIONS_DIR" -name lock -delete 2> /dev/null

# step NAME LIMIT_SECONDS COMMAND...: run within the limit and the deadline, log to
# $OUT/steps.log, summarise.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    if [ $left -lt 30 ]; then
        echo "$name: SKIPPED, ${left}s left before the deadline" | tee -a "$OUT/summary.txt"
        return
    fi
    [ $limit -le $left ] || limit=$left
    local started=$SECONDS
    echo "== $name: $*" | tee -a "$OUT/steps.log"
    timeout --kill-after=10 "$limit" "$@" >> "$OUT/steps.log" 2>&1
    local status=$?
    local verdict=ok
    [ $status -eq 0 ] || verdict="FAILED (exit $status)"
    [ $status -eq 124 ] || [ $status -eq 137 ] && verdict="TIMED OUT after ${limit}s"
    local command="$*"
    echo "$name: $verdict, $((SECONDS - started)) s: ${command%%$'\n'*}" | tee -a "$OUT/summary.txt"
}

if [ "$DEVICE" = cpu ]; then  # toy sizes: the dry run
    export TRITON_INTERPRET=1
    RENDER=(--device cpu --repeats 1 --gaussians 2000 --gaussian-backends torch)
    PROFILE=(--device cpu --gaussians 300 --width 69 --height 100 --rows 5)
    JOINT=(--device cpu --tex-size 64 --gaussians 600 --batch 1 --width 69 --height 100 --steps 1)
else
    RENDER=(--device cuda --gaussian-backends torch triton --rasterize-modes classic antialiased)
    PROFILE=(--device cuda)
    JOINT=(--device cuda --steps 5)
fi

[ -f results/head_model/summary.json ] || step head_model 60 $PY -m mega head-model --out results/head_model

STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(env nvdiffrast render profile joint gsplat tests)
# gsplat's CUDA sources take minutes to compile and only the gsplat step needs them: on CUDA the
# build starts now, beside the other steps (half the cores), and the gsplat step waits for it.
GSPLAT_BUILD=
if [ "$DEVICE" != cpu ] && [[ " ${STEPS[*]} " == *" gsplat "* ]]; then
    echo "== gsplat_build (in the background)" >> "$OUT/gsplat_build.log"
    MAX_JOBS=$(( (MAX_JOBS + 1) / 2 )) timeout --kill-after=10 $((DEADLINE - 30)) \
        $PY -c "from gsplat.cuda._backend import _C; print('gsplat built:', _C is not None)" \
        >> "$OUT/gsplat_build.log" 2>&1 &
    GSPLAT_BUILD=$!
fi
for name in "${STEPS[@]}"; do
    case $name in
    env)
        step env 60 bash -c "nvidia-smi; nvcc --version | tail -2; gcc --version | head -1; $PY -c '
import importlib.metadata as md, platform, torch
print(\"python\", platform.python_version(), \"torch\", torch.__version__, \"CUDA\", torch.version.cuda,
      torch.cuda.is_available() and torch.cuda.get_device_name())
for name in (\"triton\", \"numpy\", \"scipy\", \"pandas\", \"pillow\", \"kornia\", \"gsplat\", \"diffrp-nvdiffrast\"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, \"missing\")'" ;;
    nvdiffrast)
        step nvdiffrast 150 $PY -c "from mega.render.mesh import _nvdiffrast
_nvdiffrast()
print('nvdiffrast plugin loaded')" ;;
    tests)
        step tests 300 $PY -m pytest -v -p no:cacheprovider --durations=10 tests/test_render_triton.py \
            tests/test_cuda.py tests/test_render_gaussians.py::test_cuda_matches_cpu \
            tests/test_render_mesh.py::test_nvdiffrast_matches_torch_backend ;;
    render)
        step render 150 $PY benchmarks/render.py "${RENDER[@]}" ;;
    profile)
        step profile 120 $PY benchmarks/render_profile.py "${PROFILE[@]}" ;;
    joint)
        step joint 90 $PY benchmarks/joint_step.py "${JOINT[@]}" --gaussian-backend triton
        step joint 90 $PY benchmarks/joint_step.py "${JOINT[@]}" --gaussian-backend triton --decoder-precision bfloat16
        step joint 90 $PY benchmarks/joint_step.py "${JOINT[@]}" --gaussian-backend torch ;;
    gsplat)
        [ -z "$GSPLAT_BUILD" ] || wait "$GSPLAT_BUILD" || echo "gsplat_build: FAILED or cut (exit $?), see gsplat_build.log" \
            | tee -a "$OUT/summary.txt"
        step gsplat 240 $PY benchmarks/render.py --device "$DEVICE" --gaussian-backends gsplat ;;
    synthetic)
        step synthetic 540 $PY benchmarks/synthetic_stages.py --device "$DEVICE" --gaussian-backend triton ;;
    *)
        echo "unknown step '$name' (env nvdiffrast render profile joint gsplat tests synthetic)" | tee -a "$OUT/summary.txt" ;;
    esac
done
cat "$OUT/summary.txt"
