"""The API fuzz (issue 29): random wrong-typed values in every field of both request kinds get an answer in
OpenAI's error shape (or a normal reply where the value is acceptable), never a 500, and the server's
/metrics counts no 500."""
import json
import random
import urllib.error
import urllib.request

import pytest

from r1lab.models import tiny_tokenizer
from tests.serving import ScriptedEngine, start_server

WRONG = [None, True, -1, 0, 1.5, 1e308, float("nan"), "x", "", "x" * 5000, [], [1], ["a", 2], {}, {"a": 1},
         [[{}]], {"type": None}, "\ud800", -10 ** 30]
CHAT_FIELDS = ["model", "messages", "temperature", "top_p", "max_tokens", "n", "stop", "stream", "stream_options",
               "tools", "tool_choice", "seed", "logprobs", "top_logprobs", "response_format", "user", "frequency_penalty"]
COMPLETION_FIELDS = ["model", "prompt", "temperature", "top_p", "max_tokens", "n", "stop", "stream", "seed", "echo",
                     "logprobs"]
MESSAGE_FIELDS = ["role", "content", "tool_calls", "name", "tool_call_id"]


def post(url: str, body: bytes) -> tuple[int, dict | None]:
    """(status, JSON body or None) of a POST, with the standard library only."""
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def dumps(body) -> bytes:
    """JSON as a client could send it: NaN as the token NaN, lone surrogates escaped."""
    return json.dumps(body, allow_nan=True).encode()


@pytest.fixture(scope="module")
def server():
    tokenizer = tiny_tokenizer()
    engine = ScriptedEngine(lambda system, user: "<think> ok </think> <answer> 6 </answer>", tokenizer)
    server, url = start_server(engine, tokenizer)
    yield url
    server.should_exit = True


def test_wrong_values_in_every_api_field_are_answered_never_with_a_500(server):
    rng = random.Random(0)
    base_chat = {"model": "tiny-random", "messages": [{"role": "user", "content": "Calculate 1 + 2"}], "max_tokens": 8}
    base_completion = {"model": "tiny-random", "prompt": "Calculate 1 + 2", "max_tokens": 8}
    statuses = []
    for path, base, fields in (("/chat/completions", base_chat, CHAT_FIELDS),
                               ("/completions", base_completion, COMPLETION_FIELDS)):
        for field in fields:
            for value in rng.sample(WRONG, 8):
                status, error = post(server + path, dumps({**base, field: value}))
                statuses.append(status)
                assert status != 500, (path, field, value, error)
                if status >= 400:
                    assert error["error"]["message"], (path, field, value)
    for field in MESSAGE_FIELDS:                         # inside a message
        for value in rng.sample(WRONG, 8):
            message = {"role": "user", "content": "hi", field: value}
            status, error = post(server + "/chat/completions", dumps({**base_chat, "messages": [message]}))
            statuses.append(status)
            assert status != 500, (field, value, error)
    with urllib.request.urlopen(server.removesuffix("/v1") + "/metrics", timeout=30) as response:
        metrics = response.read().decode()
    assert len(statuses) > 250 and any(s == 400 for s in statuses) and any(s == 200 for s in statuses)
    assert 'status="500"' not in metrics
