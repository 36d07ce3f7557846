"""An OpenAI-compatible server for any checkpoint (DeepSeek's reasoning convention).

    r1lab serve runs/quickstart/grpo/checkpoint [--host 127.0.0.1] [--port 8000] [--served-model-name NAME]
        [--api-key-env VAR] [--max-tokens 2048] [--max-prompt-tokens N] [--max-queue 256] [--threads N]

Routes: `POST /v1/chat/completions` (messages, temperature, top_p, max_tokens, stop, n, seed, stream,
stream_options.include_usage, tools, tool_choice; logprobs, top_logprobs and a response_format other
than text are refused, not ignored: r1lab/serve_request.py), `POST /v1/completions` (plain prompts, not
streamed, with `logprobs` and `echo`: r1lab/serve_completions.py), `GET /v1/models` (with `max_model_len` and this server's
`max_tokens`), `GET /health`, `GET /metrics` (Prometheus text: requests by status, tokens, queue length)
and `GET /`, a chat page over the same API (r1lab/static/chat.html). Concurrent requests are batched
(r1lab/serve_batch.py): a worker thread runs what arrives within `batch_wait_s` as shared generate calls.

The prompt reaches the engine as token ids in which only the chat template writes special tokens: a
`<|im_end|>` typed into a message is text, never a control token (r1lab/serve_prompt.py).

Reasoning is split from the answer, and streamed, by r1lab/streaming.py (`split_reasoning`,
`ReplyStream`: each field's deltas joined are exactly the non-streamed message). A client that goes
away, streamed or not, is not served to the end: its request, still queued, is skipped; running (before
its first token or after), its rows leave the batch at the next token. A non-streamed one is then logged
and counted as a 499.

Tools, as OpenAI's API has them (the client runs them; what a request may hold: r1lab/serve_request.py):
a request with tools, or tool turns in its messages, is rendered by `r1lab.tools.chat_with_tools`;
with tools, generation stops at the first complete `<tool_call>..</tool_call>`, and a reply that is a
well-formed call (its arguments strict JSON: no NaN or Infinity) comes back as `tool_calls` (finish_reason
"tool_calls"; streamed, as the last deltas) after its reasoning_content and any text before it; a
malformed call comes back as plain content. Replies are strict JSON, and a lone surrogate the model
wrote (as a `\\ud800` escape in a call) is sent as U+FFFD, never a 500.

Limits, each answered in OpenAI's error shape before any work: a body over `max_bytes` (counted while
reading, chunked or not: 413) or not complete within `body_timeout_s` (408); a prompt over
`--max-prompt-tokens` or, with max_tokens, over the model's context (400, before any prefill); more than
`--max-queue` requests waiting or running (429 with Retry-After); bad JSON, JSON nested too deep, a lone
surrogate, a field out of range (400); a wrong API key (401, compared in constant time); an unknown model
(404) or route (404/405). A connection whose request headers are not complete within `header_timeout_s`
of its opening or of its last reply is closed (uvicorn times out only idle keep-alive connections; a
header block over h11's 16 KiB is uvicorn's 400). A client that disconnects while sending its body is a
499, not a failure. Any other failure is a 500 that names only a request id; the traceback is in the
server's log, beside one access line per request (method, path, status, tokens in/out, seconds).
A port out of 0..65535 or in use is an error before the model loads.
"""
from __future__ import annotations

import asyncio
import errno
import hmac
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from jinja2 import TemplateError
from starlette.exceptions import HTTPException

from r1lab import R1labError
from r1lab.rollout import Sample
from r1lab.serve_batch import Batcher, answer
from r1lab.serve_completions import complete
from r1lab.serve_prompt import PromptEncoder
from r1lab.serve_request import APIError, ChatRequest, Limits, check_prompt, parse_request, read_body
from r1lab.streaming import ReplyStream, reply_message, trim_stop
from r1lab.templates import prompt_tail

log = logging.getLogger("r1lab.serve")


SURROGATE = re.compile(r"[\ud800-\udfff]")


def dumps(body) -> str:
    """Strict JSON (no NaN or Infinity) that encodes as UTF-8: a lone surrogate becomes U+FFFD."""
    return SURROGATE.sub("\ufffd", json.dumps(body, ensure_ascii=False, allow_nan=False))


class StrictJSON(JSONResponse):
    def render(self, content) -> bytes:
        return dumps(content).encode("utf-8")


class Metrics:
    """Counters for /metrics, in Prometheus' text format."""

    def __init__(self, batcher: Batcher):
        self.batcher, self.requests, self.tokens = batcher, Counter(), Counter()

    def text(self) -> str:
        lines = ["# TYPE r1lab_requests_total counter"]
        lines += [f'r1lab_requests_total{{status="{status}"}} {count}' for status, count in sorted(self.requests.items())]
        for kind in ("prompt", "completion"):
            lines += [f"# TYPE r1lab_{kind}_tokens_total counter", f"r1lab_{kind}_tokens_total {self.tokens[kind]}"]
        lines += ["# TYPE r1lab_queue_length gauge", f"r1lab_queue_length {self.batcher.pending}"]
        return "\n".join(lines) + "\n"


