"""A vLLM rollout engine behind the Engine protocol (`pip install 'r1lab[vllm]'`, Linux + CUDA).

    r1lab train grpo --engine vllm --model ... --vllm-gpu-memory 0.3

Colocated with the trainer (as TRL's "colocate" mode): each training process holds one vLLM instance
on its own GPU (`distributed_executor_backend="external_launcher"`, which runs vLLM's engine inside this
process: `VLLM_ENABLE_V1_MULTIPROCESSING=0`, as vLLM requires for it). Before every `generate` - that is,
after each optimiser update - the policy's current weights are handed to vLLM's own weight loader
(`model.load_weights`, the one that reads checkpoints: it maps HF names onto vLLM's fused layers and
skips a tied head) through vLLM's supported hook `LLM.apply_model`, which runs a function on the model
inside the worker; then the prefix cache is reset, so samples always come from pi_old. (Older r1lab
reached into `llm.llm_engine.model_executor.driver_worker.model_runner.model`, an attribute chain vLLM
keeps only for in-process engines "for v0 compatibility" and that changes with its internals.)
The trainer never imports vLLM; `make_engine` does.

Sleep mode, where vLLM offers it (CUDA: `current_platform.is_sleep_mode_available()`): vLLM sleeps while
the trainer trains, giving back its weights and KV cache memory (`sleep(level=2)`: both discarded, not
copied to the CPU, since every rollout pushes the weights anew); before a rollout it wakes its weights,
takes the new ones, then wakes its KV cache (TRL's order). Always on where available: it costs a
re-allocation per step and gives the training passes the GPU memory vLLM held.

Same contract as HFEngine: token ids with EOS, stop strings kept in the text and, with `seeds`, one
random stream per (prompt, sample). One difference, which vLLM does not let us remove: the sampler's
log-probs. vLLM offers `raw_logprobs` (before temperature) and `processed_logprobs` (after temperature
AND top-k/top-p); the trainer's are after temperature, before top-p (HFEngine's). This engine asks for
`processed_logprobs` (TRL's choice too): exact with top_p = 1 (GRPO's default); with top_p < 1 they are
renormalised over the nucleus, so GRPO's truncated importance weights (and the logged sampler mismatch)
are biased on nucleus tokens - a warning says so once. Train with top_p 1 on this engine, or set
importance_sampling off.
Not supported: `watch` (streaming; serve with the hf engine) and LoRA policies (merge first).
Tested here only against a stand-in with the current vLLM API's shape (tests/test_engines.py); the real
engine runs in bench/gpu_check.sh; see README, "GPU".
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import warnings
import weakref
from pathlib import Path

from r1lab import R1labError
from r1lab.rollout.base import Sample, Sampling


class VLLMEngine:
    def __init__(self, model, tokenizer, gpu_memory_utilization: float = 0.3, max_model_len: int | None = None, seed: int = 0):
        try:
            import vllm
        except ImportError:
            raise R1labError("--engine vllm needs vLLM: pip install 'r1lab[vllm]' (Linux with a CUDA GPU)") from None
        if hasattr(model, "peft_config"):
            raise R1labError("--engine vllm does not take LoRA policies yet; use --engine hf or lora_rank 0")
        self.vllm, self.policy, self.tokenizer = vllm, model, tokenizer
        self.generator = None                                   # vLLM seeds each request; no RNG state to save
        folder = Path(getattr(model, "name_or_path", "") or ".")
        if not (folder / "config.json").is_file():            # e.g. tiny-random: give vLLM a folder to start from
            folder = Path(tempfile.mkdtemp(prefix="r1lab-vllm-"))
            weakref.finalize(self, shutil.rmtree, folder, True)
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                            ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port()))):
            os.environ.setdefault(name, value)                  # external_launcher expects a torch.distributed env
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"      # the engine in this process (external_launcher needs it)
        context = getattr(model.config, "max_position_embeddings", None) or 4096
        max_model_len = max_model_len or min(context, 8192)
        self.sleeps, self.warned = sleep_mode_available(), False
        self.llm = vllm.LLM(model=str(folder), dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            distributed_executor_backend="external_launcher", seed=seed, enable_sleep_mode=self.sleeps,
                            logprobs_mode="processed_logprobs", enable_prefix_caching=True)
        if self.sleeps:
            self.llm.sleep(level=2)                             # the GPU is the trainer's until the first rollout

    def sync_weights(self) -> None:
        """Load the policy's current weights into vLLM's model with vLLM's own loader (HF names), in the worker."""
        weights = list(self.policy.state_dict().items())        # references, no copies
        self.llm.apply_model(lambda model: model.load_weights(weights))
        self.llm.reset_prefix_cache()

    def generate(self, prompts: list[str], n: int, sampling: Sampling, watch=None, seeds=None) -> list[list[Sample]]:
        if watch is not None:
            raise R1labError("the vllm engine does not stream; serve with the hf engine")
        if sampling.top_p < 1 and sampling.temperature > 0 and not self.warned:
            self.warned = True
            warnings.warn(f"vllm engine with top_p {sampling.top_p}: its log-probs are taken after top-p, the "
                          "trainer's before it, so the importance weights are biased (r1lab/rollout/vllm_engine.py)")
        requests, params = [], []
        for i, prompt in enumerate(prompts):
            ids = prompt if isinstance(prompt, list) else self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            for j in range(n):
                seed = None if seeds is None else (seeds[i] * 1_000_003 + j) % 2**63
                requests.append({"prompt_token_ids": ids})
                params.append(self.vllm.SamplingParams(
                    n=1, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens,
                    stop=list(sampling.stop) or None, include_stop_str_in_output=True, logprobs=0, seed=seed))
        if self.sleeps:
            self.llm.wake_up(tags=["weights"])
        self.sync_weights()
        if self.sleeps:
            self.llm.wake_up(tags=["kv_cache"])
        try:
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        finally:
            if self.sleeps:
                self.llm.sleep(level=2)                          # back to the trainer
        samples = [to_sample(request.outputs[0]) for request in outputs]
        return [samples[i * n:(i + 1) * n] for i in range(len(prompts))]


def sleep_mode_available() -> bool:
    """Whether vLLM can sleep on this platform (it needs its CUDA memory allocator)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(current_platform.is_sleep_mode_available())


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
