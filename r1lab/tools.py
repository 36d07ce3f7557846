"""Tools a model can call mid-reasoning: parse its calls, run them, write the results back into its text.

    tools = load_tools("python,calculator,mypackage.tools:search")
    prompt = chat_with_tools(tokenizer, [{"role": "user", "content": "What is 2**100?"}], tools)
    reply = ...generate(prompt, stop=[TOOL_CALL_STOP])...             # ends in </tool_call>: the call is complete
    calls, bad = parse_tool_calls(reply)
    results = bad + run_tool_calls(tools, calls)
    prompt += reply + tool_turn_text(tokenizer, results, chat=True)   # ...and generate on from there

A tool is a plain function plus its JSON schema in the OpenAI / HF chat-template shape (a user tool's
from `transformers.utils.get_json_schema`). Calls use the Hermes / Qwen convention of most open chat
templates with tools, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, answered in
`<tool_response>`. A chat template that renders `tools=` gets its own convention; any other model
(SmolLM2's template, no template) gets the tools and the call format in its system message.

Choices, with why:
- Every failure (unknown tool, bad JSON or arguments, the tool raising or timing out) is an error
  `ToolResult` the model reads, never an exception: a rollout must not die of a model's typo.
- Arguments are checked against the schema's required / known properties and JSON types, not all of
  JSON Schema: enough for a precise error, without a validator dependency.
- A user tool is trusted code: it runs in this process, without a time limit of its own. `python` runs
  the model's code in `r1lab.sandbox` under `PYTHON_LIMITS`.
- Where the template renders tools, OpenAI `tool_calls` arguments (JSON strings) reach it as dicts,
  the form HF chat templates expect (`arguments | tojson`).
"""
from __future__ import annotations

import ast
import functools
import importlib
import json
import math
import operator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from r1lab import R1labError
from r1lab.sandbox import Limits, Sandbox

TOOL_CALL_STOP = "</tool_call>"       # stop string: generation pauses when a call is complete
TOOL_CALL_START = "<tool_call>"
MAX_CALLS = 16                        # tool calls read from one reply; more is an error result
SENTINEL = "\x00r1lab-sentinel\x00"   # marks where a rendered assistant message ends (tool_turn_text)
PYTHON_LIMITS = Limits(wall_s=10, cpu_s=5, memory_mb=512, processes=16, disk_mb=16, output_bytes=16384)


@dataclass(frozen=True)
class Tool:
    name: str
    function: Callable[..., object]      # called with the parsed arguments as keyword arguments
    schema: dict                         # {"type": "function", "function": {"name", "description", "parameters"}}


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict
    id: str                              # parse_tool_calls: "call_<n>", the n-th block of the reply (from 0)


@dataclass(frozen=True)
class ToolResult:
    name: str          # the tool called ("" when the call could not be parsed)
    content: str       # what the model sees: the tool's output as text, or an error message
    error: bool        # True: unknown tool, malformed call, bad arguments, the tool raised / timed out
    call_id: str = ""


class ToolError(Exception):
    """Raised by a tool to report a failure whose message is the whole text the model sees."""


# --- built-in tools ---

RAN = "assert 'ran' == 'ran'"   # the one test of a python call: the judge reports a program's failure only through a test


@functools.cache
def _sandbox(limits: Limits) -> Sandbox:
    return Sandbox(limits)


def python(code: str) -> str:
    """Run `code` in r1lab's sandbox (no network, no files outside its /tmp, `PYTHON_LIMITS`) and return
    what it printed. The sandbox judges a program by tests; one test that always passes once the program
    has run (`RAN`) makes it report the program's own exception. Raises ToolError (the stdout so far, then
    the error, timeout or output limit) when the code did not finish cleanly."""
    limits = PYTHON_LIMITS
    result = _sandbox(limits).run(code, [RAN], as_main=True)          # a script: its __main__ block runs
    output = (result.stdout + result.stderr).rstrip("\n")
    if result.status == "ok" and result.passed == 1:
        return output
    problem = {"timeout": f"timeout: the code ran past {limits.wall_s} s",
               "output_limit": f"output limit: the code wrote more than {limits.output_bytes} bytes"}.get(result.status)
    if problem is None and result.errors:
        problem = result.errors[0].split("the program failed: ", 1)[-1].removeprefix("test 0: ")
    raise ToolError("\n".join(filter(None, [output, problem or f"the sandbox failed: {result.status}"])))


MAX_CHARS, MAX_BITS, MAX_EXPONENT = 1000, 3400, 10000    # expression length; integers up to ~10**1000; a**b, b <= 10000
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
             ast.USub: operator.neg, ast.UAdd: operator.pos}
