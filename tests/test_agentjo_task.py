"""The agentjo task, template and reward (r1lab/tasks/agentjo.py, r1lab/rewards/agentjo.py), and the recipe.

The reference replies and the reward are checked against AgentJo's own entry points (strict_json,
parse_yaml, Agent), never against a copy of their parsing. The slow test runs the talk's two snippets
against a trained checkpoint, if one is there.
"""
import ast
import json
from pathlib import Path

import pytest
import yaml

from r1lab import R1labError
from r1lab.cold_start import cold_start_completion
from r1lab.pipeline import load_recipe
from r1lab.rewards import parse_rewards, score
from r1lab.rewards.agentjo import agentjo_format, agentjo_score
from r1lab.tasks import get_task, split_of
from r1lab.tasks.agentjo import schema_id
from r1lab.templates import get_template
from r1lab.types import Completion, Problem

pytest.importorskip("agentjo")
CHECKPOINT = Path(__file__).resolve().parents[1] / "runs" / "agentjo" / "grpo" / "checkpoint"


@pytest.fixture(scope="module")
def train():
    return get_task("agentjo").problems("train", 200, seed=0)


@pytest.fixture(scope="module")
def test():
    return get_task("agentjo").problems("test", 60, seed=0)


def kind(p):
    return p.meta["agentjo"]["kind"]


def schema_of(p):
    """The split's schema id recomputed from what the problem shows: keys, offered functions, inputs."""
    spec = p.meta["agentjo"]
    names = ([c for c in spec["choices"] if c not in ("use_llm", "end_task")] if kind(p) == "agent_subtask"
             else spec["output_format"])
    return schema_id(kind(p), names)


def test_splits_never_share_a_schema_and_the_test_split_is_the_hashed_one(train, test):
    assert {schema_of(p) for p in train}.isdisjoint({schema_of(p) for p in test})
    assert all(split_of(schema_of(p), 20) == "test" for p in test)
    assert {kind(p) for p in train} == {kind(p) for p in test} == {"strict_json", "agent_subtask", "agent_inputs"}
    assert len({p.id for p in train}) == len(train) and len({p.prompt for p in train}) == len(train)
    assert [p.prompt for p in get_task("agentjo").problems("train", 20, seed=0)] == [p.prompt for p in train[:20]]
    assert all(kind(p) == "strict_json" for p in get_task("agentjo", agent_percent=0).problems("test", 20, seed=0))


@pytest.mark.parametrize("options, message", [({"agent_percent": 101}, "agent_percent"), ({"test_percent": 0}, "test_percent"),
                                              ({"kinds": 1}, "unknown option")])
def test_bad_options_name_the_option(options, message):
    with pytest.raises(R1labError, match=message):
        get_task("agentjo", **options)


def replying(reply):
    return lambda system_prompt, user_prompt: reply


TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}


def test_every_reference_reply_parses_in_agentjo_into_the_requested_keys_and_types(train):
    from agentjo import parse_yaml, strict_json

    for p in train:
        spec = p.meta["agentjo"]
        if kind(p) == "strict_json":
            result = strict_json(spec["system_prompt"], spec["user_prompt"], spec["output_format"], llm=replying(p.answer))
            assert result == {k.strip("#"): v for k, v in json.loads(p.answer).items()}
            for key, value in result.items():
                wanted = spec["output_format"][key].split("type: ")[-1]
                if wanted.startswith("Enum"):
                    assert value in ast.literal_eval(wanted[4:])
                elif "type: " in spec["output_format"][key]:
                    assert type(value) is TYPES[wanted.split("[")[0]], (key, wanted, value)
        else:
            result = parse_yaml("", "", spec["output_format"], llm=replying(p.answer))
            assert result == yaml.safe_load(p.answer.strip("`").removeprefix("yaml"))
        assert set(result) == set(spec["output_format"])
        assert agentjo_score(p, p.answer) == 1.0
        assert cold_start_completion(p, get_template("agentjo")) == p.answer      # what the cold start trains on


def test_prompts_are_agentjos_own_and_the_reference_subtask_drives_a_real_agent(train):
    strict = next(p for p in train if kind(p) == "strict_json")
    messages = json.loads(strict.prompt)
    assert messages["user"] == strict.meta["agentjo"]["user_prompt"]
    assert messages["system"].startswith(strict.meta["agentjo"]["system_prompt"] + "\nOutput in the following json template: ```{'###")
    subtask = next(p for p in train if kind(p) == "agent_subtask" and p.meta["agentjo"]["expected"] != "end_task")
    system, user = json.loads(subtask.prompt).values()
    assert "Equipped Function Name: Name of Equipped Function" in system and "Name: end_task" in user
    inputs = next(p for p in train if kind(p) == "agent_inputs")
    assert yaml.safe_dump(inputs.meta["agentjo"]["output_format"], sort_keys=False) in json.loads(inputs.prompt)["system"]


def problem(kind, output_format, **spec):
    return Problem("p", "{}", None, {"agentjo": {"kind": kind, "output_format": output_format, **spec}})


STRICT = problem("strict_json", {"Name": "type: str", "Age": "From 0 to 120, type: int", "Tags": "type: list",
                                 "Level": "type: Enum['low', 'high']", "Note": "Anything"})
SUBTASK = problem("agent_subtask", dict.fromkeys(["Observation", "Thoughts", "Current Subtask", "Equipped Function Name"]),
                  choices=["use_llm", "end_task", "make_appointment"], expected="make_appointment")
INPUTS = problem("agent_inputs", {"person_name": "A suitable value, type:  str", "people": "A suitable value, type:  int"},
                 expected={"person_name": "Paul", "people": 4})
