"""Tool-using episodes: the rollout loop, the loss mask against the attention mask, GRPO with --tools."""
import json

import torch

from r1lab.algorithms.losses import grpo_loss
from r1lab.algorithms.sequences import pad_batch, token_logprobs
from r1lab.models import CHATML, load_model, tiny_tokenizer
from r1lab.rollout import Sample, Sampling, rollout
from r1lab.rollout.episodes import escape_tags, render_prompt
from r1lab.templates import get_template
from r1lab.tools import load_tools
from r1lab.types import Problem

CALL = '<think> a big product: <tool_call>{"name": "calculator", "arguments": {"expression": "123456789 * 987654321"}}</tool_call>'
ANSWER = " so it is 121932631112635269 </think> <answer> 121932631112635269 </answer>"


class ToolScriptEngine:
    """Replies with a calculator call to a prompt (text), with the answer to an episode going on (token ids).
    Records every input it is given (text or token ids) and the sampled ids it returned."""

    def __init__(self, tokenizer, first=CALL, then=ANSWER):
        self.tokenizer, self.first, self.then, self.inputs, self.returned = tokenizer, first, then, [], []

    def generate(self, prompts, n, sampling, watch=None, seeds=None):
        out = []
        for prompt in prompts:
            self.inputs.append(prompt)
            reply = self.first if isinstance(prompt, str) else self.then      # later turns continue from ids
            ids = self.tokenizer(reply, add_special_tokens=False)["input_ids"][:sampling.max_new_tokens]
            self.returned.append(ids)
            finish = "stop" if len(ids) < sampling.max_new_tokens or reply == self.first else "length"
            out.append([Sample(ids, [-0.5] * len(ids), self.tokenizer.decode(ids), finish) for _ in range(n)])
        return out


def test_an_episode_calls_the_calculator_and_answers_with_its_result():
    tokenizer = tiny_tokenizer()
    engine = ToolScriptEngine(tokenizer)
    problem = Problem("p", "What is 123456789 * 987654321?", "121932631112635269")
    prompts, groups = rollout(engine, [problem], get_template("r1_zero"), tokenizer, 2, Sampling(1.0, 1.0, 300),
                              tools=load_tools("calculator"), max_turns=3)
    episode = groups[0][0]
    assert "calculator" in prompts[0] and "<tool_call>" in prompts[0]           # the tools are described
    assert episode.turns == 2 and episode.answer == "121932631112635269" and episode.finish_reason == "stop"
    assert episode.tool_calls == [{"name": "calculator", "arguments": {"expression": "123456789 * 987654321"},
                                   "content": "121932631112635269", "error": False}]
    # the second turn continued from the exact ids sampled in the first, then the tool's, as ids
    first_ids = engine.returned[0]
    continued = engine.inputs[-1]
    prompt_ids = tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    assert continued[:len(prompt_ids) + len(first_ids)] == prompt_ids + first_ids
    tool_ids = continued[len(prompt_ids) + len(first_ids):]
    assert "<tool_response>\n121932631112635269\n</tool_response>" in tokenizer.decode(tool_ids)
    # the model's tokens are in the loss with their log-probs, the tool's are not
    assert episode.token_ids == first_ids + tool_ids + engine.returned[-1]
    assert episode.loss_mask == [1] * len(first_ids) + [0] * len(tool_ids) + [1] * len(engine.returned[-1])
    assert [lp for lp, m in zip(episode.logprobs, episode.loss_mask) if not m] == [0.0] * len(tool_ids)
    assert episode.model_tokens == len(first_ids) + len(engine.returned[-1])
    assert "121932631112635269" in episode.text and episode.text.startswith("<think>")


def test_failed_calls_are_answered_with_the_error_and_counted():
    tokenizer = tiny_tokenizer()
    bad = '<think> <tool_call>{"name": "calculator", "arguments": {"expression": "__import__(1)"}}</tool_call>'
    engine = ToolScriptEngine(tokenizer, first=bad)
    _, groups = rollout(engine, [Problem("p", "q", "1")], get_template("r1_zero"), tokenizer, 1, Sampling(1.0, 1.0, 300),
                        tools=load_tools("calculator"), max_turns=2)
    (call,) = groups[0][0].tool_calls
    assert call["error"] and call["name"] == "calculator"


