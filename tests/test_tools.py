"""Tools: the calculator and python built-ins, loading, parsing calls, running them, and the prompt text
around them for three kinds of tokenizer (ChatML that ignores tools, a template that renders tools, none)."""
import copy
import json
import math
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from transformers.utils import get_json_schema

from r1lab import R1labError
from r1lab import tools as tools_module
from r1lab.models import tiny_tokenizer
from r1lab.sandbox import Limits, isolation
from r1lab.tools import (TOOL_CALL_STOP, Tool, ToolCall, ToolResult, calculator, chat_with_tools, load_tools,
                         parse_tool_calls, run_tool_calls, tool_schemas, tool_turn_text, tools_instruction)

needs_namespaces = pytest.mark.skipif(isolation() == "none", reason="no namespaces here: only rlimits and the timeout apply")


def run_one(tools, name, **arguments) -> ToolResult:
    (result,) = run_tool_calls(tools, [ToolCall(name, arguments, "call_0")])
    return result


# --- calculator ---

@pytest.mark.parametrize("expression, expected", [
    ("123456789 * 987654321", 121932631112635269),
    ("2 + 3 * 4", 14),
    ("(2 + 3) * 4", 20),
    ("2 ** 3 ** 2", 512),                  # right-associative
    ("-2 ** 2", -4),                       # ** binds tighter than unary minus
    ("7 // 2", 3),
    ("-7 // 2", -4),
    ("7 % 3", 1),
    ("7 / 2", 3.5),
    ("6 / 3", 2.0),                        # true division is a float, as in Python
    ("2 ** 100", 1267650600228229401496703205376),
    ("10 ** 999 // 10 ** 998", 10),        # big, but within bounds: still exact
    ("2 ** -1", 0.5),
    ("1.5 * 4", 6.0),
    ("sqrt(16)", 4.0),
    ("abs(-3)", 3),
    ("max(1, 5, 3) - min(4, 2)", 3),
    ("round(2.567, 2)", 2.57),
    ("round(7.5)", 8),
    ("log(e)", 1.0),
    ("cos(0) + sin(0)", 1.0),
    ("2 * pi", 2 * math.pi),
    (" 1 + 1 ", 2),
    ("-" * 301 + "1", -1),                 # deep, but evaluated
])
def test_calculator_is_exact(expression, expected):
    value = calculator(expression)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("expression, message", [
    ("x + 1", "not allowed"),
    ("(1).real", "not allowed"),
    ("__import__('os').system('true')", "not allowed"),
    ("'a' * 3", "not allowed"),
    ("True + 1", "not allowed"),
    ("[1, 2]", "not allowed"),
    ("sqrt(x=4)", "not allowed"),
    ("lambda: 1", "not allowed"),
    ("2 ** 100000", "too large"),
    ("9 ** 9 ** 9", "too large"),
    ("3 ** 5000", "too large"),
    ("10 ** 1000 * 10 ** 1000", "too large"),
    ("round(1, -10 ** 12)", "round"),
    ("1 / 0", "ZeroDivisionError"),
    ("5 % 0", "ZeroDivisionError"),
    ("exp(10000)", "OverflowError"),
    ("(-8) ** 0.5", "complex"),
    ("1 +", "not an arithmetic expression"),
    ("1+" * 600 + "1", "at most 1000"),
    ("(" * 300 + "1" + ")" * 300, "not an arithmetic expression"),     # too deep for Python's parser
    ("-" * 999 + "1", "nested too deeply"),                            # too deep for the evaluator
])
def test_calculator_errors_are_error_results(expression, message):
    result = run_one(load_tools("calculator"), "calculator", expression=expression)
    assert result.error and message in result.content, result.content


def test_calculator_result_as_text():
    result = run_one(load_tools("calculator"), "calculator", expression="123456789 * 987654321")
    assert result == ToolResult("calculator", "121932631112635269", False, "call_0")


# --- the python tool ---

@pytest.fixture
def small_sandbox(monkeypatch):
    monkeypatch.setattr(tools_module, "PYTHON_LIMITS", Limits(wall_s=1.5, cpu_s=1, memory_mb=256, processes=8,
                                                              disk_mb=8, output_bytes=4096))


