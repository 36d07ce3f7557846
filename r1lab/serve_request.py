"""What a chat-completions request may ask of `r1lab serve`, checked before any work (r1lab/serve.py).

`parse_request(body, served, limits)` returns a `ChatRequest` or raises an `APIError` in OpenAI's error
shape whose `param` names the field (`messages[2].tool_calls[0].function.arguments`, `tools[1].function.name`).

Tools follow OpenAI's API (the server never runs them; the client does):
- `tools`: [{type: "function", function: {name, description?, parameters?}}]; a name is 1-64 letters,
  digits, `_` or `-` (OpenAI's rule), given once; `parameters` a JSON Schema object.
- `tool_choice`: "auto" (the default) or "none" (the tools are not shown to the model and its reply is
  not read for calls). "required" and a named function are refused (400): forcing a call would mean
  writing the opening of the call into the prompt, in a convention that depends on the chat template.
  `parallel_tool_calls` is accepted and ignored: a reply stops at its first complete call.
- messages: `tool` messages (content, tool_call_id) and assistant messages with `tool_calls` ({id,
  type: "function", function: {name, arguments: a JSON object as a string}}) whose content may be null
  (read as ""); the chat template renders them (`r1lab.tools.chat_with_tools`).
With tools, `TOOL_CALL_STOP` joins the stop strings (the sampler's, not the user's: it is not trimmed
from the reply, whose call must be parsed).

No field is silently ignored: `seed` is honoured (each sample its own random stream, `Engine.generate`'s
seeds); `logprobs: true`, `top_logprobs` over 0 and a `response_format` other than {"type": "text"} are refused
(400 naming the field): chat replies carry no log-probs (/v1/completions gives them: r1lab/serve_logprobs.py)
and no output format is constrained.
`sampling_fields` and `refuse` are shared with /v1/completions (r1lab/serve_completions.py).

`read_body` bounds the body in bytes and in time: a body not complete within `body_timeout_s` is a 408
(Connection: close); a client that goes away while sending it is a 499 (nginx's "client closed
request"; nobody reads it, but the access log and /metrics count it apart from the server's failures).
"""
from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

from fastapi import Request
from starlette.requests import ClientDisconnect

from r1lab.rollout import Sampling
from r1lab.tools import TOOL_CALL_STOP

TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")      # OpenAI's rule for function names
ROLES = ("system", "user", "assistant", "tool")


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 2048         # largest max_tokens a request may ask for
    max_messages: int = 64         # messages per request
    max_bytes: int = 1_000_000     # request body size
    max_n: int = 8                 # completions per request
    max_prompt_tokens: int | None = None   # prompt tokens per request (None: only the model's context bounds it)
    max_queue: int = 256           # requests waiting or running; past it, 429
    max_prompts: int = 32          # prompts in one /v1/completions request
    body_timeout_s: float = 30.0   # seconds from a request's headers to the end of its body; past it, 408
    header_timeout_s: float = 10.0  # seconds from a connection's opening (or its last reply) to a request's
                                    # complete headers; past it, the connection is closed (serve.uvicorn_config)


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict]
    n: int
    sampling: Sampling         # its stop strings: the user's, and TOOL_CALL_STOP where tools may be called
    stream: bool
    include_usage: bool        # stream_options.include_usage: a last chunk with the usage
    stop: tuple[str, ...] = ()     # the user's stop strings, trimmed from the reply (OpenAI semantics)
    tools: tuple[dict, ...] = ()   # the tools the model is shown and may call (none with tool_choice "none")
    seed: int | None = None        # the samples' random streams (None: drawn afresh)


def checked_string(value, where: str) -> str:
    """A string that encodes as UTF-8 (JSON may carry lone surrogates, which no tokenizer takes)."""
    if not isinstance(value, str):
        raise APIError(400, f"{where} must be a string", param=where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, f"{where} is not valid Unicode (a lone surrogate)", param=where) from None
    return value


