"""The chat page in a real headless browser (Debian's chromium, driven by Playwright; no browser download)."""
import shutil

import pytest

from r1lab.models import tiny_tokenizer
from serving import ScriptedEngine, start_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (apt-get install chromium)")


def reply(system, user):
    if "long" in user:
        return "<think> " + "thinking " * 400 + "</think> <answer> never </answer>"
    return f"<think> The user asked: {user} </think> <answer> 6 </answer>"


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright
    server, url = start_server(ScriptedEngine(reply, tiny_tokenizer(), delay=0.004), tiny_tokenizer())
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 420, "height": 800})      # a narrow window
        page.missing = []
        page.on("response", lambda response: response.status == 404 and page.missing.append(response.url))
        page.goto(url.removesuffix("/v1") + "/")
        yield page
        browser.close()
    server.should_exit = True


def test_chat_streams_reasoning_apart_collapses_persists_and_stops(page):
    from playwright.sync_api import expect

    expect(page.locator("#model")).to_have_text("tiny-random")
    expect(page.locator("#max_tokens")).to_have_attribute("max", "64")      # the server's limit, from /v1/models
    assert page.input_value("#max_tokens") == "64" and page.missing == []  # no 404, not even a favicon
    page.fill("#max_tokens", "100000")                         # sent as the server's limit
    page.fill("#input", "Calculate 1 + 2 + 3")
    page.keyboard.press("Enter")
    turn = page.locator(".turn").last
    expect(turn.locator(".answer")).to_have_text("6")
    expect(turn.locator(".reasoning-text")).to_have_text("The user asked: Calculate 1 + 2 + 3")
    details = turn.locator("details.reasoning")
    assert details.evaluate("d => d.open")
    details.locator("summary").click()
    assert not details.evaluate("d => d.open")
    details.locator("summary").click()
    assert details.evaluate("d => d.open")

    page.reload()                                              # the conversation survives a reload
    expect(page.locator(".turn .user")).to_have_text(["Calculate 1 + 2 + 3"])
    expect(page.locator(".turn .answer")).to_have_text(["6"])

    page.fill("#input", "a long one")                          # stop a long reply midway
    page.click("#send")
    long_turn = page.locator(".turn").last
    expect(long_turn.locator(".reasoning-text")).to_contain_text("thinking thinking")
    page.click("#stop")
    expect(long_turn.locator(".error")).to_have_text("(stopped)")
    reasoning = long_turn.locator(".reasoning-text").inner_text()
    assert 0 < reasoning.count("thinking") < 400 and long_turn.locator(".answer").inner_text() == ""
    expect(page.locator("#send")).to_be_enabled()


def test_server_errors_are_shown(page):
    from playwright.sync_api import expect

    expect(page.locator("#model")).to_have_text("tiny-random")
    page.fill("#temperature", "9")                             # over the server's limit: a 400
    page.fill("#input", "hello")
    page.keyboard.press("Enter")
    expect(page.locator(".turn .error").last).to_contain_text("400: 'temperature' must be a number")