def access_log(app, metrics: Metrics):
    """ASGI wrapper: one log line per request (method, path, status, tokens in/out, seconds), counted in
    the metrics. An exception after its 500 was sent was logged with its request id: not again (uvicorn
    would print its traceback a second time, without the id)."""
    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        began, status = time.monotonic(), []
        scope.setdefault("state", {})

        async def sending(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)
        try:
            await app(scope, receive, sending)
        except Exception:
            if not status:
                raise
        finally:
            usage = scope["state"].get("usage", {})
            metrics.requests[status[0] if status else 500] += 1
            for kind in ("prompt", "completion"):            # the tokens of answered requests
                metrics.tokens[kind] += usage.get(f"{kind}_tokens", 0) if status and status[0] < 400 else 0
            log.info('%s "%s %s" %s in=%s out=%s %.2f s', (scope.get("client") or ("-",))[0], scope["method"],
                     scope["path"], status[0] if status else "-", usage.get("prompt_tokens", "-"),
                     usage.get("completion_tokens", "-"), time.monotonic() - began)
    return wrapped


def add_error_handlers(app: FastAPI) -> None:
    """OpenAI's error shape for every failure; anything unexpected is a 500 naming only a request id (the
    traceback goes to the log)."""
    @app.exception_handler(APIError)
    async def api_error(request, error: APIError):
        return StrictJSON(error.body, status_code=error.status, headers=error.headers)

    @app.exception_handler(R1labError)
    async def user_error(request, error: R1labError):
        return JSONResponse(APIError(400, str(error)).body, status_code=400)

    @app.exception_handler(HTTPException)
    async def no_route(request, error: HTTPException):
        return JSONResponse(APIError(error.status_code, f"Invalid URL ({request.method} {request.url.path})").body,
                            status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request, error: Exception):
        ident = f"req-{uuid.uuid4().hex[:12]}"
        log.error("request %s failed", ident, exc_info=error)
        return JSONResponse(APIError(500, f"internal error; the server log has the details (request id {ident})",
                                     "server_error").body, status_code=500)


async def chat_stream(batcher, tokenizer, served: str, prompt: str, ids: list[int], chat: ChatRequest, ident: str,
                      created: int, usage: dict):
    """Server-sent events: a delta per new token, reasoning and answer apart; a disconnect (Starlette
    cancels this generator) drops the request, queued or running."""
    loop, updates, gone = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()

    def watch(j, tokens):
        loop.call_soon_threadsafe(updates.put_nowait, (j, list(tokens)))
        return not gone.is_set()
    future = batcher.submit(ids, chat.n, chat.sampling, watch, chat.seed)
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(updates.put_nowait, None))
    replies = [ReplyStream(tokenizer, prompt_tail(prompt), chat.stop, bool(chat.tools)) for _ in range(chat.n)]

    def event(body: dict) -> str:
        return "data: " + dumps({"id": ident, "object": "chat.completion.chunk", "created": created,
                                 "model": served, **body}) + "\n\n"

    def chunk(index, delta, finish=None):
        return event({"choices": [{"index": index, "delta": delta, "finish_reason": finish}]})
    try:
        for j in range(chat.n):
            yield chunk(j, {"role": "assistant", "content": ""})
        while (update := await updates.get()) is not None:
            j, tokens = update
            for delta in replies[j].add(tokens):
                yield chunk(j, delta)
        try:
            samples = future.result()
        except Exception as e:
            if isinstance(e, R1labError):
                message = str(e)
            else:
                message = f"generation failed; the server log has the details (request id {ident})"
                log.error("request %s failed", ident, exc_info=e)
            yield "data: " + dumps(APIError(500, message, "server_error").body) + "\n\n"
            return
        for j, sample in enumerate(samples):
            for delta in replies[j].finish(sample.text):
                yield chunk(j, delta)
            yield chunk(j, {}, "tool_calls" if replies[j].calls else sample.finish_reason)
        usage["completion_tokens"] = sum(len(s.token_ids) for s in samples)
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if chat.include_usage:
            yield event({"choices": [], "usage": usage})
        yield "data: [DONE]\n\n"
    finally:
        gone.set()         # a client that went away: its rows leave the batch at the next token,
        future.cancel()    # or, still queued, it is skipped


