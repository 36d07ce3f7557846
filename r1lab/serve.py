"""An OpenAI-compatible server for any checkpoint (DeepSeek's reasoning convention).

    r1lab serve runs/quickstart/grpo/checkpoint [--host 127.0.0.1] [--port 8000] [--api-key-env R1LAB_API_KEY]

`GET /v1/models`, `POST /v1/chat/completions` (messages, temperature, top_p, max_tokens, stop, n,
stream). The text inside `<think>` comes back as `message.reasoning_content` (`delta.reasoning_content`
when streaming) and the answer as `content`, as DeepSeek's API does; `usage` counts tokens.
Concurrent requests are batched: a worker thread collects what arrives within `batch_wait_s` and
runs it as shared generate calls (one per distinct n and sampling settings).

`GET /` is a chat page over the same API (r1lab/static/chat.html): streamed replies with the reasoning
in a collapsible block above the answer, sampling settings, a template picker, a stop button, the
conversation kept in the browser's storage. Safety: loopback by default; an optional Bearer key (401 without it); bad JSON, an unknown model,
max_tokens over the limit, too many messages or bytes get 4xx errors in OpenAI's error shape.
Streaming sends each new token as it is sampled (reasoning and answer deltas apart; text that may be
the start of a tag is held back until it is known); a client that disconnects mid-stream has its rows
dropped from the running batch at the next token.
"""
from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from r1lab.rollout import Sample, Sampling
from r1lab.templates import parse_tags


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a reply: `<think>` text apart; the answer without its `<answer>` tags."""
    if "</think>" in text:
        reasoning, answer = parse_tags(text)
        after = text.split("</think>", 1)[1]
        return reasoning, answer if answer is not None else after.replace("<answer>", "").replace("</answer>", "").strip()
    if "<think>" in text:
        return text.split("<think>", 1)[1].strip(), ""
    return None, text.strip()


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The model's chat template over the messages; plain 'Role: text' lines for models without one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages) + "\nAssistant:"


@dataclass
class _Request:
    prompt: str
    n: int
    sampling: Sampling
    future: Future
    watch: object = None     # optional watch(j, tokens) -> keep going?, for sample j of this request


class Batcher:
    """Runs concurrent requests as shared `engine.generate` calls, from one worker thread."""

    def __init__(self, engine, max_prompts: int = 32, wait_s: float = 0.02):
        self.engine, self.max_prompts, self.wait_s = engine, max_prompts, wait_s
        self.queue: queue.Queue[_Request] = queue.Queue()
        threading.Thread(target=self._loop, daemon=True, name="r1lab-batcher").start()

    def submit(self, prompt: str, n: int, sampling: Sampling, watch=None) -> Future:
        future: Future = Future()
        self.queue.put(_Request(prompt, n, sampling, future, watch))
        return future

    def _loop(self) -> None:
        while True:
            batch = [self.queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_prompts:
                try:
                    batch.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            alike = defaultdict(list)
            for request in batch:
                alike[(request.n, request.sampling)].append(request)
            for (n, sampling), requests in alike.items():
                def watch(k, tokens, requests=requests, n=n):
                    request = requests[k // n]
                    return request.watch is None or request.watch(k % n, tokens)
                try:
                    results = self.engine.generate([r.prompt for r in requests], n, sampling, watch)
                except Exception as e:     # the server stays up; each waiting request gets the error
                    for r in requests:
                        r.future.set_exception(e)
                    continue
                for r, samples in zip(requests, results):
                    r.future.set_result(samples)


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 2048         # largest max_tokens a request may ask for
    max_messages: int = 64         # messages per request
    max_bytes: int = 1_000_000     # request body size
    max_n: int = 8                 # completions per request


def parse_request(raw: bytes, served: str, limits: Limits) -> tuple[list[dict], int, Sampling, bool]:
    """(messages, n, sampling, stream) from a request body, or an APIError naming the field."""
    if len(raw) > limits.max_bytes:
        raise APIError(413, f"request body is {len(raw)} bytes; the limit is {limits.max_bytes}")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"invalid JSON body: {e}") from None
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object")
    if body.get("model") != served:
        raise APIError(404, f"model {body.get('model')!r} does not exist; this server serves {served!r}",
                       param="model", code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    if len(messages) > limits.max_messages:
        raise APIError(400, f"{len(messages)} messages; the limit is {limits.max_messages}", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise APIError(400, f"messages[{i}] must be {{role: system|user|assistant, content: string}}", param=f"messages[{i}]")

    def number(name, default, kind, low, high):
        value = body.get(name, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()) \
                or not low <= value <= high:
            raise APIError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'} in [{low}, {high}], "
                                f"got {value!r}", param=name)
        return kind(value)

    max_tokens = number("max_tokens", body.get("max_completion_tokens", min(512, limits.max_tokens)), int, 1, limits.max_tokens)
    n = number("n", 1, int, 1, limits.max_n)
    temperature = number("temperature", 1.0, float, 0.0, 2.0)
    top_p = number("top_p", 1.0, float, 1e-6, 1.0)
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, "'stop' must be a string or a list of up to 4 non-empty strings", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be a boolean", param="stream")
    return messages, n, Sampling(temperature, top_p, max_tokens, tuple(stop)), stream


def _trim(text: str, stop: tuple[str, ...]) -> str:
    """OpenAI semantics: the stop sequence is not part of the reply."""
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text if cut < 0 else text[:cut]


_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def partial_split(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a reply still being written, safe to stream: a tail that may be the start
    of a tag is held back, and trailing whitespace waits for the next word."""
    for k in range(min(len(text), max(map(len, _TAGS))), 0, -1):
        if any(tag.startswith(text[-k:]) for tag in _TAGS):
            text = text[:-k]
            break
    if "</think>" in text:
        before, after = text.split("</think>", 1)
        reasoning = before.split("<think>", 1)[-1]
        answer = after.replace("<answer>", "").replace("</answer>", "")
    elif "<think>" in text:
        reasoning, answer = text.split("<think>", 1)[1], ""
    else:
        reasoning, answer = "", text
    return reasoning.strip(), answer.strip()


