#!/usr/bin/env bash
# One prepared command for an accelerator machine (written for one H200, jax 0.11.x + CUDA).
# NOT YET RUN ON A GPU. From the repo root:  bash bench/gpu.sh
#
# 1. prints jax / jaxlib / device / driver versions;
# 2. runs the kernel tests with the Pallas kernels compiled (ICTL_KERNELS_COMPILED=1);
# 3. runs bench.bench_linear_attention and bench.bench_moba on the GPU;
# 4. the GPT train step (standard Garg config) in bf16: steps/s and MFU against the 989 TFLOP/s spec;
# 5. if `import fla, torch` works, times flash-linear-attention's chunk_gla on comparable shapes.
# Each step has its own timeout (total ≤ 7.7 min); a failing step is logged and the script goes
# on, then exits non-zero. Logs and markdown tables go to $OUT (or /tmp/ictl_gpu when unset).
# Uses the machine's python with PYTHONPATH=. (no venv there); PYTHON overrides the interpreter.
set -euo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
LOG_DIR="${OUT:-/tmp/ictl_gpu}"
mkdir -p "$LOG_DIR"
PY="${PYTHON:-python}"
# Pure-Python packages the machine may lack (jaxtyping, pytest, ...): `bash bench/make_gpu_site.sh`
# here, then carry `.gpu_site` with the device run.
EXTRA=""; [ -d .gpu_site ] && EXTRA="$PWD/.gpu_site:"
export PYTHONPATH="$EXTRA$PWD${PYTHONPATH:+:$PYTHONPATH}"
export ICTL_NO_PROGRESS=1
START=$(date +%s)
FAILED=()

step() { echo; echo "=== $1  (t = $(( $(date +%s) - START )) s)"; }

# run NAME SECONDS CMD...: runs CMD with a timeout, tees its output to $LOG_DIR/NAME.log.
run() {
  local name=$1 secs=$2; shift 2
  local rc=0
  timeout --kill-after=10 "$secs" "$@" 2>&1 | tee "$LOG_DIR/$name.log" || rc=$?
  if [ "$rc" -ne 0 ]; then echo "!!! $name failed (exit $rc)"; FAILED+=("$name:$rc"); fi
}

step "versions"
run versions 30 "$PY" -c '
import jax, jaxlib
print("jax", jax.__version__, "jaxlib", jaxlib.__version__, "backend", jax.default_backend())
for d in jax.devices(): print(" ", d, d.device_kind)
for mod in ("flax", "optax", "orbax.checkpoint", "chex", "pytest", "jaxtyping", "scipy", "ml_collections"):
    try:
        m = __import__(mod, fromlist=["_"]); print(" ", mod, getattr(m, "__version__", "?"))
    except Exception as e: print(" ", mod, "MISSING", e)
'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$LOG_DIR/nvidia-smi.log" || true

step "kernel tests, Pallas compiled"
run pytest_kernels 180 env ICTL_KERNELS_COMPILED=1 "$PY" -m pytest -q --durations=10 tests/kernels

step "bench_linear_attention"
run bench_linear_attention 120 "$PY" -m bench.bench_linear_attention --device gpu --dtype bfloat16 \
  --heads 8 --batch 4 --t-max 65536 --softmax-max-t 65536 --out "$LOG_DIR/benchmarks_kernels_linear_gpu.md"

step "bench_moba"
run bench_moba 90 "$PY" -m bench.bench_moba --device gpu --dense-limit-gb 40 \
  --out "$LOG_DIR/benchmarks_kernels_sparse_gpu.md"

step "bench_gpt (Garg standard config: steps/s and MFU)"
run bench_gpt 90 "$PY" -m bench.bench_gpt --quick --sizes small,standard --dtype bfloat16 --batch 64 \
  --peak-tflops 989 --out "$LOG_DIR/benchmarks_gpt_gpu.md"

step "flash-linear-attention chunk_gla (optional)"
if "$PY" -c 'import fla, torch; assert torch.cuda.is_available()' >/dev/null 2>&1; then
  run fla_chunk_gla 40 "$PY" -c '
import torch, torch.nn.functional as F
from fla.ops.gla import chunk_gla
B, H, K, V = 4, 8, 64, 64  # the shapes of bench_linear_attention --device gpu above
def ms(fn, reps=5):
    fn(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps): fn()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / reps
for T in (1024, 4096, 16384, 65536):
    q, k, v = (torch.randn(B, T, H, d, device="cuda", dtype=torch.bfloat16, requires_grad=True) for d in (K, K, V))
    g = (F.logsigmoid(torch.randn(B, T, H, K, device="cuda")) / 16).to(torch.bfloat16).requires_grad_()
    fwd = lambda: chunk_gla(q=q, k=k, v=v, g=g)[0]
    f = ms(lambda: fwd().detach())
    fb = ms(lambda: fwd().float().sum().backward())
    print(f"fla chunk_gla B={B} T={T} H={H} K=V={K} bf16: fwd {f:.3f} ms, fwd+bwd {fb:.3f} ms")
'
else
  echo "fla/torch not importable (or no CUDA for torch): skipped" | tee "$LOG_DIR/fla_chunk_gla.log"
fi

step "done"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "failed steps: ${FAILED[*]}"
  exit 1
fi
echo "all steps passed; logs in $LOG_DIR"