FUNCTIONS = {"sqrt": math.sqrt, "abs": abs, "round": round, "min": min, "max": max, "log": math.log,
             "exp": math.exp, "sin": math.sin, "cos": math.cos}
CONSTANTS = {"pi": math.pi, "e": math.e}


def calculator(expression: str) -> int | float:
    """Evaluate arithmetic exactly as Python would (exact integers, floats once a float or `/` appears):
    numbers, + - * / // % **, unary -, parentheses, sqrt abs round min max log exp sin cos, pi e. Walks the
    syntax tree (no eval); refuses anything else, and sizes that would take long (see MAX_*)."""
    if len(expression) > MAX_CHARS:
        raise ValueError(f"expression of {len(expression)} characters; at most {MAX_CHARS}")
    try:
        return _evaluate(ast.parse(expression.strip(), mode="eval").body)
    except SyntaxError as e:
        raise ValueError(f"not an arithmetic expression: {e.msg}") from None
    except RecursionError:
        raise ValueError("expression nested too deeply") from None


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and type(node.op) in OPERATORS:
        return OPERATORS[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and (
                right > MAX_EXPONENT or right * (abs(left).bit_length() - 1) > MAX_BITS):
            raise ValueError(f"{left} ** {right} is too large; integers up to about 10**1000")
        value = OPERATORS[type(node.op)](left, right)
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
          and not node.keywords):
        args = [_evaluate(a) for a in node.args]
        if node.func.id == "round" and len(args) == 2 and abs(args[1]) > 1000:
            raise ValueError("round's digits must be within -1000..1000")
        value = FUNCTIONS[node.func.id](*args)
    else:
        allowed = "numbers, + - * / // % **, parentheses, " + ", ".join([*FUNCTIONS, *CONSTANTS])
        raise ValueError(f"{ast.unparse(node)[:80]!r} is not allowed; allowed: {allowed}")
    if isinstance(value, int) and value.bit_length() > MAX_BITS or isinstance(value, complex):
        raise ValueError("the result is too large (integers up to about 10**1000)" if isinstance(value, int)
                         else "the result is a complex number")
    return value


def _schema(name: str, description: str, argument: str, about: str) -> dict:
    parameters = {"type": "object", "properties": {argument: {"type": "string", "description": about}},
                  "required": [argument]}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


BUILTINS = {
    "python": Tool("python", python, _schema(
        "python", "Run a Python program in a sandbox (no network, no files) and return what it printed.",
        "code", "The Python program; print() the values you want to see.")),
    "calculator": Tool("calculator", calculator, _schema(
        "calculator", "Evaluate an arithmetic expression exactly (integers stay exact).",
        "expression", "e.g. '123456789 * 987654321' or 'sqrt(2) / 3'; + - * / // % **, sqrt abs round min max "
                      "log exp sin cos, pi e.")),
}
PROBE = BUILTINS["calculator"].schema   # a schema to find out whether a chat template renders tools


# --- loading, parsing, running ---