def build_app(engine, tokenizer, served: str, api_key: str | None = None, limits: Limits = Limits(),
              batch_wait_s: float = 0.02):
    app = FastAPI(title="r1lab", docs_url=None, redoc_url=None)
    batcher = Batcher(engine, wait_s=batch_wait_s)

    @app.exception_handler(APIError)
    async def api_error(request, error: APIError):
        return JSONResponse(error.body, status_code=error.status)

    @app.exception_handler(Exception)
    async def unexpected(request, error: Exception):
        return JSONResponse(APIError(500, f"internal error: {type(error).__name__}: {error}", "server_error").body,
                            status_code=500)

    def authorise(request: Request) -> None:
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            raise APIError(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error",
                           code="invalid_api_key")

    async def stream_events(prompt: str, n: int, sampling: Sampling, ident: str, created: int):
        """Server-sent events: a delta per new token, reasoning and answer apart; disconnect cancels."""
        loop, updates, gone = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()

        def watch(j, tokens):
            loop.call_soon_threadsafe(updates.put_nowait, (j, list(tokens)))
            return not gone.is_set()
        future = batcher.submit(prompt, n, sampling, watch)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(updates.put_nowait, None))

        def chunk(index, delta, finish=None):
            return "data: " + json.dumps({"id": ident, "object": "chat.completion.chunk", "created": created,
                                          "model": served, "choices": [{"index": index, "delta": delta,
                                                                        "finish_reason": finish}]}) + "\n\n"
        sent = [("", "") for _ in range(n)]

        def deltas(j, reasoning, answer):
            old_reasoning, old_answer = sent[j]
            if reasoning.startswith(old_reasoning) and len(reasoning) > len(old_reasoning):
                yield chunk(j, {"reasoning_content": reasoning[len(old_reasoning):]})
                old_reasoning = reasoning
            if answer.startswith(old_answer) and len(answer) > len(old_answer):
                yield chunk(j, {"content": answer[len(old_answer):]})
                old_answer = answer
            sent[j] = (old_reasoning, old_answer)
        try:
            for j in range(n):
                yield chunk(j, {"role": "assistant", "content": ""})
            while (update := await updates.get()) is not None:
                j, tokens = update
                for event in deltas(j, *partial_split(_trim(tokenizer.decode(tokens, skip_special_tokens=True), sampling.stop))):
                    yield event
            try:
                samples = future.result()
            except Exception as e:
                yield "data: " + json.dumps(APIError(500, f"generation failed: {e}", "server_error").body) + "\n\n"
                return
            for j, sample in enumerate(samples):
                reasoning, answer = split_reasoning(_trim(sample.text, sampling.stop))
                for event in deltas(j, reasoning or "", answer):
                    yield event
                yield chunk(j, {}, sample.finish_reason)
            yield "data: [DONE]\n\n"
        finally:
            gone.set()     # a client that went away: its rows leave the batch at the next token

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        """A chat page over this API (no external assets: it works offline)."""
        return (Path(__file__).parent / "static" / "chat.html").read_text(encoding="utf-8")

    @app.get("/v1/models")
    async def models(request: Request):
        authorise(request)
        return {"object": "list", "data": [{"id": served, "object": "model", "created": 0, "owned_by": "r1lab"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        authorise(request)
        declared = request.headers.get("content-length", "0")
        if declared.isdigit() and int(declared) > limits.max_bytes:      # refuse before reading a huge body
            raise APIError(413, f"request body is {declared} bytes; the limit is {limits.max_bytes}")
        messages, n, sampling, stream = parse_request(await request.body(), served, limits)
        prompt = chat_prompt(tokenizer, messages)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if stream:
            return StreamingResponse(stream_events(prompt, n, sampling, ident, created), media_type="text/event-stream")
        samples: list[Sample] = await asyncio.wrap_future(batcher.submit(prompt, n, sampling))
        prompt_tokens = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        replies = [(split_reasoning(_trim(s.text, sampling.stop)), s.finish_reason) for s in samples]
        completion_tokens = sum(len(s.token_ids) for s in samples)
        return {"id": ident, "object": "chat.completion", "created": created, "model": served,
                "choices": [{"index": i, "finish_reason": finish, "logprobs": None,
                             "message": {"role": "assistant", "content": content, "reasoning_content": reasoning}}
                            for i, ((reasoning, content), finish) in enumerate(replies)],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    return app


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None) -> None:
    import uvicorn

    from r1lab.models import load_model
    from r1lab.rollout.hf import HFEngine

    network_model, tokenizer = load_model(model)
    app = build_app(HFEngine(network_model.eval(), tokenizer, max_batch=64), tokenizer, model, api_key)
    print(f"r1lab serving {model}: chat page http://{host}:{port}/ , API http://{host}:{port}/v1 (model name {model!r})")
    uvicorn.run(app, host=host, port=port, log_level="warning")
