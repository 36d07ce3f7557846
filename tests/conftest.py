import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch, request):
    """Tests never write to the user's cache; the slow embedded-model tests share one session cache."""
    if "slow" not in request.keywords:
        monkeypatch.setenv("R1LAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


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
