"""Rollouts: an Engine samples n completions per prompt; `rollout` adds the template around it.

An Engine is any object with `generate(prompts, n, sampling) -> list[list[Sample]]` (one list of n
samples per prompt). `hf.HFEngine` runs any transformers causal LM on CPU or GPU;
`vllm_engine.VLLMEngine` runs vLLM on a GPU. The trainer only sees this protocol (rollout/base.py:
generate, sync_weights, generator) and `make_engine` (rollout/engines.py), never a particular engine.
"""
from __future__ import annotations

from r1lab.rollout.base import Engine, Sample, Sampling, check_context, to_completion
from r1lab.templates import Template, prompt_tail
from r1lab.types import Completion, Problem

__all__ = ["Engine", "Sample", "Sampling", "check_context", "to_completion", "rollout", "rollout_all"]


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
    from r1lab.eta import Progress

    groups: list[list[Completion]] = []
    for start in Progress(range(0, len(problems), per_batch), desc=desc, unit="batch"):
        groups += rollout(engine, problems[start:start + per_batch], template, tokenizer, n, sampling,
                          tools=tools, max_turns=max_turns)[1]
    return groups
