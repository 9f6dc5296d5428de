"""The web page in a real browser (Debian's Chromium through Selenium): generate, two pages at once, score.

The server runs in this process on a free loopback port with the tiny test pipeline; the browser's requests
off loopback go to a dead proxy (minidalle.webui.browser), and each test checks that none was made.
Without Chromium these tests fail, naming the install line; MINIDALLE_ALLOW_NO_BROWSER=1 makes them skip.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from minidalle.webui import Handlers, load_models, resolve_models
from minidalle.webui.browser import Page, missing_browser, start_browser


def _missing() -> str | None:
    try:
        import gradio  # noqa: F401
    except ImportError:
        return "gradio is not installed: pip install -e '.[ui]'"
    return missing_browser()


@pytest.fixture(scope="module")
def browser_ready() -> None:
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("MINIDALLE_ALLOW_NO_BROWSER") == "1":
        pytest.skip(reason)
    pytest.fail(f"the browser tests need a browser: {reason} (MINIDALLE_ALLOW_NO_BROWSER=1 skips them)")


class TimedHandlers(Handlers):
    """The handlers, recording when each generate request ran (and holding it 0.4 s, so two requests sent
    together must overlap if the server runs them at once)."""

    def __init__(self, models) -> None:
        super().__init__(models)
        self.windows: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    def generate(self, *args):
        start = time.monotonic()
        time.sleep(0.4)
        try:
            return super().generate(*args)
        finally:
            with self.lock:
                self.windows.append((start, time.monotonic()))


@pytest.fixture(scope="module")
def server(browser_ready, tiny_pipeline_dir):
    from minidalle.webui import launch

    handlers = TimedHandlers(load_models(resolve_models([str(tiny_pipeline_dir)]), device="cpu"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app, url = launch(handlers, "127.0.0.1", port, concurrency=2, block=False)
    yield handlers, url
    app.close()


@pytest.fixture(scope="module")
def browsers(server):
    drivers = [start_browser(), start_browser()]
    yield drivers
    for driver in drivers:
        driver.quit()


def picture(url: str) -> np.ndarray:
    with urllib.request.urlopen(url, timeout=10) as response:
        return np.asarray(Image.open(BytesIO(response.read())).convert("RGB"))


def shown_pictures(page: Page, elem_id: str) -> list[np.ndarray]:
    sources = page.driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(img => img.src)", f"#{elem_id} .grid-container img"
    )
    return [picture(src) for src in sources]


def test_type_a_prompt_click_generate_and_see_the_images_with_their_seeds(server, browsers):
    handlers, url = server
    page = Page(browsers[0], url)
    seconds, status, captions = page.generate("a red circle", 3, images=3, candidates=1, seed=7)
    assert captions == ["seed 7", "seed 8", "seed 9"], status
    assert "3 image(s) in" in status and "seed 7" in status
    pipe = next(iter(handlers.models.values())).pipe
    want = pipe(["a red circle"], num_images_per_prompt=3, seed=7).images
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(shown_pictures(page, "gallery"), want))
    # an empty seed: a fresh one, shown, and the images are its
    _, status, captions = page.generate("a blue square", 2, images=2, seed="")
    seed = int(status.split("seed ")[1].split()[0])
    assert captions == [f"seed {seed}", f"seed {seed + 1}"]  # 1 candidate, as set above: seed + i
    # bad input: a message in the page, the gallery emptied, no trace
    for prompt, message in (("", "Type a prompt first"), ("x" * 10_000, "Prompt 1 has 10,000 characters")):
        _, status, captions = page.generate(prompt, 0, seed=1)
        assert status.startswith("⚠️") and message in status and captions == []
        assert "Traceback" not in page.driver.page_source
    _, status, _ = page.generate("a red circle", 0, seed=-5)
    assert status.startswith("⚠️ Seed must be between 0 and 2147483647; got -5"), status
    page.type("generate-guidance", "12")  # the page holds a slider to its range (the server checks it again)
    assert page.find("#generate-guidance input[type=number]").get_attribute("value") == "10"
    assert page.requests_off_loopback() == []


def test_two_pages_submitting_at_once_each_get_their_own_images(server, browsers):
    handlers, url = server
    pages = [Page(driver, url) for driver in browsers]
    handlers.windows.clear()
    for page, seed in zip(pages, (11, 22)):
        page.type("prompt", "a red circle")
        page.type("generate-images", "3")
        page.type("generate-candidates", "2")
        page.type("generate-temperature", "1")
        page.type("generate-seed", str(seed))
    before = [page.status("generate") for page in pages]
    for page in pages:
        page.click("generate-button")
    statuses = [page.wait_for_status("generate", b) for page, b in zip(pages, before)]
    (a_start, a_end), (b_start, b_end) = sorted(handlers.windows)
    assert b_start < a_end, "the server ran the two requests one after the other"
    pipe = next(iter(handlers.models.values())).pipe
    for page, seed, status in zip(pages, (11, 22), statuses):
        assert f"seed {seed}" in status
        captions = page.wait.until(lambda _, p=page: len(c := p.gallery("gallery")) == 3 and c)
        want = pipe(["a red circle"], num_images_per_prompt=3, num_candidates=2, temperature=1.0, seed=seed)
        assert captions == [f"seed {s}" for s in want.seeds]
        assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(shown_pictures(page, "gallery"), want.images))
        assert page.requests_off_loopback() == []


def test_upload_an_image_to_the_score_tab_and_see_the_captions_ranked(server, browsers, tmp_path):
    handlers, url = server
    page = Page(browsers[0], url)
    page.tab("Score")
    image = tmp_path / "red.png"
    Image.new("RGB", (48, 48), (220, 40, 40)).save(image)
    page.upload("score-image", image)
    page.type("captions", "a red circle\na blue square\na green triangle")
    _, status, _ = page.run("score", "score-button", None, None)
    assert "3 caption(s) scored" in status, status
    rows = page.table("score-table")
    assert [r[0] for r in rows] == ["1", "2", "3"], rows
    pipe = next(iter(handlers.models.values())).pipe
    scores = pipe.score([Image.open(image)] * 3, ["a red circle", "a blue square", "a green triangle"])
    assert [r[1] for r in rows] == [s["caption"] for s in sorted(scores, key=lambda s: -s["pmi"])]
    assert page.driver.execute_script("return document.querySelector('#score-seen img')?.naturalWidth") == 32
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image\n")
    page.upload("score-image", not_an_image)
    _, status, _ = page.run("score", "score-button", None, None)
    assert status.startswith("⚠️") and "not an image this page can read" in status
    assert page.requests_off_loopback() == []
