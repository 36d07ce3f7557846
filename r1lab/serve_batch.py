"""The generation side of `r1lab serve`: requests batched into shared `engine.generate` calls, and dropped
when their client goes away.

`Batcher` runs the requests that arrive within `wait_s` of each other as one generate call per (n,
sampling) from a worker thread. A request's prompt is token ids (r1lab/serve_prompt.py). A request with
a `seed` has its own random streams (`Engine.generate`'s seeds), so its samples do not depend on the
requests it shares a batch with; in a call where some request has one, the others get a fresh random seed.

A request is dropped, not run to its end, when its client goes away (`answer`, and the streaming route):
still queued, its future is cancelled and the batch skips it (no prefill); running, its `watch` says so
and the engine drops its rows at the next token. `answer` learns of the disconnect from the ASGI receive
channel (an `http.disconnect` message), without polling.
"""
from __future__ import annotations

import asyncio
import queue
import random
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass

from r1lab.rollout import Sample, Sampling
from r1lab.serve_request import APIError


@dataclass
class _Request:
    prompt: list[int]
    n: int
    sampling: Sampling
    future: Future
    watch: object = None     # optional watch(j, tokens) -> keep going?, for sample j of this request
    seed: int | None = None


@dataclass
class _Call:
    work: object             # a function of no arguments, run on the worker thread
    future: Future


class Batcher:
    """Runs concurrent requests as shared `engine.generate` calls, from one worker thread; `pending`
    counts the requests submitted and not finished (waiting or running)."""

    def __init__(self, engine, max_prompts: int = 32, wait_s: float = 0.02):
        self.engine, self.max_prompts, self.wait_s = engine, max_prompts, wait_s
        self.queue: queue.Queue[_Request] = queue.Queue()
        self.pending, self.lock = 0, threading.Lock()
        threading.Thread(target=self._loop, daemon=True, name="r1lab-batcher").start()

    def submit(self, prompt: list[int], n: int, sampling: Sampling, watch=None, seed: int | None = None) -> Future:
        """A future of the n samples; cancel it to drop the request before its batch starts."""
        future: Future = Future()
        with self.lock:
            self.pending += 1
        future.add_done_callback(self._finished)
        self.queue.put(_Request(prompt, n, sampling, future, watch, seed))
        return future

    def call(self, work) -> Future:
        """A future of `work()`, run on the worker thread between generate calls, so that nothing else uses
        the model meanwhile (e.g. a scoring pass: r1lab/serve_logprobs.py)."""
        future: Future = Future()
        with self.lock:
            self.pending += 1
        future.add_done_callback(self._finished)
        self.queue.put(_Call(work, future))
        return future

    def check_room(self, requests: int, max_queue: int) -> None:
        """A 429 with Retry-After where `requests` more would pass `max_queue` waiting or running."""
        if self.pending + requests > max_queue:
            raise APIError(429, f"the server has {self.pending} requests waiting or running, its limit "
                                f"(--max-queue {max_queue}); retry later", "rate_limit_error",
                           code="queue_full", headers={"Retry-After": "1"})

    def _finished(self, _future) -> None:
        with self.lock:
            self.pending -= 1

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
                if not request.future.set_running_or_notify_cancel():   # cancelled while it waited
                    continue
                if isinstance(request, _Call):
                    self._call(request)
                else:
                    alike[(request.n, request.sampling)].append(request)
            for (n, sampling), requests in alike.items():
                self._run(requests, n, sampling)

    @staticmethod
    def _call(call: _Call) -> None:
        try:
            call.future.set_result(call.work())
        except Exception as e:     # the server stays up; the caller gets the error
            call.future.set_exception(e)

    def _run(self, requests: list[_Request], n: int, sampling: Sampling) -> None:
        def watch(k, tokens):
            request = requests[k // n]
            return request.watch is None or request.watch(k % n, tokens)
        seeded = {}
        if any(r.seed is not None for r in requests):
            seeded["seeds"] = [random.getrandbits(63) if r.seed is None else r.seed for r in requests]
        try:
            results = self.engine.generate([r.prompt for r in requests], n, sampling, watch, **seeded)
        except Exception as e:     # the server stays up; each waiting request gets the error
            for r in requests:
                r.future.set_exception(e)
            return
        for r, samples in zip(requests, results):
            r.future.set_result(samples)


async def until_disconnected(receive) -> None:
    """Returns once the client has gone: the ASGI receive channel, its body read, says http.disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def answer(receive, batcher: Batcher, prompts: list[list[int]], n: int, sampling: Sampling,
                 seed: int | None = None) -> list[list[Sample]]:
    """n samples for each prompt; a 499 (and the generation dropped) where the client goes away first."""
    gone = threading.Event()
    futures = [batcher.submit(p, n, sampling, lambda j, tokens: not gone.is_set(), seed) for p in prompts]
    waiting = asyncio.gather(*map(asyncio.wrap_future, futures))
    listening = asyncio.ensure_future(until_disconnected(receive))
    try:
        await asyncio.wait({waiting, listening}, return_when=asyncio.FIRST_COMPLETED)
        if waiting.done():
            return waiting.result()
        raise APIError(499, "the client closed the connection before the reply", code="client_closed_request")
    finally:
        listening.cancel()
        if not waiting.done():          # gone (or this task cancelled): queued requests skipped, running rows dropped
            gone.set()
            for future in futures:
                future.cancel()
            waiting.add_done_callback(lambda f: f.cancelled() or f.exception())
