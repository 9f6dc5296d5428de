"""The page driven in a real browser: Debian's Chromium through Selenium (the browser tests, bench/webui_latency.py).

Beside the page's element ids (app.py), so the two change together. Both binaries are given by path, so
Selenium never tries to download a browser or a driver. Every request that leaves loopback is sent to a
dead proxy and fails: a page that works here works offline.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import urlparse

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver (Debian), and pip install selenium (the test extra)"
NOTHING = "http://127.0.0.1:9"  # the discard port: a proxy that is never there


def missing_browser() -> str | None:
    """Why the page cannot be driven here (a missing binary or package), or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} not found: {INSTALL}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed: {INSTALL}"
    return None


def start_browser(width: int = 1200, height: int = 900):
    """A headless Chromium whose requests off loopback fail, with its network log on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        f"--proxy-server={NOTHING}",  # loopback bypasses proxies: the page's own requests still work
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class Page:
    """One browser window on the page, by the element ids of app.py."""

    def __init__(self, driver, url: str, timeout: float = 60) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.timeout = driver, timeout
        self.wait = WebDriverWait(driver, timeout, poll_frequency=0.05)
        driver.get(url)
        self.find("#prompt textarea")

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.wait.until(lambda d: d.find_element(By.CSS_SELECTOR, css))

    def tab(self, name: str) -> None:
        from selenium.webdriver.common.by import By

        self.wait.until(lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text == name])
        next(t for t in self.driver.find_elements(By.CSS_SELECTOR, "button[role=tab]") if t.text == name).click()

    def type(self, elem_id: str, text: str) -> None:
        """Replace the text of a textbox (or a slider's number box), then leave it so Gradio takes the value."""
        from selenium.webdriver.common.keys import Keys

        box = self.find(f"#{elem_id} textarea, #{elem_id} input[type=number], #{elem_id} input")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        if text:
            # set the value in one go: typing 10,000 characters key by key takes a browser many seconds
            self.driver.execute_script("arguments[0].value = arguments[1].slice(0, -1);", box, str(text))
            box.send_keys(str(text)[-1])
        box.send_keys(Keys.TAB)

    def upload(self, elem_id: str, path: str | Path) -> None:
        """Upload a file into an image control and wait until the control shows it (a new picture)."""
        shown = f"return document.querySelector('#{elem_id} img')?.src || ''"
        before = self.driver.execute_script(shown)
        self.find(f"#{elem_id} input[type=file]").send_keys(str(Path(path).resolve()))
        self.wait.until(lambda d: d.execute_script(shown) not in ("", before))

    def click(self, elem_id: str) -> None:
        self.find(f"#{elem_id}").click()

    def status(self, tab: str) -> str | None:
        """The tab's status line; None while a request is running (Gradio's progress tracker is up)."""
        return self.driver.execute_script(
            "const box = document.querySelector(arguments[0]);"
            "if (!box || box.querySelector('.pending, [data-testid=status-tracker]:not(.hide)')) return null;"
            "return box.querySelector('[data-testid=markdown]').innerText.trim();",
            f"#status-{tab}",
        )

    def wait_for_status(self, tab: str, before: str | None) -> str:
        """The tab's status line once the request sent after it read `before` has answered."""
        return self.wait.until(lambda _: (text := self.status(tab)) and text != before and text)

    def table(self, elem_id: str) -> list[list[str]]:
        """The rows of a (read-only) table, as the page shows them."""
        columns, cells = self.driver.execute_script(
            "const grid = document.querySelector(arguments[0] + ' [role=grid]');"
            "return [Number(grid.getAttribute('aria-colcount')),"
            " [...grid.querySelectorAll('[role=gridcell]')].map(c => c.innerText.trim())];",
            f"#{elem_id}",
        )
        return [cells[i : i + columns] for i in range(0, len(cells), columns)]

    def gallery(self, elem_id: str) -> list[str]:
        """The captions of the gallery's images that have loaded (an image that is still loading is left out)."""
        loaded = self.driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])]"
            ".filter(img => img.complete && img.naturalWidth > 0).map(img => img.alt || '')",
            f"#{elem_id} .grid-container img",
        )
        return list(loaded)

    def run(self, tab: str, button: str, gallery: str | None, count: int | None) -> tuple[float, str, list[str]]:
        """Click `button`, wait for the answer (and for `count` images in `gallery`): (seconds, status, captions)."""
        before = self.status(tab)
        started = time.perf_counter()
        self.click(button)
        status = self.wait_for_status(tab, before)
        captions: list[str] = []
        if gallery and "⚠️" in status:
            captions = self.gallery(gallery)
        elif gallery:
            captions = self.wait.until(lambda _: (c := self.gallery(gallery)) and len(c) >= (count or 1) and c)
        return time.perf_counter() - started, status, captions

    def generate(self, prompt: str, count: int, **controls) -> tuple[float, str, list[str]]:
        """Type the prompt and any controls (`images=4`, `seed=7`, `candidates=1`), click Generate, wait for
        `count` images: (seconds from the click until they are shown, status line, image captions)."""
        self.type("prompt", prompt)
        for name, value in controls.items():
            self.type(f"generate-{name.replace('_', '-')}", str(value))
        return self.run("generate", "generate-button", "gallery", count)

    def requests_off_loopback(self) -> list[str]:
        """Every URL the page asked for that is not on this machine (data: and blob: URLs are local)."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                url = message["params"]["request"]["url"]
                parsed = urlparse(url)
                if parsed.scheme not in ("data", "blob") and parsed.hostname not in ("127.0.0.1", "localhost"):
                    urls.append(url)
        return urls

    def screenshot(self, path: str | Path, colors: int = 96) -> Path:
        """A PNG of the window, reduced to `colors` colours (a few tens of kB for the README)."""
        from io import BytesIO

        from PIL import Image

        self.driver.execute_script("window.scrollTo(0, 0); document.activeElement?.blur();")
        time.sleep(0.3)  # let the page settle (hover and focus styles, the scroll)
        image = Image.open(BytesIO(self.driver.get_screenshot_as_png())).convert("RGB")
        path = Path(path)
        image.quantize(colors, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        return path