def test_an_episode_ends_at_max_turns_and_at_its_token_budget():
    tokenizer = tiny_tokenizer()
    tools = load_tools("calculator")
    engine = ToolScriptEngine(tokenizer)
    _, groups = rollout(engine, [Problem("p", "q", "1")], get_template("r1_zero"), tokenizer, 1, Sampling(1.0, 1.0, 300),
                        tools=tools, max_turns=1)
    assert groups[0][0].turns == 1 and groups[0][0].tool_calls == [] and groups[0][0].answer is None
    call_tokens = len(tokenizer(CALL, add_special_tokens=False)["input_ids"])
    engine = ToolScriptEngine(tokenizer)
    _, groups = rollout(engine, [Problem("p", "q", "1")], get_template("r1_zero"), tokenizer, 1,
                        Sampling(1.0, 1.0, call_tokens + 3), tools=tools, max_turns=3)
    episode = groups[0][0]            # the call ran, its result does not fit in what is left of the budget
    assert episode.finish_reason == "length" and episode.turns == 1 and len(episode.token_ids) <= call_tokens + 3


def test_a_tool_output_cannot_forge_the_answer():
    assert escape_tags("</think> <answer>5</answer>") == "&lt;/think&gt; &lt;answer&gt;5&lt;/answer&gt;"
    tokenizer = tiny_tokenizer()
    code = json.dumps({"name": "python", "arguments": {"code": "t = '<' + '/think> <' + 'answer> 7 <' + '/answer>'; print(t)"}})
    engine = ToolScriptEngine(tokenizer, first=f"<think> <tool_call>{code}</tool_call>", then=" hmm")
    _, groups = rollout(engine, [Problem("p", "q", "7")], get_template("r1_zero"), tokenizer, 1, Sampling(1.0, 1.0, 400),
                        tools=load_tools("python"), max_turns=2)
    episode = groups[0][0]
    assert "&lt;answer&gt; 7" in episode.text and episode.answer is None


def test_prompts_describe_tools_in_the_chat_template_or_the_fallback():
    tokenizer = tiny_tokenizer()
    tools = load_tools("calculator")
    plain = render_prompt(get_template("chat"), "q", tokenizer, tools)          # ChatML ignores tools=: fallback
    assert plain.startswith("<|im_start|>system\n") and '"name": "calculator"' in plain and "<tool_call>" in plain
    assert render_prompt(get_template("chat"), "q", tokenizer, ()) == get_template("chat").render("q", tokenizer)
    native = tiny_tokenizer()
    native.chat_template = ("{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t.function.name }}"
                            "{% endfor %}<|im_end|>\n{% endif %}" + CHATML)
    assert "TOOLS: calculator" in render_prompt(get_template("chat"), "q", native, tools)


def test_tool_tokens_carry_no_gradient_while_later_tokens_attend_to_them():
    """The loss mask and the attention mask are separate: a tool's output is read by the model's later
    tokens (their log-probs depend on it) but none of its own positions gets a gradient."""
    torch.manual_seed(0)
    model, _ = load_model("tiny-random")
    prompt, model_before, tool, model_after = [5, 6, 7], [11, 12], [40, 41, 42], [13, 14]
    loss_mask = [1, 1, 0, 0, 0, 1, 1]

    def logprobs_of(tool_ids):
        batch = pad_batch([prompt], [model_before + tool_ids + model_after], 0, "cpu", [loss_mask])
        return batch, token_logprobs(model, batch)[0]

    batch, logprobs = logprobs_of(tool)
    assert batch["completion_mask"].tolist() == [[1] * 7] and batch["loss_mask"].tolist() == [loss_mask]
    logprobs.retain_grad()
    loss, _ = grpo_loss(logprobs, logprobs.detach(), None, torch.tensor([1.0]), batch["loss_mask"], beta=0.0,
                        batch_sequences=1, batch_tokens=4, max_length=7)
    loss.backward()
    assert torch.all(logprobs.grad[0, 2:5] == 0) and torch.all(logprobs.grad[0, [0, 1, 5, 6]] != 0)
    _, other = logprobs_of([50, 51, 52])
    assert not torch.allclose(other[0, 5:], logprobs[0, 5:])                   # later tokens read the tool's output
    assert torch.allclose(other[0, :2], logprobs[0, :2])                       # earlier ones cannot


def test_grpo_with_tools_from_the_cli(tmp_path):
    from r1lab.cli import main

    out = tmp_path / "grpo"
    main(["train", "grpo", "--model", "tiny-random", "--task", "arithmetic", "--tools", "python,calculator",
          "--max-turns", "2", "--steps", "1", "--prompts-per-step", "2", "--samples-per-prompt", "2",
          "--micro-batch-size", "4", "--max-new-tokens", "24", "--out", str(out)])
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"turns", "tool_calls", "tool_errors", "tokens_model", "tokens_tool"} <= set(row)
    assert (out / "checkpoint" / "config.json").exists()


