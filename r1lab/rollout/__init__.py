"""Rollouts: an Engine samples n completions per prompt; `rollout` adds the template around it.

An Engine is any object with `generate(prompts, n, sampling) -> list[list[Sample]]` (one list of n
samples per prompt). `hf.HFEngine` runs any transformers causal LM on CPU or GPU;
`vllm_engine.VLLMEngine` runs vLLM on a GPU. The trainer only sees this protocol and `make_engine`,
never a particular engine. `check_context` refuses a prompt + max_new_tokens beyond the model's
context before any sampling (HFEngine calls it): beyond it a model meets positions it never trained on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from r1lab import R1labError
from r1lab.templates import Template, prompt_tail
from r1lab.types import Completion, Problem


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0       # 0 means greedy
    top_p: float = 1.0             # nucleus sampling mass; 1 disables it
    max_new_tokens: int = 256      # tokens per completion, EOS included
    stop: tuple[str, ...] = field(default_factory=tuple)   # stop strings, kept in the output

    def __post_init__(self):
        """The last guard before any sampling (the CLI, configs and the API check first, naming their option)."""
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature < float("inf")):
            raise R1labError(f"sampling temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise R1labError(f"sampling top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise R1labError(f"sampling max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")


@dataclass
class Sample:
    token_ids: list[int]     # (T,) generated ids
    logprobs: list[float]    # (T,) log-prob of each id under softmax(logits / temperature), before top-p
    text: str                # decoded ids, special tokens removed
    finish_reason: str       # "stop" (EOS or stop string), "length", or "cancelled" (dropped by a watcher)


class Engine(Protocol):
    def generate(self, prompts: list[str] | list[list[int]], n: int, sampling: Sampling, watch=None,
                 seeds=None) -> list[list[Sample]]: ...       # a prompt is text, or token ids taken as they are


ENGINES = ("hf", "vllm")


def make_engine(name: str, model, tokenizer, seed: int = 0, max_batch: int = 64, decode_dtype: str | None = None,
                gpu_memory_utilization: float = 0.3, own_copy: bool = False) -> Engine:
    """The named engine sampling from `model` (whose weights it follows as training updates them;
    `own_copy`: the hf engine's for a model about to be sharded, see HFEngine)."""
    if name == "hf":
        from r1lab.rollout.hf import HFEngine
        return HFEngine(model, tokenizer, max_batch=max_batch, seed=seed, decode_dtype=decode_dtype, own_copy=own_copy)
    if name == "vllm":
        from r1lab.rollout.vllm_engine import VLLMEngine
        return VLLMEngine(model, tokenizer, gpu_memory_utilization=gpu_memory_utilization, seed=seed)
    raise R1labError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINES)}")


def check_context(model, prompt_lengths: list[int], max_new_tokens: int) -> None:
    """Refuse, before any sampling, a prompt whose tokens plus `max_new_tokens` exceed the model's
    context (`config.max_position_embeddings`; models that do not declare one are not checked)."""
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    longest = max(prompt_lengths, default=0)
    if context is not None and longest + max_new_tokens > context:
        raise R1labError(f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} = {longest + max_new_tokens} "
                         f"exceeds the model's context (max_position_embeddings {context}); "
                         "lower max_new_tokens or shorten the prompt")


def to_completion(sample: Sample, template: Template, tail: str = "") -> Completion:
    """A parsed completion; `tail` is the prompt's end the reply continues (`<think>` where the chat
    template opens the reasoning), read together with the reply by the parser and the format reward."""
    reasoning, answer = template.parse(tail + sample.text)
    return Completion(text=sample.text, template=template.name, reasoning=reasoning, answer=answer,
                      token_ids=sample.token_ids, logprobs=sample.logprobs, finish_reason=sample.finish_reason,
                      prompt_tail=tail)


def rollout(engine: Engine, problems: list[Problem], template: Template, tokenizer, n: int,
            sampling: Sampling, seeds: list[int] | None = None, tools=(), max_turns: int = 4
            ) -> tuple[list[str], list[list[Completion]]]:
    """Render each problem, sample n completions for it, parse them: (prompts, completions per problem).
    `seeds`, one per problem, make each problem's samples independent of the batch it is in. With `tools`
    (r1lab/tools.py) each completion is an episode of up to `max_turns` model turns (rollout/episodes.py)."""
    if tools:
        from r1lab.rollout.episodes import rollout_with_tools
        return rollout_with_tools(engine, problems, template, tokenizer, n, sampling, tools, max_turns, seeds)
    prompts = [template.render(p.prompt, tokenizer) for p in problems]
    sampling = Sampling(sampling.temperature, sampling.top_p, sampling.max_new_tokens,
                        tuple(dict.fromkeys(sampling.stop + template.stop)))
    groups = engine.generate(prompts, n, sampling, seeds=seeds) if seeds is not None else engine.generate(prompts, n, sampling)
    return prompts, [[to_completion(s, template, prompt_tail(prompt)) for s in group]
                     for prompt, group in zip(prompts, groups)]


def rollout_all(engine: Engine, problems: list[Problem], template: Template, tokenizer, n: int, sampling: Sampling,
                per_batch: int = 8, desc: str = "sampling", tools=(), max_turns: int = 4) -> list[list[Completion]]:
    """`rollout` over many problems, `per_batch` problems at a time, with a progress bar."""
    from tqdm import tqdm

    groups: list[list[Completion]] = []
    for start in tqdm(range(0, len(problems), per_batch), desc=desc, unit="batch"):
        groups += rollout(engine, problems[start:start + per_batch], template, tokenizer, n, sampling,
                          tools=tools, max_turns=max_turns)[1]
    return groups
