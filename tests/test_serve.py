import hmac
import json
import logging
import random
import re
import select
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from r1lab import R1labError
from r1lab.llm import make_llm
from r1lab.models import load_model, tiny_tokenizer
from r1lab.rollout.hf import HFEngine
from r1lab.serve import APIError, Limits, parse_request, serve
from r1lab.streaming import ReplyStream, split_reasoning, trim_stop
from serving import LIMITS, start_server, talk_snippets, think_tokenizer


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model("tiny-random")
    return model.eval(), tokenizer


@pytest.fixture
def scripted(tiny, start_scripted):
    def start(reply, api_key=None, delay=0.0, tokenizer=None, limits=LIMITS, context=None):
        return start_scripted(reply, tokenizer or tiny[1], delay, api_key=api_key, limits=limits, context=context)
    return start


def arithmetic_reply(system, user):
    return f"<think> The user asked: {user} </think> <answer> 6 </answer>"


def sentencepiece_tokenizer():
    """A Llama-2-style tokenizer (SentencePiece BPE with byte fallback; decoding drops the first space),
    trained on a few words: most characters come out as several byte tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)],
                                  show_progress=False)
    tokenizer.train_from_iterator(["<think> the answer is 1 + 2 = 3 </think> <answer> 3 </answer>"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>")


PIECES = ["<think>", "</think>", "<answer>", "</answer>", "<", "</", "<thi", "nk>", "</ans", "wer>", " ", "  ", "\n",
          "\u3000", "先", "算一下", "答案", "😀", "🧮", "👩‍🔬", "é", "Жук", "नमस्ते", "x", "the answer", "1 + 2", " = 3"]


def joined(stream: ReplyStream, ids: list[int], text: str, rng: random.Random) -> tuple[str, str]:
    """(reasoning, content): the deltas of a reply fed in random steps of 1-3 tokens, then finished."""
    fields, seen = {"reasoning_content": "", "content": ""}, 0
    while seen < len(ids):
        seen += rng.randint(1, 3)
        deltas = stream.add(ids[:seen])
        for delta in deltas:
            (key, value), = delta.items()
            assert value and "\ufffd" not in value, delta          # never a half character
            fields[key] += value
    for delta in stream.finish(text):
        (key, value), = delta.items()
        fields[key] += value
    return fields["reasoning_content"], fields["content"]


@pytest.mark.parametrize("make_tokenizer", [tiny_tokenizer, sentencepiece_tokenizer])
def test_streamed_deltas_join_to_the_whole_message_for_random_replies(make_tokenizer):
    """Property: for random replies (mixed scripts, CJK, emoji, tags split across tokens, stop strings,
    prompts that open <think>), split into tokens at random (characters split into their bytes), the
    deltas joined are the non-streamed message, field by field."""
    tokenizer, rng = make_tokenizer(), random.Random(0)
    byte_tokens = {piece: tokenizer.convert_tokens_to_ids(piece) for piece in tokenizer.get_vocab()}
    for case in range(400):
        text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30)))
        ids = []
        for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
            piece = tokenizer.convert_ids_to_tokens(token)
            split = rng.random() < 0.3 and len(piece) > 1 and all(c in byte_tokens for c in piece)
            ids += [byte_tokens[c] for c in piece] if split else [token]      # the same bytes, more tokens
        whole = tokenizer.decode(ids, skip_special_tokens=True)
        tail, stop = rng.choice(["", "<think>\n", "<think>"]), tuple(rng.sample(["</answer>", " = 3", "😀"], rng.randint(0, 2)))
        reasoning, content = split_reasoning(tail + trim_stop(whole, stop))
        assert joined(ReplyStream(tokenizer, tail, stop), ids, whole, rng) == (reasoning or "", content), (case, whole)


def test_a_reply_streams_token_by_token_in_any_script():
    tokenizer = tiny_tokenizer()
    for tail, reply, reasoning, answer in [
            ("", "<think> 先算一下 🧮 1 + 2 = 3 </think> <answer> 3 </answer>", "先算一下 🧮 1 + 2 = 3", "3"),
            ("<think>\n", "先算一下 🧮 1 + 2 = 3 </think>\n\n答案是 3。", "先算一下 🧮 1 + 2 = 3", "答案是 3。")]:
        ids, stream, sent = tokenizer(reply, add_special_tokens=False)["input_ids"], ReplyStream(tokenizer, tail), []
        for k in range(1, len(ids) + 1):
            sent.append(stream.add(ids[:k]))
        streamed = ["".join(d.get(key, "") for deltas in sent for d in deltas) for key in ("reasoning_content", "content")]
        assert streamed == [reasoning, answer]                     # all of it before the end
        assert sum(1 for deltas in sent if deltas) > 8               # in many pieces, as the tokens came
        assert stream.finish(tokenizer.decode(ids)) == []


def test_split_reasoning():
    assert split_reasoning("<think> a </think> <answer> 6 </answer>") == ("a", "6")
    assert split_reasoning("<think> a </think> The answer is 6.") == ("a", "The answer is 6.")
    assert split_reasoning("<think> still thinking") == ("still thinking", "")
    assert split_reasoning(" plain ") == (None, "plain")
    assert split_reasoning("<think>\n" + "a </think> <answer> 6 </answer> later") == ("a", "6")   # the prompt opened it
    assert split_reasoning("<answer> 6 </answer>") == (None, "6")


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
        tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}
        for stream in (False, True):      # with tools: the prompt through r1lab.tools, </tool_call> a stop string
            reply = client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "Add 1 + 2"}],
                                                   max_tokens=8, tools=[tool], stream=stream)
            finishes = [c.choices[0].finish_reason for c in reply if c.choices] if stream else [reply.choices[0].finish_reason]
            assert finishes[-1] in ("stop", "length", "tool_calls")
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


def raw_post(url, data: bytes, headers=None, path="/chat/completions", method="POST"):
    """(status, JSON body, headers) of a request, error statuses included."""
    request = urllib.request.Request(url + path, data, {"Content-Type": "application/json", **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


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
        (json.dumps({**ok, "messages": [{"role": "user", "content": "\ud800 lone"}]}).encode(), auth, 400),  # a lone surrogate
        (b"[" * 9_000 + b"]" * 9_000, auth, 400),                                       # too deep for the parser
        (json.dumps({**ok, "stream_options": "yes"}).encode(), auth, 400),
    ]
    for data, headers, status in cases:
        code, body, _ = raw_post(url, data, headers)
        assert code == status and set(body["error"]) >= {"message", "type", "code"}, (data[:60], code, body)
        assert "internal" not in body["error"]["message"]
    assert raw_post(url, json.dumps(ok).encode(), auth)[0] == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="wrong").models.list()
    for path, method, status in [("/nope", "GET", 404), ("/chat/completions", "GET", 405)]:    # unknown routes
        code, body, _ = raw_post(url, None, auth, path, method)
        assert code == status and body["error"]["message"] == f"Invalid URL ({method} /v1{path})", body


def test_100k_deep_json_is_a_400():
    with pytest.raises(APIError) as error:
        parse_request(b"[" * 100_000 + b"]" * 100_000, "tiny-random", Limits())
    assert error.value.status == 400 and "nested too deeply" in str(error.value)


def test_a_chunked_body_is_counted_while_it_arrives_and_refused_at_the_limit(scripted):
    """50 MB sent chunked, without Content-Length: the 413 comes once the limit (20 kB here) is passed,
    while the client is still sending, not after the server has read it all."""
    _, url = scripted(arithmetic_reply)
    host, port = url.split("//")[1].split("/")[0].split(":")
    chunk, total, sent = b"x" * 65_536, 50_000_000, 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        while sent < total and not select.select([sock], [], [], 0)[0]:      # until the server answers
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                break
            sent += len(chunk)
        response = sock.recv(65_536)
    assert response.startswith(b"HTTP/1.1 413") and sent < total / 5, (response[:100], sent)


def test_a_prompt_over_a_limit_is_a_400_for_that_request_alone_before_any_prefill(scripted):
    engine, url = scripted(arithmetic_reply, limits=Limits(max_tokens=64, max_prompt_tokens=50), context=60)

    def ask(content, max_tokens):
        body = {"model": "tiny-random", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}
        return raw_post(url, json.dumps(body).encode())
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(ask, ["hi", "1 + 2 " * 60, "hi", "hello"], [8, 8, 8, 55]))
    assert [code for code, _, _ in results] == [200, 400, 200, 400]
    assert "takes at most 50 (--max-prompt-tokens)" in results[1][1]["error"]["message"]
    assert "maximum context length is 60 tokens" in results[3][1]["error"]["message"]
    assert results[3][1]["error"]["code"] == "context_length_exceeded"
    assert len(engine.prompts) == 2 and not any("1 + 2" in p or "hello" in p for p in engine.prompts)   # never prefilled


def test_past_the_queue_limit_a_429_with_retry_after(scripted):
    _, url = scripted(lambda system, user: "<think> " + "step " * 30 + "</think>", delay=0.01,
                      limits=Limits(max_tokens=64, max_queue=2))
    body = json.dumps({"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}]}).encode()
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: raw_post(url, body), range(6)))
    assert sorted(code for code, _, _ in results) == [200, 200, 429, 429, 429, 429]
    refused = [(body, headers) for code, body, headers in results if code == 429]
    assert all(headers["Retry-After"] and "--max-queue 2" in body["error"]["message"] for body, headers in refused)


def test_a_real_500_names_only_a_request_id_and_the_log_has_the_traceback(scripted, caplog):
    def broken(system, user):
        raise TypeError("TextEncodeInput must be Union[secret internals]")
    _, url = scripted(broken)
    caplog.set_level(logging.INFO, logger="r1lab.serve")
    code, body, _ = raw_post(url, json.dumps({"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}]}).encode())
    message = body["error"]["message"]
    assert code == 500 and "secret" not in message and "TypeError" not in message
    ident = re.search(r"req-[0-9a-f]+", message).group()
    failure = next(r for r in caplog.records if ident in r.getMessage())
    assert failure.exc_info and "secret internals" in str(failure.exc_info[1])


def test_the_api_key_is_compared_in_constant_time(scripted, monkeypatch):
    compared, constant_time = [], hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append(b) or constant_time(a, b))
    _, url = scripted(arithmetic_reply, api_key="sesame")
    assert raw_post(url, None, {"Authorization": "Bearer wrong"}, "/models", "GET")[0] == 401
    assert raw_post(url, None, {"Authorization": "Bearer sesame"}, "/models", "GET")[0] == 200
    assert compared == [b"Bearer sesame"] * 2


def test_a_port_in_use_is_one_clear_error_before_the_banner_and_the_model(capsys, monkeypatch):
    monkeypatch.setattr("r1lab.models.load_model", lambda *a: pytest.fail("loaded the model before taking the port"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(R1labError, match=f"port {busy.getsockname()[1]} on 127.0.0.1 is already in use"):
            serve("tiny-random", port=busy.getsockname()[1])
    assert "serving" not in capsys.readouterr().out


def test_health_metrics_the_access_log_and_the_limits_in_models(scripted, caplog):
    caplog.set_level(logging.INFO, logger="r1lab.serve")
    _, url = scripted(arithmetic_reply)
    base = url.removesuffix("/v1")
    assert json.loads(urllib.request.urlopen(base + "/health").read()) == {"status": "ok"}
    card = json.loads(urllib.request.urlopen(url + "/models").read())["data"][0]
    assert card["id"] == "tiny-random" and card["max_tokens"] == LIMITS.max_tokens
    reply = openai.OpenAI(base_url=url, api_key="none").chat.completions.create(
        model="tiny-random", messages=[{"role": "user", "content": "Calculate 1 + 2"}])
    usage, deadline = reply.usage, time.monotonic() + 10
    while time.monotonic() < deadline:
        metrics = urllib.request.urlopen(base + "/metrics").read().decode()
        if f"r1lab_completion_tokens_total {usage.completion_tokens}" in metrics:
            break
        time.sleep(0.05)
    assert f"r1lab_prompt_tokens_total {usage.prompt_tokens}" in metrics and "r1lab_queue_length 0" in metrics
    assert 'r1lab_requests_total{status="200"}' in metrics
    lines = [r.getMessage() for r in caplog.records if '"POST /v1/chat/completions"' in r.getMessage()]
    assert len(lines) == 1 and f" 200 in={usage.prompt_tokens} out={usage.completion_tokens} " in lines[0], lines


def test_the_chat_page_has_an_inline_favicon_and_takes_the_limit_from_the_server(scripted):
    _, url = scripted(arithmetic_reply)
    page = urllib.request.urlopen(url.removesuffix("/v1") + "/").read().decode()
    assert '<link rel="icon" href="data:image/svg+xml,' in page and "body.data[0].max_tokens" in page


def test_through_the_server_streamed_equals_whole_with_cjk_emoji_and_a_template_that_opens_think(scripted):
    _, url = scripted(lambda system, user: f"先算一下 🧮: {user} </think>\n\n答案是 6。", tokenizer=think_tokenizer())
    client = openai.OpenAI(base_url=url, api_key="none")
    messages = [{"role": "user", "content": "Calculate 1 + 2 + 3"}]
    whole = client.chat.completions.create(model="tiny-random", messages=messages)
    assert (whole.choices[0].message.reasoning_content, whole.choices[0].message.content) == \
        ("先算一下 🧮: Calculate 1 + 2 + 3", "答案是 6。")
    reasoning, content, usage = "", "", []
    for chunk in client.chat.completions.create(model="tiny-random", messages=messages, stream=True,
                                                stream_options={"include_usage": True}):
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
        usage += [chunk.usage] if chunk.usage else []
    assert (reasoning, content) == (whole.choices[0].message.reasoning_content, whole.choices[0].message.content)
    assert len(usage) == 1 and usage[0].model_dump() == whole.usage.model_dump()


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
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _, url = scripted(agentjo_reply)
    res, calls, agent = talk_snippets(make_llm(url, max_tokens=64))
    assert res == {"Main Category": "Technology and Innovation",
                   "Sub-categories": ["Artificial Intelligence", "Machine Learning", "Data Science"]}
    assert calls == APPOINTMENTS and agent.task_completed