def test_python_prints(small_sandbox):
    assert run_one(load_tools("python"), "python", code="print(6*7)") == ToolResult("python", "42", False, "call_0")


def test_python_exception_is_the_error_after_the_output(small_sandbox):
    result = run_one(load_tools("python"), "python", code="print('before')\n1/0")
    assert result.error and result.content == "before\nZeroDivisionError: division by zero"


@pytest.mark.parametrize("code, words", [
    ("while True:\n    pass", ("timeout", "exited", "ended")),                     # CPU limit or wall clock
    ("import time\ntime.sleep(100)", ("timeout",)),
    ("x = bytearray(50 * 2**30)", ("MemoryError",)),
    ("import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 2**20)", ("output limit",)),
    ("with open('big', 'wb') as f:\n    for _ in range(10240):\n        f.write(b'x' * 2**20)",
     ("File too large", "No space", "exited", "ended")),
])
def test_python_hostile_programs_are_contained(small_sandbox, code, words):
    started = time.monotonic()
    result = run_one(load_tools("python"), "python", code=code)
    assert result.error and any(w in result.content for w in words), result.content
    assert len(result.content) < 2100                       # truncated to max_chars
    assert time.monotonic() - started < 15


def test_python_fork_bomb_is_contained(small_sandbox):
    code = "import os\nfor _ in range(10000):\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    run_one(load_tools("python"), "python", code=code)
    assert os.getloadavg() is not None                      # the host still answers
    assert run_one(load_tools("python"), "python", code="print(6*7)").content == "42"   # and the next call works


@needs_namespaces
def test_python_cannot_read_host_files(small_sandbox, tmp_path):
    secret = Path.home() / f".r1lab-tools-secret-{os.getpid()}"
    secret.write_text("TOKEN=hunter2")
    try:
        code = (f"for path in ('/etc/passwd', {str(secret)!r}, {str(Path(__file__))!r}):\n    try:\n"
                "        print(open(path).read())\n    except OSError as e:\n        print(type(e).__name__)\n")
        result = run_one(load_tools("python"), "python", code=code)
        assert not result.error and result.content.startswith("sandbox:"), result.content
        assert "hunter2" not in result.content and "root:" not in result.content and "pytest" not in result.content
    finally:
        secret.unlink()


