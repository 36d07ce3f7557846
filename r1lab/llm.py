"""`llm(system_prompt, user_prompt) -> str`, the function AgentJo's `strict_json` and `Agent` call.

    from r1lab.llm import make_llm
    llm = make_llm("runs/quickstart/grpo/checkpoint")          # in-process, any model spec
    llm = make_llm("http://127.0.0.1:8000/v1")                  # any OpenAI-compatible server (r1lab serve)

The reply comes back without its `<think>` part (a reasoning block breaks strict_json's parser), as
DeepSeek's API returns reasoning apart from the answer; in-process, the reply is read with the prompt's
tail, as the server does (`r1lab.serve.split_reasoning`), so a chat template that opens `<think>` works.
Sampling defaults to temperature 0 (the talk's example), 512 new tokens.
"""
from __future__ import annotations

import os
import threading

from r1lab.tools import render_chat
from r1lab.streaming import split_reasoning
from r1lab.templates import prompt_tail


def make_llm(model_or_url: str, temperature: float = 0.0, top_p: float = 1.0, max_tokens: int = 512,
             model_name: str | None = None, api_key_env: str = "OPENAI_API_KEY"):
    if model_or_url.startswith(("http://", "https://")):
        from openai import OpenAI

        client = OpenAI(base_url=model_or_url, api_key=os.environ.get(api_key_env) or "none")
        name = model_name or client.models.list().data[0].id

        def llm(system_prompt: str, user_prompt: str) -> str:
            reply = client.chat.completions.create(
                model=name, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                messages=[{"role": "system", "content": system_prompt}, {"role": "user", "content": user_prompt}])
            return split_reasoning(reply.choices[0].message.content or "")[1]
        return llm

    from r1lab.rollout import Sampling
    from r1lab.rollout.hf import HFEngine
    from r1lab.training import load_on_device

    model, tokenizer = load_on_device(model_or_url)
    engine, lock = HFEngine(model, tokenizer), threading.Lock()
    sampling = Sampling(temperature, top_p, max_tokens)

    def llm(system_prompt: str, user_prompt: str) -> str:
        prompt = render_chat(tokenizer, [{"role": "system", "content": system_prompt}, {"role": "user", "content": user_prompt}])
        with lock:
            sample = engine.generate([prompt], 1, sampling)[0][0]
        return split_reasoning(prompt_tail(prompt) + sample.text)[1]
    return llm
