#!/usr/bin/env bash
# The GPU path, checked on a machine with a CUDA GPU. From the repository root:
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"   # a CUDA torch
#   .venv/bin/pip install -r bench/requirements.txt            # TRL, the peer
#   .venv/bin/pip install 'vllm>=0.10'                          # optional: the vLLM engine
#   bash bench/gpu_check.sh | tee bench/gpu_check.log
# What it runs: the GRPO and distributed tests on CUDA, then the GRPO bench (bf16) with r1lab's hf
# engine and, when vLLM imports, with the vLLM engine. Record the printed figures in README ("GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || { echo "no nvidia-smi: not a GPU machine"; exit 1; }
$PY - <<'PY' || exit 1
import torch
assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA GPU (a CPU wheel?)"
print("torch", torch.__version__, "on", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
PY
status=0
echo "== tests on CUDA (GRPO, engines, training) =="
$PY -m pytest -q tests/test_grpo.py tests/test_engines.py tests/test_sft.py tests/test_sequences.py || status=1
echo "== GRPO bench, bf16, hf engine =="
$PY bench/grpo_vs_trl.py --steps 6 --mixed-precision bf16 || status=1
if $PY -c "import vllm" 2>/dev/null; then
  echo "== GRPO bench, bf16, vLLM engine =="
  $PY bench/grpo_vs_trl.py --steps 6 --mixed-precision bf16 --engine vllm || status=1
else
  echo "== vLLM not installed: the vLLM engine was not run =="
fi
exit $status