def build_app(engine, tokenizer, served: str, api_key: str | None = None, limits: Limits = Limits(),
              batch_wait_s: float = 0.02, context: int | None = None):
    """The ASGI app: `context` is the model's context length in tokens (None: not checked)."""
    app = FastAPI(title="r1lab", docs_url=None, redoc_url=None, openapi_url=None)
    batcher, encoder = Batcher(engine, wait_s=batch_wait_s), PromptEncoder(tokenizer)
    metrics = Metrics(batcher)

    add_error_handlers(app)

    def authorise(request: Request) -> None:
        given = request.headers.get("authorization", "").encode("latin-1")
        if api_key and not hmac.compare_digest(given, f"Bearer {api_key}".encode()):
            raise APIError(401, "missing or wrong API key (Authorization: Bearer ...)", "authentication_error",
                           code="invalid_api_key")

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        """A chat page over this API (no external assets: it works offline)."""
        return (Path(__file__).parent / "static" / "chat.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus():
        return metrics.text()

    @app.get("/v1/models")
    async def models(request: Request):
        authorise(request)
        return {"object": "list", "data": [{"id": served, "object": "model", "created": 0, "owned_by": "r1lab",
                                            "max_model_len": context, "max_tokens": limits.max_tokens}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        authorise(request)
        chat = parse_request(await read_body(request, limits), served, limits)
        try:
            prompt, ids = await asyncio.to_thread(encoder.chat, chat)
        except TemplateError as e:
            raise APIError(400, f"the model's chat template refuses these messages: {e}", param="messages") from None
        usage = request.state.usage = {"prompt_tokens": len(ids)}
        check_prompt(len(ids), chat.sampling.max_new_tokens, limits, context)
        batcher.check_room(1, limits.max_queue)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if chat.stream:
            return StreamingResponse(chat_stream(batcher, tokenizer, served, prompt, ids, chat, ident, created, usage),
                                     media_type="text/event-stream")
        samples: list[Sample] = (await answer(request.receive, batcher, [ids], chat.n, chat.sampling, chat.seed))[0]
        tail = prompt_tail(prompt)
        messages = [reply_message(tail + trim_stop(s.text, chat.stop), bool(chat.tools)) for s in samples]
        usage["completion_tokens"] = sum(len(s.token_ids) for s in samples)
        usage["total_tokens"] = len(ids) + usage["completion_tokens"]
        return StrictJSON({"id": ident, "object": "chat.completion", "created": created, "model": served,
                           "choices": [{"index": i, "finish_reason": "tool_calls" if "tool_calls" in message
                                        else s.finish_reason, "logprobs": None, "message": message}
                                       for i, (message, s) in enumerate(zip(messages, samples))],
                           "usage": usage})

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorise(request)
        return StrictJSON(await complete(request, batcher, encoder, served, limits, context))

    return access_log(app, metrics)


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port for uvicorn, or one clear error (port out of range or in use, address not here)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise R1labError(f"--port {port}: a port is an integer in 0..65535 (0: any free port)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise R1labError(f"port {port} on {host} is already in use (another server?); choose another with --port") from None
        raise R1labError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def header_timeout_protocol(timeout_s: float):
    """uvicorn's h11 protocol, and a connection whose request headers are not complete within `timeout_s`
    of its opening or of its last reply is closed: uvicorn's `timeout_keep_alive` stops counting at the
    first byte of a request, so a client that never finishes its headers would hold the connection."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeout(H11Protocol):
        timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            if self.timer is not None:
                self.timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self.timer is not None:
                self.timer.cancel()
            if not self.transport.is_closing():
                self.timer = self.loop.call_later(timeout_s, self._late)

        def _late(self) -> None:
            waiting = self.cycle is None or self.cycle.response_complete     # no request whose headers came
            if waiting and not self.transport.is_closing():
                log.info("%s closed: no complete request headers within %g s", (self.client or ("-",))[0], timeout_s)
                self.transport.close()
    return HeaderTimeout


def uvicorn_config(app, limits: Limits = Limits(), **kwargs):
    """uvicorn's settings for the app: the header timeout above; bodies are timed by `read_body`."""
    import uvicorn
    return uvicorn.Config(app, http=header_timeout_protocol(limits.header_timeout_s), log_level="warning",
                          access_log=False, **kwargs)


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          served_name: str | None = None, threads: int | None = None, limits: Limits = Limits()) -> None:
    """Load the model and serve it until interrupted; the port is taken before the model loads."""
    import torch
    import uvicorn

    from r1lab.rollout.hf import HFEngine
    from r1lab.training import load_on_device

    sock = bind(host, port)
    if threads is not None:
        torch.set_num_threads(threads)
    network_model, tokenizer = load_on_device(model)
    served = served_name or model
    context = getattr(network_model.config, "max_position_embeddings", None)
    app = build_app(HFEngine(network_model, tokenizer, max_batch=64), tokenizer, served, api_key, limits,
                    context=context)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    print(f"r1lab serving {model}: chat page http://{host}:{port}/ , API http://{host}:{port}/v1 (model name {served!r})",
          flush=True)
    uvicorn.Server(uvicorn_config(app, limits)).run(sockets=[sock])