GOOD = '{"###Name###": "Ann", "###Age###": 7, "###Tags###": ["a", "b"], "###Level###": "low", "###Note###": "hi"}'


def subtask(name="make_appointment", **extra):
    return "```yaml\n" + yaml.safe_dump({"Observation": "Nothing done", "Thoughts": "Book Paul", "Current Subtask": "Book Paul",
                                         "Equipped Function Name": name, **extra}, sort_keys=False) + "```"


@pytest.mark.parametrize("p, reply, fmt, accuracy", [
    (STRICT, GOOD, 1, 1),
    (STRICT, "<think> fill the template </think>\n" + GOOD, 1, 1),                   # the reasoning is split off first
    (STRICT, "Here you are: " + GOOD.replace('"', "'") + " Done.", 1, 1),           # strict_json reads from { to }
    (STRICT, GOOD.replace(', "###Note###": "hi"', ""), 0, 0),                         # missing key
    (STRICT, GOOD.replace("}", ', "###Extra###": 1}'), 0, 0),                         # extra key
    (STRICT, GOOD.replace("7", '"seven"'), 0, 0),                                     # int field that is no int
    (STRICT, GOOD.replace('"low"', '"medium"'), 0, 0),                               # not one of the Enum's values
    (STRICT, GOOD.replace('["a", "b"]', "[a, b]"), 0, 0),                             # a list AgentJo would ask the llm to fix
    (STRICT, "I cannot answer that.", 0, 0),                                           # unparseable
    (SUBTASK, subtask(), 1, 1),
    (SUBTASK, subtask("end_task"), 1, 0),                                              # a valid choice, not the expected one
    (SUBTASK, subtask("book_hotel"), 0, 0),                                            # no such function: AgentJo would end the task
    (SUBTASK, subtask(Extra="x"), 0, 0),                                               # extra key (parse_yaml forbids it)
    (SUBTASK, subtask().replace("Thoughts: Book Paul\n", ""), 0, 0),                  # missing key
    (SUBTASK, "```yaml\nObservation: [unclosed\n```", 0, 0),                          # not YAML
    (INPUTS, "```yaml\nperson_name: paul \npeople: 4\n```", 1, 1),                   # text compared without case
    (INPUTS, "```yaml\nperson_name: Sally\npeople: 4\n```", 1, 0),                   # complete, wrong argument
    (INPUTS, "```yaml\nperson_name: Paul\npeople: four\n```", 0, 0),                 # int input that is no int
])
def test_reward_table(p, reply, fmt, accuracy):
    template = get_template("agentjo")
    reasoning, answer = template.parse(reply)
    completion = Completion(text=reply, template="agentjo", reasoning=reasoning, answer=answer)
    assert agentjo_format(completion, p) == fmt
    _, parts, failures = score(parse_rewards("agentjo_format,accuracy"), [completion], [p])
    assert parts == {"agentjo_format": [fmt], "accuracy": [accuracy]} and failures == 0


def test_agentjo_template_renders_system_and_user_and_scores_the_bare_block():
    from r1lab.models import load_model
    from r1lab.tools import render_chat

    _, tokenizer = load_model("tiny-random")
    template = get_template("agentjo")
    prompt = template.render(json.dumps({"system": "Be a JSON writer", "user": "DeepSeek"}), tokenizer)
    assert prompt == "<|im_start|>system\nBe a JSON writer<|im_end|>\n<|im_start|>user\nDeepSeek<|im_end|>\n<|im_start|>assistant\n"
    assert prompt == render_chat(tokenizer, [{"role": "system", "content": "Be a JSON writer"},     # what make_llm sends
                                             {"role": "user", "content": "DeepSeek"}])
    with pytest.raises(R1labError, match="template 'agentjo' expects a question that is JSON"):
        template.render("Calculate 1 + 2", tokenizer)
    assert [template.format_score(t, False) for t in (GOOD, subtask(), "ok " + GOOD, "<think> x </think> " + GOOD)] == [1, 1, 0, 1]
    assert template.format_score("ok " + GOOD, True) == 0.5 and template.compose("ignored", GOOD) == GOOD


def test_recipe_loads_with_the_agentjo_task_template_and_rewards():
    stages = {s.name: s for s in load_recipe("recipes/agentjo.yaml")}
    assert [s.kind for s in stages.values()] == ["cold_start", "sft", "grpo", "eval"]
    assert stages["grpo"].config.rewards == "agentjo_format,accuracy"
    assert {stages[n].config.template for n in ("cold_start", "sft", "grpo", "eval")} == {"agentjo"}
    assert stages["eval"].config.task == "agentjo" and stages["eval"].config.temperature == 0.0


@pytest.mark.slow
@pytest.mark.skipif(not CHECKPOINT.is_dir(), reason=f"no trained checkpoint at {CHECKPOINT}: r1lab run recipes/agentjo.yaml")
def test_talks_snippets_run_to_the_end_on_the_trained_checkpoint():
    from r1lab.llm import make_llm
    from serving import talk_snippets

    res, calls, _ = talk_snippets(make_llm(str(CHECKPOINT)))                       # raises if a parse fails
    assert set(res) == {"Main Category", "Sub-categories"} and isinstance(res["Sub-categories"], list)
    assert calls                                                                     # it used the function


def test_agentjo_format_on_another_task_is_refused_before_sampling():
    import pytest

    from r1lab import R1labError
    from r1lab.rewards import check_rewards_fit
    from r1lab.types import Problem

    with pytest.raises(R1labError, match="agentjo_format needs the agentjo task"):
        check_rewards_fit({"agentjo_format": 1.0}, Problem("p", "Calculate 1 + 2", "3"))
