import json

import pytest

from r1lab.models import CHATML, tiny_tokenizer
from r1lab.rewards.format import format_partial, format_strict
from r1lab.templates import R1_ZERO_INSTRUCTION, get_template, parse_json, parse_tags, prompt_tail, tags_format_score
from r1lab.types import Completion, Problem

R1 = get_template("r1_zero")


def test_r1_zero_is_table_1_verbatim():
    assert R1.render("Calculate 1 + 2 + 3", None) == (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
        "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
        "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
        "User: Calculate 1 + 2 + 3. Assistant:")


@pytest.mark.parametrize("text, reasoning, answer", [
    ("<think> 1+2=3 </think> <answer> 3 </answer>", "1+2=3", "3"),
    ("Sure! <think>a</think>\n<answer>6</answer> bye", "a", "6"),                 # text around the tags
    (" 1+2=3 </think> <answer>3</answer>", "1+2=3", "3"),                          # prompt ended in <think>
    ("<think> still thinking <answer>5</answer>", "still thinking <answer>5</answer>", None),   # unclosed think
    ("<think> try <answer>5</answer> no </think><answer>6</answer>", "try <answer>5</answer> no", "6"),  # answer in think
    ("<think>x</think><answer>1</answer><answer>2</answer>", "x", "1"),            # several answers: the first
    ("<think>x</think><answer> 7", "x", None),                                     # unclosed answer: none
    ("<answer>4</answer>", None, "4"),                                             # no reasoning
    ("", None, None),
    ("<think><think>a</think></think><answer>b</answer>", "<think>a", "b"),        # nested tags
    ("<think>答案是 6</think><answer>六</answer>", "答案是 6", "六"),                 # unicode
])
def test_parse_tags(text, reasoning, answer):
    assert parse_tags(text) == (reasoning, answer)


@pytest.mark.parametrize("text, strict, partial", [
    ("<think> a </think> <answer> b </answer>", 1.0, 1.0),
    ("  <think>a</think>\n<answer>b</answer>\n", 1.0, 1.0),
    ("<think>a</think><answer>b</answer><answer>c</answer>", 0.0, 0.4),
    ("hello <think>a</think><answer>b</answer>", 0.0, 0.8),
    ("<think>a</think>", 0.0, 0.4),
    ("plain text", 0.0, 0.0),
    ("<think></think><answer></answer>", 0.0, 0.0),                                # empty parts are not the format
    ("<think>\n</think> <answer> </answer>", 0.0, 0.0),                            # nor are blank ones
    ("<think> 1+2 </think> <answer> </answer>", 0.0, 0.4),                         # the R1-Zero study's hack
    ("<answer> </answer>", 0.0, 0.0),
    ("</answer> x <answer>", 0.0, 0.0),                                            # out of order: not a block
    ("</think> </answer>", 0.0, 0.0),                                              # lone tags earn nothing
    ("<answer>answer here</answer>", 0.0, 0.4),
])
def test_tags_format_score(text, strict, partial):
    assert tags_format_score(text, False) == strict
    assert tags_format_score(text, True) == pytest.approx(partial)


@pytest.mark.parametrize("text, thought, answer", [
    ('{"thought": "1+2=3", "answer": "3"}', "1+2=3", "3"),
    ('Here: {"thought": "t", "answer": 6} done', "t", "6"),
    ('{"answer": "6"}', None, "6"),
    ('{"thought": "t"} {"thought": "u", "answer": "7"}', "u", "7"),
    ('{"thought": "t", "answer": ', None, None),
    ("no json", None, None),
    ('{"thought": "思考", "answer": "六"}', "思考", "六"),
])
def test_parse_json(text, thought, answer):
    assert parse_json(text) == (thought, answer)


def test_json_format_and_compose_round_trip():
    template = get_template("json_cot")
    text = template.compose("1+2=3", "3")
    assert json.loads(text) == {"thought": "1+2=3", "answer": "3"}
    assert template.format_score(text, False) == 1.0
    assert template.format_score("ok " + text, False) == 0.0
    assert template.format_score("ok " + text, True) == 0.5
    assert template.parse(text) == ("1+2=3", "3")


def test_compose_parses_back_for_tags():
    text = R1.compose("Firstly, 1 + 2 = 3", "3")
    assert R1.parse(text) == ("Firstly, 1 + 2 = 3", "3")
    assert R1.format_score(text, False) == 1.0


def test_hostile_inputs_are_cheap_and_safe():
    big = "x" * 100_000
    for text in [big, "<think>" * 20_000, "</answer>" * 20_000, "{" * 100_000, "<answer>" + big]:
        for name in ("r1_zero", "json_cot"):
            template = get_template(name)
            template.parse(text)
            assert 0.0 <= template.format_score(text, True) <= 1.0


