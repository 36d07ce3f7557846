"""A vLLM rollout engine behind the Engine protocol (`pip install 'r1lab[vllm]'`, Linux + CUDA).

    r1lab train grpo --engine vllm --model ... --vllm-gpu-memory 0.3

Colocated with the trainer (as TRL's "colocate" mode): each training process holds one vLLM instance
on its own GPU (`distributed_executor_backend="external_launcher"`). Before every `generate` - that is,
after each optimiser update - the policy's current weights are loaded into vLLM and its prefix cache
is reset, so samples always come from pi_old. The trainer never imports vLLM; `make_engine` does.

Same contract as HFEngine: token ids with EOS, stop strings kept in the text and, with `seeds`, one
random stream per (prompt, sample). One difference: vLLM's `processed_logprobs` are taken after
temperature AND top-p, where HFEngine reports them before top-p. They enter the loss through GRPO's
truncated importance weights, so with top_p < 1 those weights (and the logged sampler mismatch) are biased
upward on nucleus tokens: train with top_p 1 on this engine (GRPO's default), or set importance_sampling off.
Not supported: `watch` (streaming; serve with the hf engine) and LoRA policies (merge first).
Tested here only against a stand-in for vLLM (tests/test_engines.py); see README, "GPU".
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import weakref
from pathlib import Path

from r1lab import R1labError
from r1lab.rollout import Sample, Sampling


class VLLMEngine:
    def __init__(self, model, tokenizer, gpu_memory_utilization: float = 0.3, max_model_len: int | None = None, seed: int = 0):
        try:
            import vllm
        except ImportError:
            raise R1labError("--engine vllm needs vLLM: pip install 'r1lab[vllm]' (Linux with a CUDA GPU)") from None
        if hasattr(model, "peft_config"):
            raise R1labError("--engine vllm does not take LoRA policies yet; use --engine hf or lora_rank 0")
        self.vllm, self.policy, self.tokenizer = vllm, model, tokenizer
        folder = Path(getattr(model, "name_or_path", "") or ".")
        if not (folder / "config.json").is_file():            # e.g. tiny-random: give vLLM a folder to start from
            folder = Path(tempfile.mkdtemp(prefix="r1lab-vllm-"))
            weakref.finalize(self, shutil.rmtree, folder, True)
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                            ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port()))):
            os.environ.setdefault(name, value)                  # external_launcher expects a torch.distributed env
        context = getattr(model.config, "max_position_embeddings", None) or 4096
        max_model_len = max_model_len or min(context, 8192)
        self.llm = vllm.LLM(model=str(folder), dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            distributed_executor_backend="external_launcher", seed=seed,
                            logprobs_mode="processed_logprobs", enable_prefix_caching=True)

    def push_weights(self) -> None:
        """Load the policy's current weights into vLLM (names as in the HF checkpoint)."""
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, tensor in self.policy.state_dict().items():
            runner.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()

    def generate(self, prompts: list[str], n: int, sampling: Sampling, watch=None, seeds=None) -> list[list[Sample]]:
        if watch is not None:
            raise R1labError("the vllm engine does not stream; serve with the hf engine")
        self.push_weights()
        requests, params = [], []
        for i, prompt in enumerate(prompts):
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            for j in range(n):
                seed = None if seeds is None else (seeds[i] * 1_000_003 + j) % 2**63
                requests.append({"prompt_token_ids": ids})
                params.append(self.vllm.SamplingParams(
                    n=1, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                    stop=list(sampling.stop) or None, include_stop_str_in_output=True, logprobs=0, seed=seed))
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        samples = [to_sample(request.outputs[0]) for request in outputs]
        return [samples[i * n:(i + 1) * n] for i in range(len(prompts))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_sample(output) -> Sample:
    """A vLLM CompletionOutput as a Sample (the sampled token's log-prob at each position)."""
    token_ids = list(output.token_ids)
    logprobs = [position[token].logprob for position, token in zip(output.logprobs, token_ids)]
    finish = "length" if output.finish_reason == "length" else "stop"
    return Sample(token_ids, logprobs, output.text, finish)
