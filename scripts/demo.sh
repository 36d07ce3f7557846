#!/usr/bin/env bash
# The quick start, end to end on the embedded default (smollm2-135m) and the arithmetic task:
# cold-start data -> SFT -> GRPO -> held-out eval of base, cold start and GRPO -> report.
# ~12 minutes on a 2-core CPU. Re-running resumes: finished stages are skipped.
set -euo pipefail
R1LAB=${R1LAB:-.venv/bin/r1lab}
RUN=${RUN:-runs/demo}
mkdir -p "$RUN"
[ -f "$RUN/cold.jsonl" ] || $R1LAB data cold-start --task arithmetic --n 128 --template chat --out "$RUN/cold.jsonl"
[ -f "$RUN/sft/checkpoint/config.json" ] || $R1LAB train sft --model smollm2-135m --data "$RUN/cold.jsonl" \
    --template chat --batch-size 8 --micro-batch-size 8 --learning-rate 3e-5 --mixed-precision bf16 --out "$RUN/sft"
resume=""; [ -d "$RUN/grpo" ] && resume="--resume"
$R1LAB train grpo $resume --model "$RUN/sft/checkpoint" --task arithmetic --template chat --rewards accuracy,format \
    --steps 20 --prompts-per-step 4 --samples-per-prompt 4 --micro-batch-size 16 --max-new-tokens 96 \
    --learning-rate 1e-5 --beta 0.0 --mixed-precision bf16 --save-every 5 --out "$RUN/grpo"
$R1LAB eval smollm2-135m "$RUN/sft/checkpoint" "$RUN/grpo/checkpoint" --task arithmetic --template chat \
    --samples 4 --problems 40 --max-new-tokens 96 --out "$RUN/eval"
$R1LAB report "$RUN"
