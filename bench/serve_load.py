"""Serving throughput at 1 and at 16 concurrent clients (batching should make the second clearly higher).

    .venv/bin/python bench/serve_load.py [--model smollm2-135m] [--requests 32] [--max-tokens 32]

Starts `r1lab serve`'s app in-process on a free loopback port, sends the same chat request from 1
client and then from 16, and prints requests/s and generated tokens/s for each.
"""
from __future__ import annotations

import argparse
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import uvicorn

from r1lab.training import load_on_device
from r1lab.rollout.hf import HFEngine
from r1lab.serve import build_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    model, tokenizer = load_on_device(args.model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(HFEngine(model, tokenizer, max_batch=64), tokenizer, args.model),
                                           host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)

    def ask(i: int) -> int:
        reply = client.chat.completions.create(model=args.model, max_tokens=args.max_tokens, temperature=0.6,
                                               messages=[{"role": "user", "content": f"Calculate {i} + {i + 1}"}])
        return reply.usage.completion_tokens

    print(f"{args.model}, {args.requests} requests, <= {args.max_tokens} new tokens each")
    print(f"{'clients':>8}{'req/s':>10}{'tok/s':>10}")
    for clients in (1, 16):
        began = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            tokens = sum(pool.map(ask, range(args.requests)))
        seconds = time.perf_counter() - began
        print(f"{clients:8}{args.requests / seconds:10.2f}{tokens / seconds:10.1f}")
    server.should_exit = True


if __name__ == "__main__":
    main()