def load_tools(spec: str | list[str] | None) -> list[Tool]:
    """Built-ins by name and user tools as `module:function`, comma-separated or a list; None or "" -> []."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec or []) if s.strip()]
    tools, valid = [], f"valid built-ins: {', '.join(BUILTINS)}; or a user tool as module:function"
    for item in items:
        if ":" not in item:
            if item not in BUILTINS:
                raise R1labError(f"tools: unknown tool {item!r}; {valid}")
            tools.append(BUILTINS[item])
            continue
        module_name, _, attribute = item.partition(":")
        try:
            function = getattr(importlib.import_module(module_name), attribute)
        except ImportError as e:
            raise R1labError(f"tools: {item!r}: cannot import module {module_name!r} ({e}); {valid}") from None
        except AttributeError:
            raise R1labError(f"tools: {item!r}: module {module_name!r} has no {attribute!r}; {valid}") from None
        if not callable(function):
            raise R1labError(f"tools: {item!r} is not a function")
        from transformers.utils import get_json_schema
        try:
            schema = get_json_schema(function)
        except Exception as e:  # noqa: BLE001 - DocstringParsingException, TypeHintParsingException
            raise R1labError(f"tools: {item!r}: no JSON schema ({e}); get_json_schema needs a type hint on every "
                             "argument and a Google-style docstring with an `Args:` line per argument") from None
        tools.append(Tool(schema["function"]["name"], function, schema))
    names = [t.name for t in tools]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise R1labError(f"tools: {', '.join(duplicates)} given twice in {spec!r}; each tool name once")
    return tools


def tool_schemas(tools: list[Tool]) -> list[dict]:
    """The schemas, for `apply_chat_template(tools=...)` or an OpenAI-style request."""
    return [t.schema for t in tools]


def parse_tool_calls(text: str) -> tuple[list[ToolCall], list[ToolResult]]:
    """The complete `<tool_call>{json}</tool_call>` blocks of `text`, in order, as calls, and the blocks
    that are not a call as error results. Linear in the text: each block is the last opening before
    its closing, so an unclosed `<tool_call>` ahead of a block does not swallow it."""
    calls, errors, position, index = [], [], 0, 0
    while (close := text.find(TOOL_CALL_STOP, position)) >= 0:
        start, position = text.rfind(TOOL_CALL_START, position, close), close + len(TOOL_CALL_STOP)
        if start < 0:
            continue
        body = text[start + len(TOOL_CALL_START):close]
        if index == MAX_CALLS:
            errors.append(ToolResult("", f"more than {MAX_CALLS} tool calls in one reply; the rest were not run", True))
            break
        call_id, index = f"call_{index}", index + 1
        try:
            call = json.loads(body)
        except (ValueError, RecursionError) as e:
            errors.append(ToolResult("", f"the tool call is not valid JSON ({e}); write "
                                     '<tool_call>{"name": ..., "arguments": {...}}</tool_call>', True, call_id))
            continue
        call = call if isinstance(call, dict) else {}
        name, arguments = call.get("name"), _loads(call.get("arguments", call.get("parameters")))
        if not isinstance(name, str) or not name:
            errors.append(ToolResult("", 'the tool call has no "name": write {"name": ..., "arguments": {...}}', True, call_id))
        elif not isinstance(arguments, dict):
            errors.append(ToolResult(name, f'the "arguments" of {name} must be a JSON object', True, call_id))
        else:
            calls.append(ToolCall(name, arguments, call_id))
    return calls, errors


def _loads(arguments):
    """Tool-call arguments as a dict where they are a JSON string of one (OpenAI's form); missing -> {}."""
    try:
        return {} if arguments in (None, "") else json.loads(arguments) if isinstance(arguments, str) else arguments
    except (ValueError, RecursionError):
        return arguments


JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict}


def _argument_problem(schema: dict, arguments: dict) -> str | None:
    parameters, name = schema["function"].get("parameters") or {}, schema["function"]["name"]
    properties = parameters.get("properties") or {}
    if not isinstance(arguments, dict):
        return f"{name}: the arguments must be a JSON object"
    if missing := [k for k in parameters.get("required", []) if k not in arguments]:
        return f"{name}: missing required argument(s) {', '.join(missing)}; arguments: {', '.join(properties) or 'none'}"
    if unknown := [k for k in arguments if k not in properties]:
        return f"{name}: unknown argument(s) {', '.join(unknown)}; arguments: {', '.join(properties) or 'none'}"
    for key, value in arguments.items():
        kind = properties[key].get("type")
        wrong = kind in JSON_TYPES and not isinstance(value, JSON_TYPES[kind])
        if wrong or kind in ("integer", "number") and isinstance(value, bool):     # JSON true is no number
            return f"{name}: argument {key} must be of JSON type {kind}, got {json.dumps(value)[:80]}"
    return None


def _run(tools: dict[str, Tool], call: ToolCall, max_chars: int) -> ToolResult:
    tool = tools.get(call.name)
    if tool is None:
        return ToolResult(call.name, f"unknown tool {call.name!r}; available tools: {', '.join(tools) or 'none'}", True, call.id)
    if problem := _argument_problem(tool.schema, call.arguments):
        return ToolResult(call.name, problem, True, call.id)
    try:
        value = tool.function(**call.arguments)
        content, error = value if isinstance(value, str) else json.dumps(value, default=str), False
    except ToolError as e:
        content, error = str(e), True
    except Exception as e:  # noqa: BLE001 - whatever a tool raises is an error result
        content, error = f"{type(e).__name__}: {e}", True
    if len(content) > max_chars:     # keep the head and the tail: a program's error is its last line
        head, tail = max_chars - max_chars // 4, max_chars // 4
        content = f"{content[:head]}\n[... {len(content) - max_chars} characters cut ...]\n{content[len(content) - tail:]}"
    return ToolResult(call.name, content, error, call.id)


def run_tool_calls(tools: list[Tool], calls: list[ToolCall], max_chars: int = 2000) -> list[ToolResult]:
    """Run the calls concurrently (a python call waits on its own sandbox process); results in call order."""
    by_name = {t.name: t for t in tools}
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(calls)))) as pool:
        return list(pool.map(lambda call: _run(by_name, call, max_chars), calls))