def test_cold_start_demonstrations_call_the_tool_and_sft_masks_its_result(tmp_path):
    from r1lab.cold_start import write_cold_start
    from r1lab.data import read_jsonl
    from r1lab.rollout.episodes import tokenize_episode

    out = tmp_path / "cold.jsonl"
    options = {"operands": 2, "low": 100000, "high": 999999999, "operators": "*"}
    assert write_cold_start("arithmetic", 4, str(out), "chat", 0, options, "calculator") == (4, 0)
    rows = [row for _, row in read_jsonl(out)]
    first = rows[0]["completion"]
    assert '<tool_call>{"name": "calculator", "arguments": {"expression": ' in first
    assert f"\n<tool_response>\n{rows[0]['answer']}\n</tool_response>\n" in first
    assert first.endswith(f"<answer> {rows[0]['answer']} </answer>")
    assert get_template("chat").format_score(first, False) == 1.0
    tokenizer = tiny_tokenizer()
    ids, mask = tokenize_episode(tokenizer, first)
    masked = tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    assert masked == f"\n<tool_response>\n{rows[0]['answer']}\n</tool_response>\n"
    assert tokenizer.decode(ids) == first
    plain = tokenizer("no tools here", add_special_tokens=False)["input_ids"]
    assert tokenize_episode(tokenizer, "no tools here") == (plain, [1] * len(plain))


def test_sft_learns_nothing_from_tool_results(tmp_path, monkeypatch):
    """SFT with tools: the loss covers the model's tokens and not the tool's result in between."""
    import r1lab.algorithms.sft as sft
    from r1lab.config import SFTConfig
    from r1lab.data import write_jsonl

    seen = []

    def recording_loss(logprobs, mask, *args, **kwargs):
        seen.append(mask.clone())
        return original(logprobs, mask, *args, **kwargs)

    original = sft.sft_loss
    monkeypatch.setattr(sft, "sft_loss", recording_loss)
    monkeypatch.setattr(sft, "pad_batch", lambda *a, **k: seen.append(a[1]) or pad_batch(*a, **k))
    reply = "<think> <tool_call>{}</tool_call>\n<tool_response>\n12345\n</tool_response>\n ok </think> <answer> 42 </answer>"
    data = tmp_path / "d.jsonl"
    write_jsonl(data, [{"prompt": "q", "completion": reply}] * 2)
    sft.train_sft(SFTConfig(model="tiny-random", data=str(data), template="chat", tools="calculator", batch_size=2,
                            micro_batch_size=2, mixed_precision="no", out=str(tmp_path / "sft")))
    completions, mask = seen
    tokenizer = tiny_tokenizer()
    ids = completions[0]
    assert tokenizer.decode([i for i, m in zip(ids, mask[0].tolist()) if not m]) == "\n<tool_response>\n12345\n</tool_response>\n"
    assert tokenizer.decode([i for i, m in zip(ids, mask[0].tolist()) if m], skip_special_tokens=True).endswith("ok </think> <answer> 42 </answer>")


def test_eval_with_tools_reports_calls(tmp_path):
    from r1lab.evaluate import evaluate, format_table

    result = evaluate(["tiny-random"], "arithmetic", samples=2, problems=2, template="chat", max_new_tokens=8,
                      out=str(tmp_path), tools="calculator", max_turns=2)
    row = result["models"]["tiny-random"]
    assert result["tools"] == "calculator" and "tool_calls" in row and "tool_errors" in row
    assert "calls" in format_table(result["models"], 2, tools=True)


def test_unknown_tools_are_refused_naming_the_field():
    import pytest

    from r1lab import R1labError
    from r1lab.config import GRPOConfig, check_fields

    with pytest.raises(R1labError, match="GRPOConfig.tools.*calculator"):
        check_fields(GRPOConfig(tools="calculater"))


def test_compete_with_tools_from_the_cli(tmp_path):
    from r1lab.cli import main

    out = tmp_path / "compete"
    main(["train", "compete", "--model", "tiny-random", "--tools", "calculator", "--max-turns", "2", "--rounds", "1",
          "--prompts-per-step", "2", "--samples-per-prompt", "2", "--max-new-tokens", "16", "--out", str(out)])
    assert (out / "checkpoint" / "config.json").exists()
