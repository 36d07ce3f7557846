"""Distillation data: a teacher writes reasoning traces, verified and filtered as in rejection sampling.

    r1lab train distill --teacher https://api.deepseek.com --teacher-model deepseek-reasoner --task arithmetic
    r1lab train distill --teacher runs/r1/grpo/checkpoint --task arithmetic      # a local teacher

The traces become `data.jsonl` for an SFT stage into the student (see recipes/distill.yaml); the
talk's "Distilled" result is SFT only, no RL.

An endpoint teacher is any OpenAI-compatible chat API (key from the `api_key_env` variable, as the
talk's `llm` function does with DeepSeek's). Its `reasoning_content` (DeepSeek's reasoning models)
becomes the reasoning; otherwise the reply is parsed with the template. Requests run concurrently up
to `concurrency`, retry with exponential backoff on 429, 5xx and connection errors (honouring
Retry-After), and each finished reply is appended to `teacher.jsonl` at once: a crash midway never
pays again for finished prompts. A local teacher is sampled with the HF engine.
"""
from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from r1lab.eta import Progress

from r1lab import R1labError
from r1lab.data import resume_appending
from r1lab.algorithms.rejection import select, write_data
from r1lab.config import DistillConfig, readability
from r1lab.templates import R1_ZERO_INSTRUCTION, Template, get_template
from r1lab.types import Completion, Problem

BACKOFF_SECONDS = 1.0   # first retry delay; doubles each time, at most 60 s
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def chat_request(url: str, body: dict, key: str | None, max_retries: int) -> dict:
    """POST one chat completion, retrying transient failures; the reply's JSON."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    for attempt in range(max_retries + 1):
        delay = min(60.0, BACKOFF_SECONDS * 2 ** attempt)
        try:
            request = urllib.request.Request(url, json.dumps(body).encode(), headers)
            with urllib.request.urlopen(request, timeout=600) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            if e.code not in RETRY_STATUS or attempt == max_retries:
                raise R1labError(f"teacher {url}: HTTP {e.code}: {e.read()[:300].decode(errors='replace')}") from None
            retry_after = e.headers.get("Retry-After")
            delay = float(retry_after) if retry_after and retry_after.replace(".", "").isdigit() else delay
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            if attempt == max_retries:
                raise R1labError(f"teacher {url}: unreachable after {max_retries + 1} attempts: {e}") from None
        time.sleep(delay)
    raise AssertionError("unreachable")


def trace_completion(message: dict, template: Template) -> Completion:
    """A teacher reply as a Completion in the template's format (reasoning_content -> reasoning)."""
    content = (message.get("content") or "").strip()
    reasoning = message.get("reasoning_content")
    if reasoning:
        parsed_answer = template.parse(content)[1]
        answer = parsed_answer if parsed_answer is not None else content
    else:
        reasoning, answer = template.parse(content)
    if not reasoning or not answer:
        return Completion(text=content, template=template.name)
    reasoning = reasoning.strip()
    return Completion(text=template.compose(reasoning, answer), template=template.name, reasoning=reasoning, answer=answer)


def endpoint_traces(cfg: DistillConfig, problems: list[Problem], template: Template, cache: Path) -> dict:
    """{(problem id, sample index): assistant message}, from the cache and then the endpoint."""
    done = {(row["id"], row["sample"]): row["message"] for row in resume_appending(cache)}
    todo = [(p, i) for p in problems for i in range(cfg.samples_per_prompt) if (p.id, i) not in done]
    url = cfg.teacher.rstrip("/") + "/chat/completions"
    key = os.environ.get(cfg.api_key_env)
    lock = threading.Lock()

    def ask(item):
        problem, index = item
        body = {"model": cfg.teacher_model, "temperature": cfg.temperature, "top_p": cfg.top_p,
                "max_tokens": cfg.max_new_tokens,
                "messages": [{"role": "system", "content": R1_ZERO_INSTRUCTION}, {"role": "user", "content": problem.prompt}]}
        reply = chat_request(url, body, key, cfg.max_retries)
        try:
            message = reply["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            raise R1labError(f"teacher {url}: reply without choices[0].message: {str(reply)[:300]}") from None
        with lock, cache.open("a") as f:
            f.write(json.dumps({"id": problem.id, "sample": index, "message": message}, ensure_ascii=False) + "\n")
            done[(problem.id, index)] = message

    with ThreadPoolExecutor(cfg.concurrency) as pool:
        for _ in Progress(pool.map(ask, todo), total=len(todo), desc="teacher", unit="request"):
            pass
    return done


def local_traces(cfg: DistillConfig, problems: list[Problem], template: Template) -> list[list[Completion]]:
    from r1lab.rollout import Sampling, rollout_all
    from r1lab.rollout.hf import HFEngine
    from r1lab.training import load_on_device

    model, tokenizer = load_on_device(cfg.teacher)
    return rollout_all(HFEngine(model, tokenizer, seed=cfg.seed), problems, template, tokenizer, cfg.samples_per_prompt,
                       Sampling(cfg.temperature, cfg.top_p, cfg.max_new_tokens), desc="teacher")


def run_distill(cfg: DistillConfig) -> Path:
    from r1lab.tasks import get_task

    filters, template = readability(cfg.filters), get_template(cfg.template)
    problems = get_task(cfg.task, **cfg.task_options).problems("train", cfg.problems, cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.teacher.startswith(("http://", "https://")):
        messages = endpoint_traces(cfg, problems, template, out / "teacher.jsonl")
        groups = [[trace_completion(messages[(p.id, i)], template) for i in range(cfg.samples_per_prompt)] for p in problems]
    else:
        groups = local_traces(cfg, problems, template)
    rows, reasons = select(groups, problems, filters, cfg.samples_per_prompt)
    summary = {"teacher": cfg.teacher, "sampled": len(problems) * cfg.samples_per_prompt, "kept": len(rows),
               "dropped": dict(reasons)}
    print(f"distillation: kept {len(rows)} of {summary['sampled']} teacher traces; dropped: {dict(reasons)}")
    return write_data(out, rows, summary)
