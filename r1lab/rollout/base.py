"""The Engine protocol and its records: what an engine is given (`Sampling`) and gives back (`Sample`).

Everything that samples sees only this protocol; `check_context` refuses a prompt + max_new_tokens beyond
the model's context before any sampling (HFEngine calls it): beyond it a model meets positions it never
trained on. `to_completion` parses a sample with a template.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from r1lab import R1labError
from r1lab.templates import Template
from r1lab.types import Completion

if TYPE_CHECKING:
    import torch

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
    """What samplers give the trainer: `generate`; `sync_weights()`, which brings the policy's current weights
    into the sampler (the trainer calls it after each update it needs seen: vLLM's copy, a sharded policy's
    full copy); `generator`, the sampler's RNG, saved with checkpoints so a resumed run draws the same
    samples (None where the engine seeds per request, as vLLM)."""
    generator: torch.Generator | None

    def sync_weights(self) -> None: ...

    def generate(self, prompts: list[str] | list[list[int]], n: int, sampling: Sampling, watch=None,
                 seeds=None) -> list[list[Sample]]: ...       # a prompt is text, or token ids taken as they are


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