def test_chat_template_carries_the_instruction():
    prompt = get_template("chat").render("Calculate 1 + 2", tiny_tokenizer())
    assert R1_ZERO_INSTRUCTION in prompt and "Calculate 1 + 2" in prompt and prompt.endswith("assistant\n")


def opens_think(tokenizer):
    """`tokenizer` with a chat template whose generation prompt opens the reasoning, as DeepSeek-R1-Distill's."""
    tokenizer.chat_template = CHATML.replace("assistant\n{% endif %}", "assistant\n<think>\n{% endif %}")
    return tokenizer


@pytest.mark.parametrize("reply, reasoning, answer, strict, partial", [
    ("Let me add: 2+2=4.</think> <answer>4</answer>", "Let me add: 2+2=4.", "4", 1.0, 1.0),
    ("Let me add: 2+2=4.\n</think>\n\n<answer>4</answer>\n", "Let me add: 2+2=4.", "4", 1.0, 1.0),
    ("Let me add.</think> <answer>4</answer> Done.", "Let me add.", "4", 0.0, 0.8),      # text after the answer
    ("<think>2+2=4</think> <answer>4</answer>", "<think>2+2=4", "4", 0.0, 0.4),          # a second <think>
    ("Let me add: 2+2=4.", "Let me add: 2+2=4.", None, 0.0, 0.0),                        # never left its reasoning
    ("</think> <answer>4</answer>", "", "4", 0.0, 0.4),                                  # empty reasoning: no credit
])
def test_a_prompt_that_opens_think_is_judged_with_the_reply(reply, reasoning, answer, strict, partial):
    """The parser and the format reward read the same text: the prompt's tail plus the reply."""
    prompt = get_template("chat").render("What is 2 + 2?", opens_think(tiny_tokenizer()))
    tail = prompt_tail(prompt)
    assert tail == "<think>\n" and prompt.endswith(tail)
    parsed = parse_tags(tail + reply)
    completion = Completion(reply, "chat", *parsed, prompt_tail=tail)
    problem = Problem("p", "What is 2 + 2?", "4")
    assert parsed == (reasoning, answer)
    assert (format_strict(completion, problem), format_partial(completion, problem)) == (strict, pytest.approx(partial))


@pytest.mark.parametrize("prompt, tail", [
    (R1.render("What is 2 + 2?", None), ""),                         # the instruction names <think>: not opened
    ("<|im_start|>assistant\n", ""),
    ("<｜Assistant｜><think>\n", "<think>\n"),                        # DeepSeek-R1-Distill
    ("<|im_start|>assistant\n<think>\n\n</think>\n\n", ""),           # Qwen3 with thinking off: closed
])
def test_prompt_tail(prompt, tail):
    assert prompt_tail(prompt) == tail


def test_unknown_template_names_valid_ones():
    from r1lab import R1labError
    with pytest.raises(R1labError, match="r1_zero, r1_zero_think, chat, code, json_cot"):
        get_template("r2")


def test_rollout_carries_the_prompt_tail_to_parser_and_rewards():
    """Through `rollout`: on a template that opens <think>, a well-formed reply gets full format and accuracy."""
    from r1lab.rewards import score
    from r1lab.rollout import Sample, Sampling, rollout

    class Replay:
        def generate(self, prompts, n, sampling):
            return [[Sample([1], [0.0], "2 + 2 = 4.</think> <answer>4</answer>", "stop")] * n for _ in prompts]

    problem = Problem("p", "What is 2 + 2?", "4")
    _, groups = rollout(Replay(), [problem], get_template("chat"), opens_think(tiny_tokenizer()), 2, Sampling())
    totals, parts, _ = score({"accuracy": 1.0, "format": 1.0}, groups[0], [problem] * 2)
    assert groups[0][0].reasoning == "2 + 2 = 4." and parts["format"] == [1.0, 1.0] and totals == [2.0, 2.0]


def test_r1_zero_think_opens_the_reasoning_for_the_base():
    """Table 1 verbatim with `<think>` opened: the reply is read with that tail, as a chat template's would be."""
    template = get_template("r1_zero_think")
    prompt = template.render("Calculate 1 + 2", tiny_tokenizer())
    assert prompt.endswith("User: Calculate 1 + 2. Assistant: <think>") and R1_ZERO_INSTRUCTION in prompt
    assert prompt_tail(prompt) == "<think>" and not template.chat
    reply = " 1 + 2 = 3 </think> <answer> 3 </answer>"
    assert parse_tags(prompt_tail(prompt) + reply) == ("1 + 2 = 3", "3")
    assert tags_format_score(prompt_tail(prompt) + reply) == 1.0