def _message(m, where: str) -> dict:
    """One message, checked; an assistant message with tool calls has its null content read as ''."""
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise APIError(400, f"{where} must be {{role: {'|'.join(ROLES)}, content: string}}", param=where)
    if m["role"] == "assistant" and m.get("tool_calls"):
        calls = m["tool_calls"]
        if not isinstance(calls, list):
            raise APIError(400, f"{where}.tool_calls must be a list", param=f"{where}.tool_calls")
        for k, call in enumerate(calls):
            _tool_call(call, f"{where}.tool_calls[{k}]")
        if m.get("content") is None:
            return {**m, "content": ""}
    checked_string(m.get("content"), f"{where}.content")
    if m["role"] == "tool":
        checked_string(m.get("tool_call_id"), f"{where}.tool_call_id")
    return m


def _tool_call(call, where: str) -> None:
    shape = '{id, type: "function", function: {name, arguments}}'
    if not isinstance(call, dict) or call.get("type", "function") != "function" or not isinstance(call.get("function"), dict):
        raise APIError(400, f"{where} must be {shape}", param=where)
    checked_string(call.get("id"), f"{where}.id")
    checked_string(call["function"].get("name"), f"{where}.function.name")
    arguments = checked_string(call["function"].get("arguments"), f"{where}.function.arguments")
    try:
        parsed = json.loads(arguments)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        raise APIError(400, f"{where}.function.arguments must be a JSON object in a string (as tool_calls come back), "
                            f"got {arguments[:80]!r}", param=f"{where}.function.arguments")