# --- prompts ---

def tools_instruction(tools: list[Tool]) -> str:
    """The system-prompt text for models whose chat template does not render `tools` (Hermes-style)."""
    if not tools:
        return ""
    lines = "\n".join(json.dumps(s, ensure_ascii=False) for s in tool_schemas(tools))
    return ("You may call one or more functions to help with the user's request. The function signatures are "
            f"within <tools></tools> tags:\n<tools>\n{lines}\n</tools>\n\nTo call a function, write a JSON object "
            f'with its name and arguments within <tool_call></tool_call> tags:\n<tool_call>{{"name": <function-name>, '
            '"arguments": <args-json-object>}</tool_call>\nThe results come back within <tool_response></tool_response> tags.')


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
    """The chat template over the messages; plain 'Role: text' lines (ending in 'Assistant:' with the
    generation prompt) for models without one. What `r1lab serve` and `make_llm` send, tools or not."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs)
    text = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
    return text + "\nAssistant:" if add_generation_prompt else text


def _renders(tokenizer, messages: list[dict], needle: str, **kwargs) -> str | None:
    """The rendering when it works and contains `needle`, else None."""
    try:
        text = render_chat(tokenizer, messages, False, **kwargs)
    except Exception:  # noqa: BLE001 - a template may raise on anything it does not support
        return None
    return text if needle in text else None


def renders_tools(tokenizer, schemas: list[dict]) -> bool:
    """Whether the chat template renders `tools=` itself: the text changes and names the first tool."""
    if not schemas or not getattr(tokenizer, "chat_template", None):
        return False
    probe = [{"role": "user", "content": "hi"}]
    text = _renders(tokenizer, probe, schemas[0]["function"]["name"], tools=schemas)
    return text is not None and text != _renders(tokenizer, probe, "")


def _call_text(call: dict) -> str:
    function = call.get("function", call)
    body = json.dumps({"name": function.get("name"), "arguments": _loads(function.get("arguments"))}, ensure_ascii=False)
    return f"{TOOL_CALL_START}{body}{TOOL_CALL_STOP}"


def _as_text(tokenizer, messages: list[dict], tools: list[Tool]) -> list[dict]:
    """Messages for a template that knows no tools: calls and responses written out as tagged text."""
    tool_role = _renders(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"},
                                     {"role": "tool", "content": SENTINEL}], SENTINEL) is not None
    out, merge = [], False        # merge: the last message is tool responses sent as a user message
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            content = "\n".join([content] * bool(content) + [_call_text(c) for c in message["tool_calls"]])
        if role == "tool":
            content = f"<tool_response>\n{content}\n</tool_response>"
            if not tool_role and merge:
                out[-1]["content"] += "\n" + content
                continue
            role = "tool" if tool_role else "user"
        out.append({"role": role, "content": content})
        merge = message["role"] == "tool" and role == "user"
    if instruction := tools_instruction(tools):
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{instruction}\n\n{out[0]['content']}"}
        else:
            out.insert(0, {"role": "system", "content": instruction})
    return out


def _native(messages: list[dict]) -> list[dict]:
    """OpenAI messages as HF templates expect them: tool-call arguments as dicts, not JSON strings."""
    def call(c):
        return {**c, "function": {**c.get("function", {}), "arguments": _loads(c.get("function", {}).get("arguments"))}}
    return [{**m, "tool_calls": [call(c) for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in messages]


def chat_with_tools(tokenizer, messages: list[dict], tools: list[Tool], add_generation_prompt: bool = True) -> str:
    """The prompt for OpenAI-shaped messages: the template's own tool convention where it renders
    `tools`, else the tools in the system message and calls / responses as tagged text."""
    schemas = tool_schemas(tools)
    if renders_tools(tokenizer, schemas or [PROBE]):
        return render_chat(tokenizer, _native(messages), add_generation_prompt, tools=schemas or None)
    return render_chat(tokenizer, _as_text(tokenizer, messages, tools), add_generation_prompt)


def tool_turn_text(tokenizer, results: list[ToolResult], chat: bool) -> str:
    """The text that follows a reply ending in `</tool_call>`: the results, then the model's turn again."""
    plain = "".join(f"\n<tool_response>\n{r.content}\n</tool_response>\n" for r in results)
    if not chat:
        return plain
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": SENTINEL},
                *({"role": "tool", "content": r.content, "name": r.name, "tool_call_id": r.call_id} for r in results)]
    try:
        text = chat_with_tools(tokenizer, messages, [], add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that cannot render this gets the plain form
        return plain
    where = text.find(SENTINEL)
    return plain if where < 0 else text[where + len(SENTINEL):]
