"""The data that flows between tasks, templates, engines, rewards and losses.

Problem: what a task gives. Completion: one sampled reply, parsed by its template.
Plain dataclasses so that they serialise to jsonl rows unchanged (`dataclasses.asdict`).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    id: str                       # stable identifier, unique within a task and split
    prompt: str                   # the question, without any template around it
    answer: str | None            # ground truth as text; None where a task has none (majority-vote rewards)
    meta: dict = field(default_factory=dict)   # task-specific data (e.g. the reasoning-gym entry for its scorer)
    steps: tuple[str, ...] = ()   # optional reference solution, one step per item (cold start, goal-directed)


@dataclass
class Completion:
    text: str                      # the generated text (stop string included, special tokens removed)
    template: str                  # name of the template that rendered the prompt and parses the text
    reasoning: str | None = None   # the reasoning part, as parsed by the template
    answer: str | None = None      # the answer part, as parsed by the template; None if there is none
    token_ids: list[int] = field(default_factory=list)   # (T,) generated token ids, EOS included if sampled
    logprobs: list[float] = field(default_factory=list)  # (T,) log-prob of each token under the sampling policy
    finish_reason: str = "stop"    # "stop" (EOS or a stop string) or "length" (hit max_new_tokens)
    prompt_tail: str = ""          # the prompt's end that text continues ("<think>\n" where the chat template
                                   # opens the reasoning; templates.prompt_tail): parsed and judged with text
    loss_mask: list[int] = field(default_factory=list)   # (T,) 1 where the model wrote the token, 0 for a tool's
                                   # output inside an episode (r1lab/rollout/episodes.py); empty: all 1
    tool_calls: list[dict] = field(default_factory=list)  # an episode's calls: {name, arguments, content, error}
    turns: int = 1                 # model turns in the episode (1 + the turns that followed tool results)

    @property
    def model_tokens(self) -> int:
        """Tokens the model wrote (tool outputs inside an episode excluded)."""
        return sum(self.loss_mask) if self.loss_mask else len(self.token_ids)

    @property
    def failed_calls(self) -> int:
        """Tool calls of the episode that failed (unknown tool, bad call, the tool raised or timed out)."""
        return sum(call["error"] for call in self.tool_calls)
