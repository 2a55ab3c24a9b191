#!/usr/bin/env bash
# The GPU figures of issue 15 in ONE call of at most 10 minutes on one H200, written under $OUT.
#
#   bench/gpu_check.sh prepare   here, on the CPU machine, once: fills .gpu_check/ (git-ignored):
#                                the wheels the device image lacks (transformers 5.24, PyAV) and a
#                                twin dataset with 640x480 cameras (bench/train_step.py --dataset)
#   bench/gpu_check.sh run       there, through the device tool: carry [".gpu_check"], timeout_s 600
#   bench/gpu_check.sh smoke     here: the same steps with the tiny presets on the CPU (the plumbing)
#
# What `run` measures, each part under its own time limit so that one slow part cannot take the
# others' figures with it:
#   1. bench/inference.py --preset full --compile: π0 chunk latency (3 cameras, 10 steps, bf16):
#      transformers' sample_actions, our fast sampler, the whole predict path, torch.compile +
#      CUDA graph;                                                        goal p50 ≤ 15 ms
#   2. bench/train_step.py --preset full, full fine-tuning: baseline, SF with the cache, SF
#      online;                              goals sf_cache ≤ 1.05 × baseline, ≥ 20 samples/s
#   3. the same with LoRA (rank 16);
#   4. the trainer's FSDP path through accelerate, which the CPU cannot take (accelerate enables
#      FSDP on accelerator devices only): the tiny preset with configs/accelerate/fsdp.yaml on
#      one GPU, 4 steps with a checkpoint at 2, resumed from it, the final policy loaded;
#   5. bench/gpu_check.py: $OUT/gpu.json, the figures against the goals; commit it as
#      docs/results/gpu.json.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
STAGE=.gpu_check
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"

case "$MODE" in
  prepare)
    PY=${PYTHON:-.venv/bin/python}
    mkdir -p "$STAGE/whl"
    grep -qx "/$STAGE/" .git/info/exclude 2>/dev/null || echo "/$STAGE/" >> .git/info/exclude
    # The device image has Python 3.12 with torch, accelerate, peft and an older transformers.
    AV=$("$PY" -c "import av; print(av.__version__)")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$STAGE/whl" "transformers==5.24.0" "av==$AV" || exit 1
    if [ ! -f "$STAGE/dataset/meta/info.json" ]; then
      "$PY" -c "from sf_policy.sim.record_without_ros import record_expert; \
record_expert('$STAGE/dataset', 'lift_pot', episodes=2, width=640, height=480, every=2)" || exit 1
    fi
    du -sh "$STAGE"
    exit 0 ;;
  run)
    PY=${PYTHON:-python3}
    if ls "$STAGE"/whl/*.whl >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$STAGE"/whl/*.whl || exit 1
      export PYTHONPATH=/tmp/site
    fi
    PRESET=full; DATASET=(--dataset "$STAGE/dataset"); LIMIT=(150 200 150); BATCH=(--batch-size 8) ;;
  smoke)
    PY=${PYTHON:-.venv/bin/python}
    PRESET=tiny; DATASET=(); LIMIT=(120 240 240); BATCH=() ;;
  *)
    echo "usage: bench/gpu_check.sh prepare|run|smoke" >&2; exit 2 ;;
esac

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MUJOCO_GL=egl
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-77}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$OUT/nvidia-smi.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'transformers', transformers.__version__)" 2>&1 | tee "$OUT/log.txt"

part() {  # part NAME SECONDS COMMAND...: run under a time limit, its output to the log
  local name=$1 seconds=$2; shift 2
  echo "== $name (limit ${seconds} s): $*" | tee -a "$OUT/log.txt"
  timeout --kill-after 10 "$seconds" "$@" 2>&1 | tee -a "$OUT/log.txt"
  echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$OUT/log.txt"
}
part inference "${LIMIT[0]}" "$PY" bench/inference.py --preset "$PRESET" --compile --repeats 20 \
  --results-dir "$OUT/inference"
part full "${LIMIT[1]}" "$PY" bench/train_step.py --preset "$PRESET" "${DATASET[@]}" --steps 10 "${BATCH[@]}" \
  --results-dir "$OUT/full"
part lora "${LIMIT[2]}" "$PY" bench/train_step.py --preset "$PRESET" "${DATASET[@]}" --steps 10 \
  --set "policy.lora={rank: 16}" --results-dir "$OUT/lora"
fsdp_check() {  # train 4 steps with a checkpoint at 2, resume from it, load the final policy
  local run=/tmp/gpu_check_fsdp config=${FSDP_CONFIG:-sf_policy/train/configs/accelerate/fsdp.yaml}
  local train=("$PY" -m accelerate.commands.launch --config_file "$config" --num_processes 1
               -m sf_policy.cli.train run tiny "data.root=$STAGE/dataset" "output_dir=$run"
               "teacher.cache_root=$run/cache" optim.steps=4 log.save_every=2 log.eval_every=2 log.every=1)
  rm -rf "$run"
  "${train[@]}" --no-progress && "${train[@]}" --no-progress --resume "$run/tiny/checkpoints/step_000002" &&
    "$PY" -c 'import sys; from sf_policy.train.checkpoint import load_policy
print("policy loaded:", sum(p.numel() for p in load_policy(sys.argv[1]).parameters()), "parameters")' "$run/tiny" &&
    tail -n 4 "$run/tiny/metrics.jsonl"
}
if [ "$MODE" = run ] || [ -n "${FSDP_CONFIG:-}" ]; then
  export -f fsdp_check; export PY STAGE
  part fsdp 150 bash -c fsdp_check
fi
"$PY" bench/gpu_check.py "$OUT" | tee -a "$OUT/log.txt"
