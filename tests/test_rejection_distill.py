import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import r1lab.algorithms.distill as distill
from r1lab import R1labError
from r1lab.algorithms.distill import run_distill, trace_completion
from r1lab.algorithms.rejection import rejection_reason, select
from r1lab.algorithms.sft import load_pairs
from r1lab.config import DistillConfig, ReadabilityFilters, load_config
from r1lab.rollout import Sample, to_completion
from r1lab.tasks import get_task
from r1lab.templates import get_template
from r1lab.types import Problem

R1 = get_template("r1_zero")
P = Problem("p", "Calculate 1 + 2 + 3", "6")
F = ReadabilityFilters()


def c(text):
    return to_completion(Sample([], [], text, "stop"), R1)


@pytest.mark.parametrize("text, reason", [
    ("<think> 1 + 2 = 3, 3 + 3 = 6 </think> <answer> 6 </answer>", None),
    ("<think> thinking </think>", "no_answer"),
    ("<think> thinking </think> <answer> 7 </answer>", "incorrect"),
    ("<answer> 6 </answer>", "no_reasoning"),
    ("<think> I think 答案 is six </think> <answer> 6 </answer>", "language_mixing"),
    ("<think> " + "word " * 400 + "</think> <answer> 6 </answer>", "long_paragraph"),
    ("<think> ```python\nprint(6)\n``` </think> <answer> 6 </answer>", "code_block"),
])
def test_rejection_reasons(text, reason):
    assert rejection_reason(c(text), P, F) == reason


@pytest.mark.parametrize("reasoning, reward", [
    ("5 + 17 = 22", 1.0),                  # no words: not language mixing
    ("I add: 5 + 17 = 22", 1.0),
    ("I add 答案 5 + 17 = 22", 0.5),       # two English words, two Chinese characters
    ("", 0.0),                             # no reasoning: no reward, not kept
])
def test_language_reward_and_rejection_filter_agree(reasoning, reward):
    from r1lab.rewards import REWARDS
    completion, problem = c(f"<think>{reasoning}</think> <answer> 22 </answer>"), Problem("p", "Calculate 5 + 17", "22")
    assert REWARDS["language"](completion, problem) == pytest.approx(reward)
    assert (rejection_reason(completion, problem, F) is None) == (reward >= F.min_language_share)


def test_thresholds_come_from_the_config():
    long = c("<think> " + "word " * 400 + "</think> <answer> 6 </answer>")
    assert rejection_reason(long, P, ReadabilityFilters(max_paragraph_chars=5000)) is None
    code = c("<think> ```x``` ok </think> <answer> 6 </answer>")
    assert rejection_reason(code, P, ReadabilityFilters(allow_code_blocks=True)) is None


def test_select_dedupes_and_caps_per_prompt():
    good = "<think> 1 + 2 = 3 </think> <answer> 6 </answer>"
    other = "<think> 3 + 3 = 6 </think> <answer> 6 </answer>"
    rows, reasons = select([[c(good), c(good + " "), c(other), c("<answer>5</answer>")]], [P], F, max_per_prompt=1)
    assert [r["completion"] for r in rows] == [good.strip()]
    assert reasons == {"duplicate": 1, "over_max_per_prompt": 1, "incorrect": 1}


def test_reasoning_content_becomes_the_think_part():
    trace = trace_completion({"reasoning_content": "1 + 2 = 3. 3 + 3 = 6.", "content": "6"}, R1)
    assert trace.text == "<think> 1 + 2 = 3. 3 + 3 = 6. </think> <answer> 6 </answer>" and trace.answer == "6"
    tagged = trace_completion({"content": "<think> x </think> <answer> 6 </answer>"}, R1)
    assert tagged.reasoning == "x" and tagged.answer == "6"
    assert trace_completion({"content": "just 6"}, R1).answer is None


class Teacher(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint: answers correctly with reasoning_content; every 3rd request is a 429."""
    requests = []
    error = 0                          # added to every answer
    lock = threading.Lock()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            Teacher.requests.append(body)
            throttled = len(Teacher.requests) % 3 == 0
        if throttled:
            self.send_response(429)
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        question = body["messages"][-1]["content"].removeprefix("Calculate ")
        reply = {"choices": [{"message": {"role": "assistant", "reasoning_content": f"I add: {question}.",
                                          "content": str(eval(question) + Teacher.error)}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_distill_from_an_endpoint_retries_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(distill, "BACKOFF_SECONDS", 0.01)
    monkeypatch.setenv("TEACHER_KEY", "secret")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Teacher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Teacher.requests = []
    try:
        cfg = load_config(DistillConfig, None, {"teacher": f"http://127.0.0.1:{server.server_port}/v1",
                                                "api_key_env": "TEACHER_KEY", "problems": "6", "concurrency": "3",
                                                "out": str(tmp_path / "d")})
        data = run_distill(cfg)
        rows = [json.loads(line) for line in data.read_text().splitlines()]
        problems = get_task("arithmetic").problems("train", 6, 0)
        assert len(rows) == 6 and {r["prompt"] for r in rows} == {p.prompt for p in problems}
        assert all(R1.parse(r["completion"])[1] == r["answer"] for r in rows)
        assert len(Teacher.requests) > 6                       # some were throttled and retried
        asked = len(Teacher.requests)
        run_distill(cfg)                                         # everything cached: no new requests
        assert len(Teacher.requests) == asked
    finally:
        server.shutdown()


def test_sft_on_a_distillation_that_kept_nothing_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(distill, "BACKOFF_SECONDS", 0.01)
    monkeypatch.setattr(Teacher, "error", 1)
    monkeypatch.setenv("TEACHER_KEY", "secret")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Teacher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = load_config(DistillConfig, None, {"teacher": f"http://127.0.0.1:{server.server_port}/v1",
                                                "api_key_env": "TEACHER_KEY", "problems": "3", "out": str(tmp_path / "d")})
        data = run_distill(cfg)
        assert json.loads((tmp_path / "d" / "summary.json").read_text())["kept"] == 0
        with pytest.raises(R1labError, match=r"no rows: the stage that wrote it kept none of its 3 samples "
                                             r"\(dropped: \{'incorrect': 3\}\)"):
            load_pairs(str(data))                                # what the SFT stage after it reads
    finally:
        server.shutdown()
