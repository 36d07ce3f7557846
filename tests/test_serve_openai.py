"""`r1lab serve` as vLLM users expect it (issue 28): seed honoured, unsupported fields refused (never
ignored), /v1/completions for plain prompts, a streaming client that leaves early stops its generation.
A scripted engine plays the model, and the tiny-random model where sampling itself is the point."""
import json
import threading

import openai
import pytest

from r1lab.models import load_model, tiny_tokenizer
from r1lab.rollout.hf import HFEngine
from r1lab.serve import APIError, parse_request
from r1lab.serve_completions import parse_completion
from serving import LIMITS, connect, metrics, post_head, read_all, start_server, wait_until

USER = [{"role": "user", "content": "Calculate 1 + 2"}]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def scripted(tokenizer, start_scripted):
    """start(reply, delay=0, whole_prompt=False) -> (engine, url, client); servers stop after the test."""
    def start(reply, delay=0.0, whole_prompt=False):
        engine, url = start_scripted(reply, tokenizer, delay, whole_prompt)
        return engine, url, openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    return start


def refused(parse, **fields) -> str:
    """The param of the 400 that parsing a body with `fields` gives."""
    with pytest.raises(APIError) as error:
        parse(json.dumps({"model": "m", **fields}).encode(), "m", LIMITS)
    assert error.value.status == 400 and "not supported" in str(error.value), str(error.value)
    return error.value.body["error"]["param"]


def test_fields_the_server_cannot_honour_are_400s_naming_them_never_ignored():
    for field, value in [("logprobs", True), ("top_logprobs", 2), ("top_logprobs", 20),
                         ("response_format", {"type": "json_object"}),
                         ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}})]:
        assert refused(parse_request, messages=USER, **{field: value}) == field
    ok = parse_request(json.dumps({"model": "m", "messages": USER, "logprobs": False, "top_logprobs": 0,
                                   "response_format": {"type": "text"}, "seed": 7}).encode(), "m", LIMITS)
    assert ok.seed == 7
    completion = lambda raw, served, limits: parse_completion(raw, served, limits, 512)      # noqa: E731
    for field, value in [("stream", True), ("suffix", "!"), ("best_of", 3)]:
        assert refused(completion, prompt="1 + 2 =", **{field: value}) == field
    for prompt in [None, [], [[]], ["a", 5], [3, 512], [[1], "a", 7], {"text": "a"}]:
        with pytest.raises(APIError) as error:
            completion(json.dumps({"model": "m", "prompt": prompt}).encode(), "m", LIMITS)
        assert error.value.body["error"]["param"] == "prompt", prompt


def test_a_seed_makes_samples_repeatable_on_tiny_random():
    """Sampling at temperature 1 from the tiny random model: the same seed gives the same text (alone or
    sharing a batch), in chat and plain completions; the seed reaches the engine."""
    model, tokenizer = load_model("tiny-random")
    server, url = start_server(HFEngine(model.eval(), tokenizer), tokenizer)
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)

        def chat(seed):
            reply = client.chat.completions.create(model="tiny-random", messages=USER, max_tokens=12, seed=seed, n=2)
            return [c.message.content for c in reply.choices]

        def complete(seed):
            reply = client.completions.create(model="tiny-random", prompt=["1 + 2 =", "3 + 4 ="], max_tokens=12, seed=seed)
            return [c.text for c in reply.choices]
        first = chat(11)
        results = {}
        threads = [threading.Thread(target=lambda k=k, f=f, s=s: results.__setitem__(k, f(s)))
                   for k, f, s in [(0, chat, 11), (1, complete, 5), (2, chat, None)]]      # these may share a batch
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results[0] == first and complete(5) == results[1]
    finally:
        server.should_exit = True


def test_completions_for_plain_prompts_in_openais_shape(scripted, tokenizer):
    engine, url, client = scripted(lambda prompt: f" echo [{prompt}] STOP later", whole_prompt=True)
    reply = client.completions.create(model="tiny-random", prompt=["1 + 2 =", "3 + 4 ="], n=2, max_tokens=64, stop=[" STOP"])
    assert reply.object == "text_completion" and reply.model == "tiny-random" and reply.id.startswith("cmpl-")
    assert [(c.index, c.text, c.finish_reason, c.logprobs) for c in reply.choices] == \
        [(0, " echo [1 + 2 =]", "stop", None), (1, " echo [1 + 2 =]", "stop", None),
         (2, " echo [3 + 4 =]", "stop", None), (3, " echo [3 + 4 =]", "stop", None)]
    prompt_ids = [tokenizer(p)["input_ids"] for p in ("1 + 2 =", "3 + 4 =")]
    assert engine.prompt_ids[-2:] == prompt_ids                                         # no chat template
    assert reply.usage.prompt_tokens == sum(map(len, prompt_ids))
    assert reply.usage.completion_tokens == 4 * len(tokenizer(" echo [1 + 2 =] STOP", add_special_tokens=False)["input_ids"])
    by_ids = client.completions.create(model="tiny-random", prompt=[prompt_ids[1]], stop="]")      # token ids
    assert [(c.text, c.finish_reason) for c in by_ids.choices] == [(" echo [3 + 4 =", "stop")]
    assert engine.prompt_ids[-1] == prompt_ids[1]
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model="tiny-random", prompt="", max_tokens=3)
    assert error.value.body["param"] == "prompt"


def test_a_streaming_client_that_leaves_before_any_content_stops_its_generation(scripted, tokenizer):
    """Running: the client closes before any content was sent (a reply held back whole: a tool call);
    its rows leave the batch at the next token, far short of the reply. Queued behind another request:
    the client closes before its batch starts; it is never prefilled."""
    call = '<tool_call>{"name": "f", "arguments": {"x": "' + "a " * 100 + '"}}</tool_call>'
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    release = threading.Event()

    def reply(system, user):
        if user == "first":            # the request ahead: it holds the engine until the test lets it go
            release.wait(30)
        return call if user in ("running", "queued") else "ok"
    engine, url, client = scripted(reply, delay=0.05)

    def ask(content) -> bytes:
        return post_head("/chat/completions", json.dumps({"model": "tiny-random", "stream": True, "tools": tools,
                                                          "messages": [{"role": "user", "content": content}]}).encode())
    sock = connect(url, ask("running"))
    assert wait_until(lambda: engine.batches)
    sock.close()
    assert wait_until(lambda: engine.cancelled == 1) and engine.generated[0] < len(tokenizer(call)["input_ids"])
    assert wait_until(lambda: "r1lab_queue_length 0" in metrics(url))

    blocker = connect(url, ask("first"))
    assert wait_until(lambda: len(engine.batches) == 2)
    queued = connect(url, ask("queued"))
    assert wait_until(lambda: "r1lab_queue_length 2" in metrics(url))
    queued.close()
    assert wait_until(lambda: "r1lab_queue_length 1" in metrics(url))
    release.set()
    read_all(blocker)
    assert client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "last"}]) \
        .choices[0].message.content == "ok"                                     # after the queued one's turn
    assert not any("queued" in p for p in engine.prompts) and engine.cancelled == 1