def _tools(body: dict) -> tuple[dict, ...]:
    """The tools the model may call: `tools` checked, then none where tool_choice is "none"."""
    tools = [] if body.get("tools") is None else body["tools"]
    if not isinstance(tools, list):
        raise APIError(400, "'tools' must be a list of {type: \"function\", function: {name, description, parameters}}",
                       param="tools")
    names = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise APIError(400, f'{where} must be {{type: "function", function: {{name, description, parameters}}}}', param=where)
        if tool.get("type") != "function":
            raise APIError(400, f'{where}.type must be "function", got {tool.get("type")!r}', param=f"{where}.type")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise APIError(400, f"{where}.function must be an object {{name, description, parameters}}", param=f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise APIError(400, f"{where}.function.name must be 1-64 letters, digits, underscores or dashes, got {name!r}",
                           param=f"{where}.function.name")
        if name in names:
            raise APIError(400, f"{where}.function.name {name!r} is given twice; each tool name once",
                           param=f"{where}.function.name")
        names.add(name)
        if function.get("description") is not None:
            checked_string(function["description"], f"{where}.function.description")
        if function.get("parameters") is not None and not isinstance(function["parameters"], dict):
            raise APIError(400, f"{where}.function.parameters must be a JSON Schema object", param=f"{where}.function.parameters")
    try:       # the schemas are written into the prompt
        json.dumps(tools, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise APIError(400, "'tools' is not valid Unicode (a lone surrogate)", param="tools") from None
    choice = body.get("tool_choice")
    if choice in (None, "auto"):
        return tuple(tools)
    if choice == "none":
        return ()
    if choice == "required" or isinstance(choice, dict):
        raise APIError(400, f"tool_choice {json.dumps(choice)[:100]} is not supported by this server (it does not force "
                            'a call); use "auto" or "none"', param="tool_choice")
    raise APIError(400, f'\'tool_choice\' must be "auto" or "none", got {choice!r}', param="tool_choice")


def json_body(raw: bytes, served: str) -> dict:
    """The JSON object of a body, for the model this server serves, or an APIError."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"invalid JSON body: {e}") from None
    except RecursionError:
        raise APIError(400, "invalid JSON body: nested too deeply") from None
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object")
    if body.get("model") != served:
        raise APIError(404, f"model {body.get('model')!r} does not exist; this server serves {served!r}",
                       param="model", code="model_not_found")
    return body


def parse_request(raw: bytes, served: str, limits: Limits) -> ChatRequest:
    """The request in a body, or an APIError naming the field."""
    body = json_body(raw, served)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", param="messages")
    if len(messages) > limits.max_messages:
        raise APIError(400, f"{len(messages)} messages; the limit is {limits.max_messages}", param="messages")
    messages = [_message(m, f"messages[{i}]") for i, m in enumerate(messages)]
    tools = _tools(body)

    n, sampling, stop, seed = sampling_fields(body, limits, min(512, limits.max_tokens), tools)
    refuse(body, logprobs=(None, False), top_logprobs=(None, 0), response_format=(None, {"type": "text"}))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be a boolean", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise APIError(400, "'stream_options' must be {include_usage: boolean}", param="stream_options")
    return ChatRequest(messages, n, sampling, stream, options.get("include_usage", False), stop, tools, seed)


def number(body: dict, name: str, default, kind, low, high):
    """body[name] (default where missing or null) as `kind`, or a 400 naming the field and its range."""
    value = body.get(name, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()) \
            or not low <= value <= high:
        raise APIError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'} in [{low}, {high}], "
                            f"got {value!r}", param=name)
    return kind(value)


def sampling_fields(body: dict, limits: Limits, default_max_tokens: int, tools=()) -> tuple[int, Sampling, tuple, int | None]:
    """(n, Sampling, the user's stop strings, seed) of a request body, each field checked."""
    max_tokens = number(body, "max_tokens", body.get("max_completion_tokens", default_max_tokens), int, 1, limits.max_tokens)
    n = number(body, "n", 1, int, 1, limits.max_n)
    temperature = number(body, "temperature", 1.0, float, 0.0, 2.0)
    top_p = number(body, "top_p", 1.0, float, 1e-6, 1.0)
    seed = None if body.get("seed") is None else number(body, "seed", None, int, -2**63, 2**64 - 1)
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, "'stop' must be a string or a list of up to 4 non-empty strings", param="stop")
    for i, s in enumerate(stop):
        checked_string(s, f"stop[{i}]")
    stops = tuple(dict.fromkeys([*stop, *[TOOL_CALL_STOP] * bool(tools)]))
    return n, Sampling(temperature, top_p, max_tokens, stops), tuple(stop), seed


def refuse(body: dict, **accepted: tuple) -> None:
    """A 400 naming the first field whose value is not one this server honours (never silently ignored)."""
    for name, values in accepted.items():
        if body.get(name) not in values:
            shown = " or ".join("null" if v is None else json.dumps(v) for v in values)
            raise APIError(400, f"'{name}' {json.dumps(body[name])[:80]} is not supported by this server; "
                                f"leave it out or send {shown}", param=name)


async def read_body(request: Request, limits: Limits) -> bytes:
    """The request body, counted while it arrives (chunked or not): past `max_bytes`, a 413 at once; not
    all there within `body_timeout_s`, a 408; the client gone before its end, a 499."""
    declared, limit = request.headers.get("content-length", ""), limits.max_bytes
    if declared.isdigit() and int(declared) > limit:      # refuse before reading a byte
        raise APIError(413, f"request body is {declared} bytes; the limit is {limit}")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    try:
        return await asyncio.wait_for(read(), limits.body_timeout_s)
    except TimeoutError:
        raise APIError(408, f"the request body did not arrive within {limits.body_timeout_s:g} s", code="request_timeout",
                       headers={"Connection": "close"}) from None
    except ClientDisconnect:
        raise APIError(499, "the client closed the connection while sending the body",
                       code="client_closed_request") from None


def check_prompt(prompt_tokens: int, max_tokens: int, limits: Limits, context: int | None, param: str = "messages") -> None:
    """A 400 naming the limit, for a prompt over --max-prompt-tokens or (with max_tokens) the model's context."""
    if limits.max_prompt_tokens is not None and prompt_tokens > limits.max_prompt_tokens:
        raise APIError(400, f"the prompt is {prompt_tokens} tokens; this server takes at most {limits.max_prompt_tokens} "
                            f"(--max-prompt-tokens)", param=param, code="context_length_exceeded")
    if context is not None and prompt_tokens + max_tokens > context:
        raise APIError(400, f"this model's maximum context length is {context} tokens; the request asks for "
                            f"{prompt_tokens + max_tokens} ({prompt_tokens} in the {param}, {max_tokens} in the "
                            f"completion): shorten the {param} or lower max_tokens",
                       param=param, code="context_length_exceeded")
