import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from r1lab.llm import make_llm
from r1lab.models import load_model
from r1lab.rollout.hf import HFEngine
from r1lab.serve import split_reasoning
from serving import ScriptedEngine, start_server


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model("tiny-random")
    return model.eval(), tokenizer


@pytest.fixture
def scripted(tiny):
    servers = []

    def start(reply, api_key=None, delay=0.0):
        engine = ScriptedEngine(reply, tiny[1], delay)
        server, url = start_server(engine, tiny[1], api_key)
        servers.append(server)
        return engine, url
    yield start
    for server in servers:
        server.should_exit = True


def arithmetic_reply(system, user):
    return f"<think> The user asked: {user} </think> <answer> 6 </answer>"


def test_partial_split_holds_back_unfinished_tags():
    from r1lab.serve import partial_split
    assert partial_split("<thi") == ("", "")
    assert partial_split("<think> 1 + 2 = 3 </th") == ("1 + 2 = 3", "")
    assert partial_split("<think> a </think> <answer> 6") == ("a", "6")
    assert partial_split("plain answer <") == ("", "plain answer")


def test_streaming_sends_tokens_as_they_come_and_a_disconnect_cancels(scripted):
    engine, url = scripted(lambda system, user: "<think> " + "step " * 200 + "</think> <answer> 6 </answer>", delay=0.01)
    client = openai.OpenAI(base_url=url, api_key="none")
    stream = client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "go"}], stream=True)
    pieces = []
    for chunk in stream:
        pieces.append(getattr(chunk.choices[0].delta, "reasoning_content", None) or "")
        if len("".join(pieces)) >= 20:
            break
    assert "".join(pieces).startswith("step step")
    stream.close()                                     # the client goes away mid-reply
    deadline = time.monotonic() + 10
    while not engine.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.cancelled == 1


def test_split_reasoning():
    assert split_reasoning("<think> a </think> <answer> 6 </answer>") == ("a", "6")
    assert split_reasoning("<think> a </think> The answer is 6.") == ("a", "The answer is 6.")
    assert split_reasoning("<think> still thinking") == ("still thinking", "")
    assert split_reasoning(" plain ") == (None, "plain")


def test_plain_request_on_tiny_random(tiny):
    model, tokenizer = tiny
    server, url = start_server(HFEngine(model, tokenizer), tokenizer)
    try:
        client = openai.OpenAI(base_url=url, api_key="none")
        assert [m.id for m in client.models.list().data] == ["tiny-random"]
        reply = client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "Calculate 1 + 2"}],
                                               max_tokens=8, temperature=0.6)
        assert len(reply.choices) == 1 and reply.choices[0].finish_reason in ("stop", "length")
        assert 1 <= reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 3
        chunks = list(client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "Hi"}],
                                                     max_tokens=8, stream=True, n=2))
        assert {c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason} <= {"stop", "length"}
        assert sorted(c.choices[0].index for c in chunks if c.choices[0].finish_reason) == [0, 1]
    finally:
        server.should_exit = True


def test_reasoning_is_split_out_plain_streaming_and_n(scripted):
    _, url = scripted(arithmetic_reply)
    client = openai.OpenAI(base_url=url, api_key="none")
    messages = [{"role": "user", "content": "Calculate 1 + 2 + 3"}]
    reply = client.chat.completions.create(model="tiny-random", messages=messages, n=3)
    assert len(reply.choices) == 3
    assert all(c.message.content == "6" and c.message.reasoning_content == "The user asked: Calculate 1 + 2 + 3"
               for c in reply.choices)
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(model="tiny-random", messages=messages, stream=True):
        delta = chunk.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += delta.content or ""
    assert reasoning == "The user asked: Calculate 1 + 2 + 3" and content == "6"


