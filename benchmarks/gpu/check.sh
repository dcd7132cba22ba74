#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md ("On a GPU") in one command, from the repository root of a
# machine with a CUDA GPU. Every step has its own time limit and writes its log as it goes; a
# failing step does not stop the next. $OUT/summary.txt gets one line per step: status, seconds.
#
#   bash benchmarks/gpu/check.sh [STEP ...]     # default: env tests render joint gsplat
#
# Steps, most telling first:
#   env        GPU, driver, Python, torch, CUDA, triton
#   tests      the triton kernels compiled, against the torch backend (test_render_triton.py);
#              the torch backend on CUDA and nvdiffrast against the CPU (the `cuda` tests);
#              every stage on CUDA, torch and triton backends, against the CPU (test_cuda.py)
#   render     benchmarks/render.py: mesh (torch, nvdiffrast) and Gaussians (torch, triton),
#              100k Gaussians at 550 × 802, forward and forward + backward
#   joint      benchmarks/joint_step.py: one real-size joint step (1024² textures, 150k
#              Gaussians, 550 × 802, batch 16), triton and torch, float32 and bfloat16 decoders
#   gsplat     gsplat's plain rasterization of the same 100k Gaussians, the speed reference
#              (compiles gsplat's CUDA sources first: minutes)
#   synthetic  the default synthetic avatar's three stages on CUDA with the triton backend
#              (benchmarks/synthetic_stages.py): times and quality beside the CPU's run
#
# Inputs: the wheels of what the GPU machine lacks in .whl/ (bash benchmarks/gpu/fetch_wheels.sh);
# for joint and synthetic, the synthetic subject's results/data/synthetic,
# results/preprocess/synthetic/hair_rigid.npz and (joint) results/train/synthetic/mega/face.pt,
# made by the workflow beforehand (the head model is made here when missing).
# DEVICE=cpu runs the same steps at toy sizes on a CPU: a dry run of this script.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-results/gpu_check}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl || { echo "installing $WHEELS/*.whl failed" | tee -a "$OUT/summary.txt"; exit 1; }
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
# nvdiffrast and gsplat compile against torch's headers, which include cuSPARSE's and cuBLAS's:
# where the CUDA toolkit lacks them, the pip packages of the CUDA libraries have them.
NVIDIA_INCLUDES=$($PY -c 'import glob, os, nvidia
print(":".join(sorted(p for root in nvidia.__path__ for p in glob.glob(os.path.join(root, "*", "include")))))' \
    2> /dev/null)
export CPATH=${NVIDIA_INCLUDES}${CPATH:+:$CPATH}

# step NAME LIMIT_SECONDS COMMAND...: run, log to $OUT/NAME.log, summarise.
step() {
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS
    echo "== $name: $*" | tee -a "$OUT/$name.log"
    timeout --kill-after=10 "$limit" "$@" >> "$OUT/$name.log" 2>&1
    local status=$?
    local verdict=ok
    [ $status -eq 0 ] || verdict="FAILED (exit $status)"
    [ $status -eq 124 ] && verdict="TIMED OUT after ${limit}s"
    echo "$name: $verdict, $((SECONDS - started)) s: $*" | tee -a "$OUT/summary.txt"
}

if [ "$DEVICE" = cpu ]; then  # toy sizes: the dry run
    export TRITON_INTERPRET=1
    RENDER=(--device cpu --repeats 1 --gaussians 2000 --gaussian-backends torch)
    JOINT=(--device cpu --tex-size 64 --gaussians 600 --batch 1 --width 69 --height 100 --steps 1)
else
    RENDER=(--device cuda --gaussian-backends torch triton)
    JOINT=(--device cuda --steps 5)
fi

[ -f results/head_model/summary.json ] || step head_model 120 $PY -m mega head-model --out results/head_model

STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(env tests render joint gsplat)
for name in "${STEPS[@]}"; do
    case $name in
    env)
        step env 60 bash -c "nvidia-smi; $PY -c 'import platform, torch, triton; print(platform.python_version(), \
torch.__version__, torch.version.cuda, triton.__version__, \
torch.cuda.is_available() and torch.cuda.get_device_name())'" ;;
    tests)
        step tests 300 $PY -m pytest -q -p no:cacheprovider tests/test_render_triton.py tests/test_cuda.py \
            tests/test_render_gaussians.py::test_cuda_matches_cpu \
            tests/test_render_mesh.py::test_nvdiffrast_matches_torch_backend ;;
    render)
        step render 240 $PY benchmarks/render.py "${RENDER[@]}" ;;
    joint)
        step joint 120 $PY benchmarks/joint_step.py "${JOINT[@]}" --gaussian-backend triton
        step joint 120 $PY benchmarks/joint_step.py "${JOINT[@]}" --gaussian-backend triton --decoder-precision bfloat16
        step joint 120 $PY benchmarks/joint_step.py "${JOINT[@]}" --gaussian-backend torch ;;
    gsplat)
        step gsplat 420 $PY benchmarks/render.py --device "$DEVICE" --gaussian-backends gsplat ;;
    synthetic)
        step synthetic 600 $PY benchmarks/synthetic_stages.py --device "$DEVICE" --gaussian-backend triton ;;
    *)
        echo "unknown step '$name' (env tests render joint gsplat synthetic)" | tee -a "$OUT/summary.txt" ;;
    esac
done
cat "$OUT/summary.txt"