@needs_namespaces
def test_python_has_no_network(small_sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    code = f"import socket\nsocket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=2)\nprint('connected')"
    result = run_one(load_tools("python"), "python", code=code)
    assert result.error and "connected" not in result.content and "Error" in result.content, result.content
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()


# --- load_tools ---

USER_TOOLS = '''
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first
        b: the second
    """
    return a + b


def undocumented(a):
    return a

NOT_A_FUNCTION = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    name = f"r1lab_user_tools_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(USER_TOOLS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_load_builtins():
    assert [t.name for t in load_tools("python, calculator")] == ["python", "calculator"]
    assert [t.name for t in load_tools(["calculator"])] == ["calculator"]
    assert load_tools(None) == load_tools("") == load_tools([]) == []
    for schema in tool_schemas(load_tools("python,calculator")):
        assert schema["type"] == "function" and set(schema["function"]) == {"name", "description", "parameters"}


def test_load_a_user_tool(user_module):
    tools = load_tools(f"calculator,{user_module}:add")
    assert [t.name for t in tools] == ["calculator", "add"]
    assert tools[1].schema["function"]["parameters"]["required"] == ["a", "b"]
    assert run_one(tools, "add", a=2, b=3).content == "5"


@pytest.mark.parametrize("spec, words", [
    ("pyhton", ["'pyhton'", "python, calculator", "module:function"]),
    ("no_such_module_r1lab:fn", ["cannot import", "no_such_module_r1lab"]),
    ("{module}:missing", ["has no 'missing'"]),
    ("{module}:NOT_A_FUNCTION", ["not a function"]),
    ("{module}:undocumented", ["undocumented", "get_json_schema needs", "docstring"]),
    ("python,calculator,python", ["python given twice"]),
])
def test_load_errors_name_the_problem(user_module, spec, words):
    with pytest.raises(R1labError) as error:
        load_tools(spec.format(module=user_module))
    assert all(w in str(error.value) for w in words), str(error.value)


# --- parse_tool_calls ---

def test_parse_one_call():
    calls, errors = parse_tool_calls('I will add. <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>')
    assert calls == [ToolCall("add", {"a": 1, "b": 2}, "call_0")] and errors == []


def test_parse_several_calls_parameters_and_string_arguments():
    text = ('<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call> then '
            '<tool_call>{"name": "b", "parameters": {"y": 2}}</tool_call>'
            '<tool_call>{"name": "c", "arguments": "{\\"z\\": 3}"}</tool_call>'
            '<tool_call>{"name": "d"}</tool_call>'
            '<tool_call>{"name": "e", "arguments": {}, "id": "ignored"}</tool_call>')
    calls, errors = parse_tool_calls(text)
    assert calls == [ToolCall("a", {"x": 1}, "call_0"), ToolCall("b", {"y": 2}, "call_1"),
                     ToolCall("c", {"z": 3}, "call_2"), ToolCall("d", {}, "call_3"), ToolCall("e", {}, "call_4")]
    assert errors == []


def test_parse_malformed_blocks_are_error_results():
    text = ('<tool_call>{"name": "a", "arguments": {"x": 1}</tool_call>'     # a brace short
            '<tool_call>{"arguments": {}}</tool_call>'                        # no name
            '<tool_call>{"name": "b", "arguments": [1]}</tool_call>'          # arguments not an object
            '<tool_call>{"name": "c", "arguments": {"ok": true}}</tool_call>')
    calls, errors = parse_tool_calls(text)
    assert calls == [ToolCall("c", {"ok": True}, "call_3")]
    assert [(e.name, e.error, e.call_id) for e in errors] == [("", True, "call_0"), ("", True, "call_1"), ("b", True, "call_2")]
    assert "not valid JSON" in errors[0].content and '"name"' in errors[1].content and "JSON object" in errors[2].content


def test_parse_only_complete_blocks_count():
    assert parse_tool_calls("no calls here, just <think> text") == ([], [])
    assert parse_tool_calls('<tool_call>{"name": "a", "arguments": {}}') == ([], [])          # still being written
    calls, _ = parse_tool_calls('<tool_call>oops <tool_call>{"name": "a"}</tool_call> </tool_call>')
    assert calls == [ToolCall("a", {}, "call_0")]          # an unclosed opening does not swallow the next block


def test_parse_hostile_text_is_bounded():
    calls, errors = parse_tool_calls(("<tool_call>" * 50_000) + '{"name": "a"}' + (TOOL_CALL_STOP * 50_000))
    assert calls == [ToolCall("a", {}, "call_0")] and errors == []
    assert parse_tool_calls(TOOL_CALL_STOP * 200_000 + "<tool_call>" * 200_000) == ([], [])   # (a quadratic scan: minutes)
    calls, errors = parse_tool_calls('<tool_call>{"name": "a"}</tool_call>' * 1000)
    assert len(calls) == tools_module.MAX_CALLS and len(errors) == 1 and "more than" in errors[0].content
    calls, errors = parse_tool_calls("<tool_call>" + "[" * 100_000 + "</tool_call>")
    assert calls == [] and errors[0].error


# --- run_tool_calls ---

def echo(text: str, times: int = 1) -> str:
    """Repeat a text.

    Args:
        text: what to repeat
        times: how many times
    """
    return text * times


def fail(text: str) -> str:
    """Always fails.

    Args:
        text: ignored
    """
    raise ValueError("boom")


def slow(seconds: float) -> dict:
    """Sleeps, then returns a dict.

    Args:
        seconds: how long
    """
    time.sleep(seconds)
    return {"slept": seconds}


USER = [Tool(f.__name__, f, get_json_schema(f)) for f in (echo, fail, slow)]


@pytest.mark.parametrize("call, words", [
    (ToolCall("nope", {}, "call_0"), ["unknown tool 'nope'", "echo, fail, slow"]),
    (ToolCall("echo", {"times": 2}, "call_0"), ["missing", "text"]),
    (ToolCall("echo", {"text": "a", "colour": "red"}, "call_0"), ["unknown argument", "colour"]),
    (ToolCall("echo", {"text": "a", "times": "2"}, "call_0"), ["times", "integer"]),
    (ToolCall("echo", {"text": "a", "times": True}, "call_0"), ["times", "integer"]),
    (ToolCall("fail", {"text": "a"}, "call_0"), ["ValueError: boom"]),
])
def test_run_errors_are_results(call, words):
    (result,) = run_tool_calls(USER, [call])
    assert result.error and result.name == call.name and result.call_id == "call_0"
    assert all(w in result.content for w in words), result.content


def test_run_truncates_and_serialises():
    result = run_one(USER, "echo", text="ab", times=2500)
    assert not result.error and result.content == f"{'ab' * 750}\n[... 3000 characters cut ...]\n{'ab' * 250}"
    assert len(run_tool_calls(USER, [ToolCall("echo", {"text": "xy", "times": 100}, "c")], max_chars=10)[0].content) < 60
    assert run_one(USER, "slow", seconds=0).content == '{"slept": 0}'


def test_run_results_are_in_call_order_and_calls_run_concurrently():
    barrier = threading.Barrier(2, timeout=10)     # passes only when two calls run at the same time
    meet = Tool("meet", lambda: barrier.wait() >= 0, {"type": "function", "function": {
        "name": "meet", "description": "Waits for another call.", "parameters": {"type": "object", "properties": {}}}})
    calls = [ToolCall("slow", {"seconds": 0.2}, "call_0"), ToolCall("echo", {"text": "b"}, "call_1"),
             ToolCall("nope", {}, "call_2"), ToolCall("meet", {}, "call_3"), ToolCall("meet", {}, "call_4")]
    results = run_tool_calls([*USER, meet], calls)
    assert [r.call_id for r in results] == ["call_0", "call_1", "call_2", "call_3", "call_4"]
    assert [(r.content, r.error) for r in results[:2] + results[3:]] == [('{"slept": 0.2}', False), ("b", False),
                                                                        ("true", False), ("true", False)]
    assert run_tool_calls(USER, []) == []


# --- prompts: chat_with_tools and tool_turn_text ---

QWEN_LIKE = r"""{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools
<tools>{% for tool in tools %}{{ "\n" + (tool | tojson) }}{% endfor %}{{ "\n" }}</tools><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{{ message.content or '' }}
{%- for call in message.tool_calls or [] %}
<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role != 'system' %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
STRICT_ROLES = ("{% for message in messages %}{% if message.role not in ['system', 'user', 'assistant'] %}"
                "{{ raise_exception('unknown role ' + message.role) }}{% endif %}<|im_start|>{{ message.role }}\n"
                "{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CONVERSATION = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'}}]},
    {"role": "tool", "tool_call_id": "call_0", "name": "calculator", "content": "4"},
]
FOUR = [ToolResult("calculator", "4", False, "call_0")]
CALL_TEXT = '<tool_call>{"name": "calculator", "arguments": {"expression": "2+2"}}</tool_call>'


@pytest.fixture(scope="module")
def chatml():
    return tiny_tokenizer()


def with_template(tokenizer, template):
    tokenizer = copy.copy(tokenizer)
    tokenizer.chat_template = template
    return tokenizer


def test_chatml_that_ignores_tools_gets_them_in_the_system_message(chatml):
    tools = load_tools("calculator")
    prompt = chat_with_tools(chatml, [{"role": "user", "content": "hi"}], tools)
    assert prompt == f"<|im_start|>system\n{tools_instruction(tools)}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert json.dumps(tools[0].schema) in prompt and "<tools>" in prompt
    prompt = chat_with_tools(chatml, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], tools)
    assert prompt.count("<|im_start|>system") == 1 and f"{tools_instruction(tools)}\n\nBe brief.<|im_end|>" in prompt


def test_chatml_tool_calls_and_responses_as_text(chatml):
    prompt = chat_with_tools(chatml, CONVERSATION, load_tools("calculator"))
    assert f"<|im_start|>assistant\n{CALL_TEXT}<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>tool\n<tool_response>\n4\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_chatml_tool_turn_continues_the_conversation(chatml):
    assert tool_turn_text(chatml, FOUR, chat=True) == \
        "<|im_end|>\n<|im_start|>tool\n<tool_response>\n4\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    assert tool_turn_text(chatml, FOUR, chat=False) == "\n<tool_response>\n4\n</tool_response>\n"
    # generating a call, then appending the results, is the same text as rendering the whole conversation
    tools = load_tools("calculator")
    prompt = chat_with_tools(chatml, CONVERSATION[:1], tools)
    assert prompt + CALL_TEXT + tool_turn_text(chatml, FOUR, chat=True) == chat_with_tools(chatml, CONVERSATION, tools)


def test_a_template_that_renders_tools_uses_its_own_convention(chatml):
    qwen = with_template(chatml, QWEN_LIKE)
    tools = load_tools("calculator")
    prompt = chat_with_tools(qwen, CONVERSATION, tools)
    assert "# Tools\n<tools>\n" in prompt and '"name": "calculator"' in prompt and "You may call" not in prompt
    assert '"arguments": {"expression": "2+2"}' in prompt                  # a dict, not a JSON string in a string
    assert prompt.endswith("<|im_start|>user\n<tool_response>\n4\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    assert tool_turn_text(qwen, FOUR, chat=True) == \
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n4\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    reply = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>'   # as this template writes calls
    assert chat_with_tools(qwen, CONVERSATION[:1], tools) + reply + tool_turn_text(qwen, FOUR, chat=True) == prompt
    assert chat_with_tools(qwen, CONVERSATION, []).count("<tool_response>") == 1     # the template's own wrapping only


def test_a_template_without_the_tool_role_gets_responses_as_one_user_message(chatml):
    strict = with_template(chatml, STRICT_ROLES)
    two = [*FOUR, ToolResult("calculator", "6", False, "call_1")]
    assert tool_turn_text(strict, two, chat=True) == ("<|im_end|>\n<|im_start|>user\n<tool_response>\n4\n</tool_response>\n"
                                                      "<tool_response>\n6\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
    prompt = chat_with_tools(strict, CONVERSATION, load_tools("calculator"))
    assert prompt.endswith("<|im_start|>user\n<tool_response>\n4\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_no_chat_template_gets_plain_role_lines(chatml):
    plain = with_template(chatml, None)
    tools = load_tools("calculator")
    prompt = chat_with_tools(plain, CONVERSATION, tools)
    assert prompt == (f"System: {tools_instruction(tools)}\nUser: What is 2+2?\nAssistant: {CALL_TEXT}\n"
                      "Tool: <tool_response>\n4\n</tool_response>\nAssistant:")
    assert tool_turn_text(plain, FOUR, chat=True) == "\nTool: <tool_response>\n4\n</tool_response>\nAssistant:"
    assert tool_turn_text(plain, FOUR, chat=False) == "\n<tool_response>\n4\n</tool_response>\n"
    assert chat_with_tools(plain, CONVERSATION[:1], []) == "User: What is 2+2?\nAssistant:"


@pytest.mark.parametrize("template", ["chatml", QWEN_LIKE, STRICT_ROLES])
def test_no_tools_is_the_plain_rendering(chatml, template):
    tokenizer = chatml if template == "chatml" else with_template(chatml, template)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    for generation_prompt in (True, False):
        expected = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
        assert chat_with_tools(tokenizer, messages, [], add_generation_prompt=generation_prompt) == expected


def test_a_template_that_cannot_render_falls_back_to_plain_text(chatml):
    broken = with_template(chatml, "{{ raise_exception('no') }}")
    assert tool_turn_text(broken, FOUR, chat=True) == "\n<tool_response>\n4\n</tool_response>\n"


def test_python_runs_the_code_as_a_script():
    """Code behind `if __name__ == "__main__":` runs, as `python script.py` would run it (the sandbox's
    programs are module `solution` otherwise)."""
    result = run_one(load_tools("python"), "python", code='if __name__ == "__main__":\n    print("main ran")')
    assert not result.error and result.content == "main ran"
