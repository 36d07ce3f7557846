"""`r1lab serve` speaks OpenAI's tools API: tools and tool_choice in, tool_calls out (whole and streamed),
tool turns in the messages, a full client round trip; the prompt through a template that renders tools
itself and through the fallback. A scripted engine plays the model."""
import json
import random
import re

import openai
import pytest

from r1lab.models import tiny_tokenizer
from r1lab.serve import APIError, Limits, parse_request
from r1lab.serve_prompt import request_prompt
from r1lab.streaming import ReplyStream, split_reply
from r1lab.tools import TOOL_CALL_STOP
from serving import LIMITS, ScriptedEngine, start_server, think_tokenizer

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city, now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
USER = {"role": "user", "content": "What is the weather in Paris?"}

# A template that renders tools in its own convention (as Qwen's, Llama 3.1's, Mistral's do), with
# markers of its own so that a test can tell its rendering from r1lab.tools' fallback.
NATIVE = (
    "{% if tools %}<|im_start|>system\n[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]<|im_end|>\n{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'tool' %}<|im_start|>tool\n[TOOL_RESULT]{{ m.content }}[/TOOL_RESULT]<|im_end|>\n"
    "{% elif m.tool_calls %}<|im_start|>assistant\n{% for c in m.tool_calls %}<tool_call>"
    "{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}</tool_call>{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def native():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = NATIVE
    return tokenizer


@pytest.fixture
def served(tokenizer):
    """start(reply(prompt) -> text, tokenizer=None) -> (engine, openai client) of a server on a free port."""
    servers = []

    def start(reply, tokenizer_=None):
        engine = ScriptedEngine(reply, tokenizer_ or tokenizer, whole_prompt=True)
        server, url = start_server(engine, tokenizer_ or tokenizer)
        servers.append(server)
        return engine, openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    yield start
    for server in servers:
        server.should_exit = True


def tool_results(prompt: str) -> list[str]:
    """The tool results rendered into a prompt, in either convention."""
    return re.findall(r"<tool_response>\n(.*?)\n</tool_response>|\[TOOL_RESULT\](.*?)\[/TOOL_RESULT\]", prompt, re.S)


def weather_reply(prompt: str) -> str:
    """Reasons, then calls get_weather while the user's message is the last; answers once a tool result
    is in the prompt. The text after the call is never generated: `</tool_call>` is a stop string."""
    if results := tool_results(prompt):
        result = "".join(results[-1])
        return f"<think> The tool says {result} </think> It is {result} in Paris."
    return f"<think> I need the weather in Paris </think> {CALL} never sent"


def collect(stream) -> tuple[dict, str, list]:
    """(message, finish_reason, chunks) of choice 0 of a stream: each field's deltas joined, tool calls by index."""
    message, calls, finish, chunks = {"content": "", "reasoning_content": ""}, {}, None, list(stream)
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            message["content"] += delta.content or ""
            message["reasoning_content"] += getattr(delta, "reasoning_content", None) or ""
            for call in delta.tool_calls or []:
                whole = calls.setdefault(call.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
                whole["id"] += call.id or ""
                whole["function"]["name"] += call.function.name or ""
                whole["function"]["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    message["tool_calls"] = [calls[k] for k in sorted(calls)] or None
    return message, finish, chunks


def without_ids(message: dict) -> dict:
    return {**message, "content": message["content"] or None,
            "tool_calls": [{**c, "id": "?"} for c in message.get("tool_calls") or []] or None}


def test_bad_tools_and_tool_turns_are_400s_naming_the_field():
    def ask(**fields):
        body = {"model": "m", "messages": [USER], **fields}
        with pytest.raises(APIError) as error:
            parse_request(json.dumps(body).encode(), "m", LIMITS)
        return error.value.status, error.value.body["error"]["param"]
    function = WEATHER["function"]
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    turn = {"role": "assistant", "content": None, "tool_calls": [call]}
    result = {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}
    cases = [
        ({"tools": {"get_weather": function}}, "tools"),
        ({"tools": [WEATHER, "get_weather"]}, "tools[1]"),
        ({"tools": [WEATHER, {**WEATHER, "type": "retrieval"}]}, "tools[1].type"),
        ({"tools": [WEATHER, {"type": "function"}]}, "tools[1].function"),
        ({"tools": [WEATHER, {"type": "function", "function": {**function, "name": "get weather"}}]}, "tools[1].function.name"),
        ({"tools": [{"type": "function", "function": {**function, "name": "x" * 65}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),                          # twice
        ({"tools": [{"type": "function", "function": {**function, "parameters": ["city"]}}]}, "tools[0].function.parameters"),
        ({"tools": [{"type": "function", "function": {**function, "description": 5}}]}, "tools[0].function.description"),
        ({"tools": [WEATHER], "tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": [USER, turn, {**result, "tool_call_id": None}]}, "messages[2].tool_call_id"),
        ({"messages": [USER, {**turn, "tool_calls": {"0": call}}]}, "messages[1].tool_calls"),
        ({"messages": [USER, {**turn, "tool_calls": [{**call, "id": None}]}]}, "messages[1].tool_calls[0].id"),
        ({"messages": [USER, {**turn, "tool_calls": [{**call, "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}]},
         "messages[1].tool_calls[0].function.arguments"),                                  # a dict, not a JSON string
        ({"messages": [USER, {**turn, "tool_calls": [{**call, "function": {"name": "get_weather", "arguments": "Paris"}}]}]},
         "messages[1].tool_calls[0].function.arguments"),
        ({"messages": [USER, {**turn, "tool_calls": [{**call, "type": "code"}]}]}, "messages[1].tool_calls[0]"),
        ({"messages": [USER, {"role": "assistant", "content": None}]}, "messages[1].content"),     # null needs tool_calls
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0]"),
    ]
    for fields, param in cases:
        assert ask(**fields) == (400, param), fields
    ok = parse_request(json.dumps({"model": "m", "messages": [USER, turn, result], "tools": [WEATHER]}).encode(), "m", LIMITS)
    assert ok.messages[1]["content"] == "" and ok.tools == (WEATHER,)
    assert ok.stop == () and ok.sampling.stop == (TOOL_CALL_STOP,)          # the sampler stops at a call; nothing trimmed
    assert "not supported" in str(pytest.raises(APIError, parse_request, json.dumps(
        {"model": "m", "messages": [USER], "tools": [WEATHER], "tool_choice": "required"}).encode(), "m", LIMITS).value)


def test_a_bad_tool_is_a_400_in_openais_error_shape_through_the_server(served):
    _, client = served(weather_reply)
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="tiny-random", messages=[USER],
                                       tools=[WEATHER, {"type": "function", "function": {"name": "no spaces allowed"}}])
    assert error.value.body["param"] == "tools[1].function.name" and error.value.body["type"] == "invalid_request_error"


def test_a_tool_call_comes_back_in_openais_shape(served):
    engine, client = served(weather_reply)
    reply = client.chat.completions.create(model="tiny-random", messages=[USER], tools=[WEATHER])
    body = reply.model_dump(exclude_unset=True)
    choice, = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert set(message) == {"role", "content", "reasoning_content", "tool_calls"}
    assert (message["role"], message["content"], message["reasoning_content"]) == ("assistant", None, "I need the weather in Paris")
    call, = message["tool_calls"]
    assert set(call) == {"id", "type", "function"} and re.fullmatch(r"call_[0-9a-f]{24}", call["id"])
    assert call["type"] == "function" and call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    generated = engine.tokenizer(f"<think> I need the weather in Paris </think> {CALL}", add_special_tokens=False)["input_ids"]
    assert reply.usage.completion_tokens == len(generated)            # it stopped at </tool_call>
    assert "You may call one or more functions" in engine.prompts[-1] and '"name": "get_weather"' in engine.prompts[-1]


def test_a_streamed_tool_call_joins_to_the_whole_message(served):
    _, client = served(weather_reply)
    whole = client.chat.completions.create(model="tiny-random", messages=[USER], tools=[WEATHER])
    message, finish, chunks = collect(client.chat.completions.create(model="tiny-random", messages=[USER], tools=[WEATHER],
                                                                     stream=True))
    assert finish == "tool_calls" and chunks[-1].choices[0].finish_reason == "tool_calls"
    assert without_ids(message) == without_ids(whole.choices[0].message.model_dump(include={"content", "reasoning_content", "tool_calls"}))
    assert re.fullmatch(r"call_[0-9a-f]{24}", message["tool_calls"][0]["id"])
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert not any("tool_call" in (d.content or "") + (getattr(d, "reasoning_content", None) or "") for d in deltas)
    calls = [d.tool_calls[0] for d in deltas if d.tool_calls]
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].type == "function"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("template", ["fallback", "native"])
def test_a_full_round_trip_the_client_runs_the_tool(served, native, stream, template):
    """Request with tools -> tool_calls -> the client runs the function -> the assistant's call and the
    tool message go back -> the answer; the call and its result reach the prompt in the template's form."""
    engine, client = served(weather_reply, native if template == "native" else None)
    ran = []

    def get_weather(city: str) -> str:
        ran.append(city)
        return "Sunny, 21 C"

    def ask(messages):
        if not stream:
            reply = client.chat.completions.create(model="tiny-random", messages=messages, tools=[WEATHER])
            return reply.choices[0].message.model_dump(include={"content", "reasoning_content", "tool_calls"}), \
                reply.choices[0].finish_reason
        message, finish, _ = collect(client.chat.completions.create(model="tiny-random", messages=messages,
                                                                    tools=[WEATHER], stream=True))
        return message, finish
    messages = [USER]
    message, finish = ask(messages)
    assert finish == "tool_calls"
    messages.append({"role": "assistant", "content": message["content"] or None, "tool_calls": message["tool_calls"]})
    for call in message["tool_calls"]:
        result = {"get_weather": get_weather}[call["function"]["name"]](**json.loads(call["function"]["arguments"]))
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    message, finish = ask(messages)
    assert ran == ["Paris"] and finish == "stop" and not message["tool_calls"]
    assert (message["reasoning_content"], message["content"]) == ("The tool says Sunny, 21 C", "It is Sunny, 21 C in Paris.")
    prompt = engine.prompts[-1]
    if template == "native":
        assert "[AVAILABLE_TOOLS]" in prompt and "You may call" not in prompt
        assert f"<|im_start|>assistant\n{CALL}<|im_end|>\n<|im_start|>tool\n[TOOL_RESULT]Sunny, 21 C[/TOOL_RESULT]" in prompt
    else:
        assert "You may call one or more functions" in prompt and "[AVAILABLE_TOOLS]" not in prompt
        assert f"<|im_start|>assistant\n{CALL}<|im_end|>\n<|im_start|>tool\n<tool_response>\nSunny, 21 C\n</tool_response>" in prompt


def test_the_openai_message_object_itself_can_be_sent_back(served):
    _, client = served(weather_reply)
    reply = client.chat.completions.create(model="tiny-random", messages=[USER], tools=[WEATHER])
    call = reply.choices[0].message.tool_calls[0]
    answer = client.chat.completions.create(model="tiny-random", tools=[WEATHER], messages=[
        USER, reply.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": "Rain"}])
    assert answer.choices[0].message.content == "It is Rain in Paris."


def test_tool_choice_none_shows_no_tools_and_reads_no_call(served):
    engine, client = served(weather_reply)
    reply = client.chat.completions.create(model="tiny-random", messages=[USER], tools=[WEATHER], tool_choice="none")
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content == f"{CALL} never sent"           # no stop at </tool_call>, not parsed
    assert "get_weather" not in engine.prompts[-1] and "<tools>" not in engine.prompts[-1]


def test_a_malformed_call_is_plain_content(served):
    bad = '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'
    _, client = served(lambda prompt: f"<think> hmm </think> Checking. {bad}")
    whole = client.chat.completions.create(model="tiny-random", messages=[USER], tools=[WEATHER])
    assert whole.choices[0].finish_reason == "stop" and whole.choices[0].message.tool_calls is None
    assert (whole.choices[0].message.reasoning_content, whole.choices[0].message.content) == ("hmm", f"Checking. {bad}")
    message, finish, _ = collect(client.chat.completions.create(model="tiny-random", messages=[USER], tools=[WEATHER], stream=True))
    assert finish == "stop" and (message["reasoning_content"], message["content"], message["tool_calls"]) == ("hmm", f"Checking. {bad}", None)


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_text_and_a_call_together_and_a_call_inside_an_open_think(served, stream):
    def ask(reply, tokenizer=None):
        _, client = served(lambda prompt: reply, tokenizer)
        if stream:
            message, finish, _ = collect(client.chat.completions.create(model="tiny-random", messages=[USER], tools=[WEATHER],
                                                                        stream=True))
        else:
            choice = client.chat.completions.create(model="tiny-random", messages=[USER], tools=[WEATHER]).choices[0]
            message, finish = choice.message.model_dump(include={"content", "reasoning_content", "tool_calls"}), choice.finish_reason
        return finish, message["reasoning_content"], message["content"] or None, [c["function"] for c in message["tool_calls"]]
    function = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert ask(f"<think> I need the weather </think> Let me check. {CALL}") == \
        ("tool_calls", "I need the weather", "Let me check.", [function])
    assert ask(f"I need the weather {CALL}", think_tokenizer()) == ("tool_calls", "I need the weather", None, [function])


def test_the_prompt_through_a_template_that_renders_tools_vs_the_fallback(tokenizer, native):
    history = [USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}]

    def prompt(tokenizer, **fields):
        body = {"model": "m", "messages": history, "tools": [WEATHER], **fields}
        return request_prompt(tokenizer, parse_request(json.dumps(body).encode(), "m", Limits()))
    own = prompt(native)
    assert own.startswith('<|im_start|>system\n[AVAILABLE_TOOLS][{"type": "function", "function": {"name": "get_weather"')
    assert f"{CALL}<|im_end|>\n<|im_start|>tool\n[TOOL_RESULT]Sunny[/TOOL_RESULT]" in own       # arguments as an object
    assert "You may call" not in own and "<tool_response>" not in own
    fallback = prompt(tokenizer)
    assert fallback.startswith("<|im_start|>system\nYou may call one or more functions") and '"name": "get_weather"' in fallback
    assert f"{CALL}<|im_end|>\n<|im_start|>tool\n<tool_response>\nSunny\n</tool_response><|im_end|>" in fallback
    for tokenizer_ in (native, tokenizer):                     # tool_choice none: the history, no tools
        assert "get_weather\", \"description" not in prompt(tokenizer_, tool_choice="none")
        assert CALL in prompt(tokenizer_, tool_choice="none")
    assert request_prompt(tokenizer, parse_request(json.dumps({"model": "m", "messages": [USER]}).encode(), "m", Limits())) == \
        tokenizer.apply_chat_template([USER], add_generation_prompt=True, tokenize=False)     # no tools: as before


PIECES = ["<think>", "</think>", "<tool_call>", "</tool_call>", CALL, CALL, "<tool_c", "all>", "{", '"name"', " ",
          "\n", "x", "先算", "😀", "the answer", '{"name": "f", "arguments": {}}', "<answer>", "</answer>"]


def test_streamed_tool_replies_join_to_the_whole_message_for_random_replies(tokenizer):
    """Property: random replies mixing reasoning, text and (well- or malformed) calls, fed in random steps,
    give deltas that join to `split_reply` of the whole reply, tool calls included."""
    rng = random.Random(0)
    for case in range(300):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 12)))
        ids, tail = tokenizer(text, add_special_tokens=False)["input_ids"], rng.choice(["", "<think>\n"])
        stream, fields, seen = ReplyStream(tokenizer, tail, (), tools=True), {"reasoning_content": "", "content": ""}, 0
        calls = []
        while seen < len(ids):
            seen += rng.randint(1, 3)
            for delta in stream.add(ids[:seen]):
                (key, value), = delta.items()
                fields[key] += value
        for delta in stream.finish(tokenizer.decode(ids)):
            (key, value), = delta.items()
            if key == "tool_calls":
                calls.append(value[0]["function"])
            else:
                fields[key] += value
        reasoning, content, parsed = split_reply(tail + tokenizer.decode(ids), tools=True)
        assert (fields["reasoning_content"], fields["content"]) == (reasoning or "", content), (case, text)
        assert calls == [{"name": c.name, "arguments": json.dumps(c.arguments)} for c in parsed], (case, text)
