import json

import pytest

from r1lab.templates import R1_ZERO_INSTRUCTION, get_template, parse_json, parse_tags, tags_format_score

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
    ("<think></think><answer></answer>", 0.0, 0.8),                                # empty parts are not the format
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
    from r1lab.models import tiny_tokenizer
    prompt = get_template("chat").render("Calculate 1 + 2", tiny_tokenizer())
    assert R1_ZERO_INSTRUCTION in prompt and "Calculate 1 + 2" in prompt and prompt.endswith("assistant\n")


def test_unknown_template_names_valid_ones():
    from r1lab import R1labError
    with pytest.raises(R1labError, match="r1_zero, chat, code, json_cot"):
        get_template("r2")
