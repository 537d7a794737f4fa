"""End to end in a real browser: the demo on tiny checkpoints, driven by headless Chromium through Selenium.

Needs Debian's `chromium` and `chromium-driver` (skipped with the install command when they are missing).
Set RLHFV_DEMO_SCREENSHOT=path to also save the final screenshot there, and RLHFV_DEMO_RUN=folder to use a
trained run instead of random tiny checkpoints; docs/demo.png was made with
`RLHFV_DEMO_RUN=runs/cpu-tiny RLHFV_DEMO_SCREENSHOT=docs/demo.png pytest tests/test_demo_browser.py`.
"""

from __future__ import annotations

import os
import shutil

import pytest
from browser import start_chromium
from demo_run import free_port, make_demo_run
from tiny_run import CPU_TINY

from rlhfv_nb.config import load_config
from rlhfv_nb.demo import Demo

TIMEOUT = 30


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    run = os.environ.get("RLHFV_DEMO_RUN")
    cfg = load_config(CPU_TINY, run_dir=run) if run else make_demo_run(tmp_path_factory.mktemp("demo-browser") / "run")
    return Demo.from_config(cfg)


@pytest.fixture(scope="module")
def url(demo):
    app = demo.launch(server_port=free_port(), prevent_thread_lock=True, quiet=True)
    yield app.local_url
    app.close()


def _text(driver, selector: str) -> str:
    """Text content of an element without whitespace (the page puts spaces between highlighted spans)."""
    from selenium.webdriver.common.by import By

    return "".join(driver.find_element(By.CSS_SELECTOR, selector).get_attribute("textContent").split())


def test_upload_ask_and_read_both_answers(browser, demo, url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, TIMEOUT)
    browser.get(url)
    example = demo.examples[0]
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(example.image)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image img"))  # uploaded and previewed
    for field, value in (("#question textarea", example.question), ("#objects textarea", example.objects)):
        box = browser.find_element(By.CSS_SELECTOR, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.ID, "ask").click()
    wait.until(lambda d: "DDPO:" in _text(d, "#status"))  # the final verdict, after both answers

    shown = [_text(browser, f"#answer-{i} .textfield") for i in range(len(demo.answerers))]
    status = browser.find_element(By.ID, "status").text.splitlines()  # rendered lines
    browser.set_window_size(1280, browser.execute_script("return document.documentElement.scrollHeight") + 40)
    shot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("RLHFV_DEMO_SCREENSHOT"):
        shutil.copy(shot, os.environ["RLHFV_DEMO_SCREENSHOT"])

    *spans, verdicts = list(demo.respond(example.image, example.question, example.objects, example.vocabulary))[-1]
    assert shown == ["".join("".join(piece for piece, _ in s).split()) for s in spans]
    assert status == verdicts.replace("**", "").split("  \n") and "not judged" not in verdicts
