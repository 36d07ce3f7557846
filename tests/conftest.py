import os

import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch, request):
    """Tests never write to the user's cache; the slow embedded-model tests share one session cache."""
    if "slow" not in request.keywords:
        monkeypatch.setenv("R1LAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def threads_restored():
    """`--threads` reaches the stages as R1LAB_THREADS and the governor sets torch's count process-wide: neither
    may leak from one test into the next."""
    import torch
    before, fixed = torch.get_num_threads(), os.environ.pop("R1LAB_THREADS", None)
    yield
    os.environ.pop("R1LAB_THREADS", None)
    if fixed is not None:
        os.environ["R1LAB_THREADS"] = fixed
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def determinism_restored():
    """`full_determinism` switches torch's deterministic kernels on process-wide: it may not leak into the next test."""
    import torch
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture
def start_scripted():
    """start(reply, tokenizer, delay=0, whole_prompt=False, **server_options) -> (engine, url): a server over a
    ScriptedEngine (tests/serving.py); every server a test started stops when it ends."""
    from serving import ScriptedEngine, start_server
    servers = []

    def start(reply, tokenizer, delay=0.0, whole_prompt=False, **server_options):
        engine = ScriptedEngine(reply, tokenizer, delay, whole_prompt)
        server, url = start_server(engine, tokenizer, **server_options)
        servers.append(server)
        return engine, url
    yield start
    for server in servers:
        server.should_exit = True


def pytest_configure(config):
    """On a GPU, the tests that compare two runs at 1e-6 (a resumed run against an uninterrupted one, skipped rows
    against computed ones) need CUDA's deterministic kernels; CPU kernels already are.
    R1LAB_TEST_CUDA_NONDETERMINISTIC=1 leaves CUDA's defaults (to see what they change)."""
    import torch
    from r1lab.training import deterministic_kernels
    if torch.cuda.is_available() and not os.environ.get("R1LAB_TEST_CUDA_NONDETERMINISTIC"):
        deterministic_kernels()