def raw_post(url, data: bytes, headers=None):
    request = urllib.request.Request(url + "/chat/completions", data, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_errors_are_4xx_in_openai_shape_and_the_server_lives(scripted):
    _, url = scripted(arithmetic_reply, api_key="sesame")
    ok = {"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"Authorization": "Bearer sesame"}
    cases = [
        (json.dumps(ok).encode(), {}, 401),
        (json.dumps(ok).encode(), {"Authorization": "Bearer wrong"}, 401),
        (b"{not json", auth, 400),
        (json.dumps({**ok, "model": "gpt-9"}).encode(), auth, 404),
        (json.dumps({**ok, "max_tokens": 10_000}).encode(), auth, 400),
        (json.dumps({**ok, "messages": ok["messages"] * 5}).encode(), auth, 400),
        (json.dumps({**ok, "messages": [{"role": "user", "content": "x" * 30_000}]}).encode(), auth, 413),
        (json.dumps({**ok, "messages": [{"role": "robot", "content": "x"}]}).encode(), auth, 400),
        (json.dumps({**ok, "n": 0}).encode(), auth, 400),
        (json.dumps([1, 2]).encode(), auth, 400),
    ]
    for data, headers, status in cases:
        code, body = raw_post(url, data, headers)
        assert code == status and set(body["error"]) >= {"message", "type", "code"}, (data[:60], code, body)
    assert raw_post(url, json.dumps(ok).encode(), auth)[0] == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong").models.list()


def test_64_concurrent_requests_are_batched_and_all_answered(scripted):
    engine, url = scripted(lambda system, user: f"<think> echo </think> <answer> {user} </answer>")
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)

    def ask(i):
        reply = client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": f"question {i}"}])
        return reply.choices[0].message.content
    with ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(ask, range(64)))
    assert answers == [f"question {i}" for i in range(64)]
    assert sum(engine.batches) == 64 and max(engine.batches) > 1          # shared generate calls
    assert client.models.list().data[0].id == "tiny-random"


def test_llm_function_strips_reasoning_in_process_and_over_http(scripted, tiny):
    _, url = scripted(arithmetic_reply)
    llm = make_llm(url, max_tokens=32)
    assert llm(system_prompt="You are a calculator", user_prompt="Calculate 1 + 2 + 3") == "6"
    local = make_llm("tiny-random", max_tokens=8)
    assert isinstance(local(system_prompt="s", user_prompt="u"), str)


APPOINTMENTS = [("Paul", "1500H", "1600H"), ("Sally", "1600H", "1700H")]


def as_yaml(d: dict) -> str:
    import yaml
    return "```yaml\n" + yaml.safe_dump(d, sort_keys=False) + "```"


def agentjo_reply(system_prompt: str, user_prompt: str) -> str:
    """Scripted replies for the talk's two AgentJo examples, chosen from the prompts alone, each after a
    reasoning block that the server must split off (strict_json cannot parse a reply that keeps it)."""
    think = "<think> I should answer in the format the system prompt asks for </think> "
    if "###Main Category###" in system_prompt:
        return think + str({"###Main Category###": "Technology and Innovation",
                            "###Sub-categories###": ["Artificial Intelligence", "Machine Learning", "Data Science"]})
    done = user_prompt.count("Appointment made with")
    if "Equipped Function Name" in system_prompt:
        if done < len(APPOINTMENTS):
            name, start, end = APPOINTMENTS[done]
            return think + as_yaml({"Observation": f"{done} of 2 appointments made", "Thoughts": f"Book {name} next",
                                    "Current Subtask": f"Make an appointment with {name} from {start} to {end}",
                                    "Equipped Function Name": "make_appointment"})
        return think + as_yaml({"Observation": "All appointments are made", "Thoughts": "The task is complete",
                                "Current Subtask": "End the task", "Equipped Function Name": "end_task"})
    if "person_name" in system_prompt:
        name, start, end = APPOINTMENTS[done]
        return think + as_yaml({"person_name": name, "start_time": start, "end_time": end})
    return think + "unscripted"


def test_agentjo_strict_json_and_agent_through_the_server(scripted, monkeypatch):
    from agentjo import Agent, strict_json
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _, url = scripted(agentjo_reply)
    llm = make_llm(url, max_tokens=64)
    res = strict_json(system_prompt="Generate 1 main category and 3 sub-categories for topic", user_prompt="DeepSeek",
                      output_format={"Main Category": "Suitable for 12 year olds, type: str", "Sub-categories": "type: list"},
                      llm=llm)
    assert res == {"Main Category": "Technology and Innovation",
                   "Sub-categories": ["Artificial Intelligence", "Machine Learning", "Data Science"]}

    calls = []

    def make_appointment(person_name: str, start_time: str, end_time: str):
        '''Makes an appointment with person_name from start_time to end_time. Time is in xxxxH'''
        calls.append((person_name, start_time, end_time))
        return f"Appointment made with {person_name} from {start_time} to {end_time}"

    agent = Agent(agent_name="Personal Secretary", agent_description="You are a friendly assistant.", llm=llm,
                  verbose=False).assign_functions([make_appointment])
    agent.run("Make me an appointment with Paul at 3pm, Sally at 4pm. 1 hour each")
    assert calls == APPOINTMENTS and agent.task_completed
