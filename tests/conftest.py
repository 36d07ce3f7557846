import pytest


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch, request):
    """Tests never write to the user's cache; the slow embedded-model tests share one session cache."""
    if "slow" not in request.keywords:
        monkeypatch.setenv("R1LAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
