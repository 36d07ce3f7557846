"""Test helpers for the server: a scripted engine, a server on a free loopback port, tokenizers."""
import re
import socket
import threading
import time

import uvicorn

from r1lab.models import CHATML, tiny_tokenizer
from r1lab.rollout import Sample
from r1lab.serve import Limits, build_app, uvicorn_config

LIMITS = Limits(max_tokens=64, max_messages=4, max_bytes=20_000, max_n=4)


class ScriptedEngine:
    """Replies from a function of (system, user), parsed back out of the ChatML prompt (or, with
    `whole_prompt`, of the prompt itself), token by token (a watcher sees each, as with the real engine),
    up to the token that completes a stop string (kept, as HFEngine does; max_new_tokens is not applied); records batch sizes, prompts
    (as text; their ids as given, a text prompt tokenized as HFEngine does), seeds, cancelled samples and
    the tokens each sample got to."""

    def __init__(self, reply, tokenizer, delay=0.0, whole_prompt=False):
        self.reply, self.tokenizer, self.delay, self.batches, self.prompts, self.cancelled = reply, tokenizer, delay, [], [], 0
        self.whole_prompt, self.prompt_ids, self.seeds, self.generated = whole_prompt, [], [], []

    def generate(self, prompts, n, sampling, watch=None, seeds=None):
        self.batches.append(len(prompts))
        ids = [p if isinstance(p, list) else self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        self.prompt_ids += ids
        prompts = [self.tokenizer.decode(p) for p in ids]
        self.prompts += prompts
        self.seeds.append(seeds)
        out = []
        for i, prompt in enumerate(prompts):
            system = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", prompt, re.S)
            user = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", prompt, re.S)
            if self.whole_prompt:
                text = self.reply(prompt)
            else:
                text = self.reply(system.group(1) if system else "", user[-1] if user else "")
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            group = []
            for j in range(n):
                kept, finish = [], "stop"
                for token in ids:
                    kept.append(token)
                    time.sleep(self.delay)
                    if watch is not None and not watch(i * n + j, kept):
                        finish, self.cancelled = "cancelled", self.cancelled + 1
                        break
                    if sampling.stop and any(s in self.tokenizer.decode(kept) for s in sampling.stop):
                        break
                self.generated.append(len(kept))
                group.append(Sample(kept, [0.0] * len(kept), self.tokenizer.decode(kept), finish))
            out.append(group)
        return out


def think_tokenizer():
    """The tiny tokenizer with a chat template whose generation prompt opens `<think>` (as DeepSeek-R1-Distill's)."""
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = CHATML.replace("<|im_start|>assistant\n", "<|im_start|>assistant\n<think>\n")
    return tokenizer


def start_server(engine, tokenizer, api_key=None, limits=LIMITS, context=None):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(engine, tokenizer, "tiny-random", api_key, limits, batch_wait_s=0.05, context=context)
    server = uvicorn.Server(uvicorn_config(app, limits, host="127.0.0.1", port=port))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{port}/v1"


def talk_snippets(llm):
    """The talk's two AgentJo snippets with `llm`: (strict_json's result, the make_appointment calls, the agent)."""
    from agentjo import Agent, strict_json

    res = strict_json(system_prompt="Generate 1 main category and 3 sub-categories for topic", user_prompt="DeepSeek",
                      output_format={"Main Category": "Suitable for 12 year olds, type: str", "Sub-categories": "type: list"},
                      llm=llm)
    calls = []

    def make_appointment(person_name: str, start_time: str, end_time: str):
        '''Makes an appointment with person_name from start_time to end_time. Time is in xxxxH'''
        calls.append((person_name, start_time, end_time))
        return f"Appointment made with {person_name} from {start_time} to {end_time}"

    agent = Agent(agent_name="Personal Secretary", agent_description="You are a friendly assistant.", llm=llm,
                  verbose=False).assign_functions([make_appointment])
    agent.run("Make me an appointment with Paul at 3pm, Sally at 4pm. 1 hour each")    # raises if a parse fails
    return res, calls, agent


def wait_until(condition, seconds=20.0) -> bool:
    """Whether `condition()` came true within `seconds` (a deadline for a wait, never a timed assertion)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def metrics(url: str) -> str:
    """The server's /metrics text."""
    import urllib.request
    return urllib.request.urlopen(url.removesuffix("/v1") + "/metrics").read().decode()


def connect(url: str, head: bytes = b"", timeout=20.0) -> socket.socket:
    """A raw connection to the server of `url`, `head` sent on it."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.sendall(head)
    return sock


def post_head(path: str, body: bytes, length: int | None = None) -> bytes:
    """An HTTP/1.1 POST's head and `body` (Content-Length `length`, default the body's; the server closes
    the connection after its reply)."""
    return (f"POST /v1{path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body


def read_all(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (raises socket.timeout if it never does)."""
    data = b""
    while chunk := sock.recv(65_536):
        data += chunk
    return data
