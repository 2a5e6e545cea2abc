"""End-to-end tests of the browser UI (web/): a real headless Chromium, driven by Selenium, against
the real server started on a loopback port with a tiny random-weight checkpoint.

Random weights make noisy images, which is all these tests need: they check the plumbing (frames
drawn, progress, final image, Stop, error messages), not image quality. They need Debian's
`chromium` and `chromium-driver` packages (or CHROME_BINARY / CHROMEDRIVER pointing at a pair);
without them every test here is skipped with the reason, never passed.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
SERVER_MAX_STEPS = 900  # below the model's T = 1000, so the page can send a value only the server refuses
SERVER_MAX_JOBS = 3  # few, so that a test can fill them all
SERVER_MAX_QUEUE = 2  # and the queue

pytestmark = pytest.mark.browser

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # pragma: no cover - selenium is a test dependency
    webdriver = None


def find_browser() -> tuple[str | None, str | None]:
    """(chromium, chromedriver) paths, or None for whichever is missing."""
    binary = os.environ.get("CHROME_BINARY") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    return (
        binary if binary and Path(binary).is_file() else None,
        driver if driver and Path(driver).is_file() else None,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoint(folder: Path) -> Path:
    """A tiny class-conditional MNIST-shaped model with random weights (a few hundred kB)."""
    import torch

    from model.checkpoint import save_checkpoint
    from model.schedule import NoiseSchedule
    from model.unet import UNet, UNetConfig

    torch.manual_seed(0)
    unet = UNet(
        UNetConfig(
            in_channels=1,
            image_size=28,
            base_channels=8,
            channel_mults=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(14,),
            num_classes=10,
            dropout=0.0,
        )
    )
    with torch.no_grad():  # zero-initialised output layers would predict ε = 0 everywhere
        for p in unet.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    names = [str(i) for i in range(10)]
    return save_checkpoint(folder / "mnist.safetensors", unet, NoiseSchedule.from_name("linear"), "mnist", names)


class ServerFailed(RuntimeError):
    pass


@contextlib.contextmanager
def running_server(checkpoints: Path, log_path: Path, *flags: str, env: dict | None = None, prelude: str = ""):
    """`python -m server` on a free loopback port, serving web/ at /; yields its URL once /readyz says 200.
    `prelude` is Python run in the server's process before it starts (to register a sampler, say)."""
    port = free_port()
    command = ["-c", f"{prelude}\nfrom server.__main__ import main\nmain()"] if prelude else ["-m", "server"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, *command, "--host", "127.0.0.1", "--port", str(port),
             "--checkpoints", str(checkpoints), "--device", "cpu", *flags],
            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise ServerFailed(f"the server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(url + "readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerFailed(f"the server was not ready within 90 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def start_chromium(binary: str, driver_path: str, profile: Path, size: tuple[int, int] = (1280, 900)):
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver_path))


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    make_checkpoint(folder)
    # every run of these tests comes from one address: the per-client limit must let them fill the server
    flags = ("--max-jobs", str(SERVER_MAX_JOBS), "--max-queue", str(SERVER_MAX_QUEUE), "--max-jobs-per-client", "20")
    try:
        with running_server(
            folder, folder / "server.log", *flags, env={"DDPM_MAX_STEPS": str(SERVER_MAX_STEPS)}
        ) as url:
            yield url
    except ServerFailed as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if webdriver is None:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    binary, driver_path = find_browser()
    if binary is None or driver_path is None:
        missing = " and ".join(name for name, p in (("chromium", binary), ("chromedriver", driver_path)) if p is None)
        pytest.skip(f"no {missing} found: install Debian's chromium and chromium-driver to run the browser tests")
    try:
        driver = start_chromium(binary, driver_path, tmp_path_factory.mktemp("chromium-profile"))
    except WebDriverException as e:
        pytest.skip(f"chromium ({binary}) with chromedriver ({driver_path}) would not start: {e.msg}")
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, server_url):
    """The page freshly loaded, with the model list in."""
    browser.set_window_size(1280, 900)
    browser.get(server_url)
    # the speeds, runs and result earlier tests left: each test starts afresh
    browser.execute_script("localStorage.clear(); sessionStorage.clear()")
    browser.refresh()
    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
    yield browser
    # A JavaScript exception anywhere in the page is a bug, whatever the test checked.
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert not errors, errors


def set_value(driver, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def main_view(driver):
    return driver.find_element(By.CSS_SELECTOR, "#main-view .run-view")


def wait_for_state(driver, view, states: set[str], timeout: float = 30) -> str:
    try:
        WebDriverWait(driver, timeout).until(lambda _: view.get_attribute("data-state") in states)
    except TimeoutException:
        message = view.find_element(By.CSS_SELECTOR, ".rv-message").text
        pytest.fail(f"the run never reached {states}: state {view.get_attribute('data-state')!r}, message {message!r}")
    return view.get_attribute("data-state")


def canvas_std(driver, selector: str) -> float:
    """Standard deviation of a canvas's gray levels, read back from its pixels: 0 when blank."""
    return driver.execute_script(
        """
        const canvas = document.querySelector(arguments[0]);
        const {data} = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
        let sum = 0, sumSq = 0, n = data.length / 4;
        for (let i = 0; i < data.length; i += 4) {
          const v = (data[i] + data[i + 1] + data[i + 2]) / 3; sum += v; sumSq += v * v;
        }
        return Math.sqrt(Math.max(0, sumSq / n - (sum / n) ** 2));
        """,
        selector,
    )


def test_generate_streams_frames_to_the_end(page, server_url, tmp_path):
    set_value(page, "steps", "20")
    Select(page.find_element(By.ID, "n")).select_by_value("4")
    view = main_view(page)
    page.find_element(By.ID, "generate").click()

    assert wait_for_state(page, view, {"done", "error", "cancelled"}) == "done", view.text
    frames = int(view.get_attribute("data-frames-drawn"))
    assert frames >= 3, f"only {frames} frames were drawn"
    assert view.get_attribute("data-step") == view.get_attribute("data-total") == "20"
    progress = view.find_element(By.CSS_SELECTOR, ".rv-progress")
    assert progress.get_attribute("value") == progress.get_attribute("max") == "20"
    assert "step 20/20" in view.find_element(By.CSS_SELECTOR, ".rv-step").text
    assert canvas_std(page, "#main-view .rv-xt") > 5, "the final image is blank"
    # the seed used is shown, a PNG can be downloaded, and the filmstrip goes back through the run
    assert page.find_element(By.ID, "seed-used").text.startswith("Last run used seed ")
    assert view.find_element(By.CSS_SELECTOR, ".rv-download").get_attribute("href").startswith("data:image/png;base64,")
    thumbs = view.find_elements(By.CSS_SELECTOR, ".rv-thumb")
    assert len(thumbs) >= 3
    page.save_screenshot(str(tmp_path / "generated.png"))
    assert (tmp_path / "generated.png").stat().st_size > 10_000

    # a finished run can be branched where the server takes branches (with starting images), else not
    editing = "max_init_image_bytes" in httpx.get(server_url + "config").json()["limits"]
    assert view.find_element(By.CSS_SELECTOR, ".rv-branch").is_displayed() == editing
    assert page.find_element(By.ID, "start-image").is_displayed() == editing
    # the run is over: the right panel no longer calls its image a guess
    assert "final images" in view.find_element(By.CSS_SELECTOR, ".rv-x0-caption").text
    # the filmstrip is one Tab stop, and the arrow keys move through it
    assert [t.get_attribute("tabindex") for t in thumbs].count("0") == 1
    assert thumbs[-1].get_attribute("tabindex") == "0" and thumbs[-1].get_attribute("aria-selected") == "true"
    thumbs[-1].send_keys(Keys.HOME)
    assert page.switch_to.active_element == thumbs[0] and thumbs[0].get_attribute("aria-selected") == "true"
    thumbs[0].send_keys(Keys.ARROW_RIGHT)
    assert page.switch_to.active_element == thumbs[1] and thumbs[0].get_attribute("tabindex") == "-1"
    thumbs[1].send_keys(Keys.ARROW_LEFT)
    WebDriverWait(page, 5).until(lambda _: "step 20/20" not in view.find_element(By.CSS_SELECTOR, ".rv-step").text)
    assert "final" not in view.find_element(By.CSS_SELECTOR, ".rv-scrub-value").text
    assert "guess at step" in view.find_element(By.CSS_SELECTOR, ".rv-x0-caption").text
    # the run is in the history table, with its time, by the server's default sampler
    assert "DPM-Solver++" in page.find_element(By.CSS_SELECTOR, "#history tbody tr").text
    # the next run's time is estimated: from the server's measured speed if it publishes one, else from this run
    estimate = page.find_element(By.ID, "estimate").text
    published = httpx.get(server_url + "models").json()[0].get("seconds_per_row") is not None
    assert estimate.startswith("Estimated time: "), estimate
    assert ("the server's measured speed" if published else "your earlier runs") in estimate, estimate

    # each image on its own, and the run as a video
    each = view.find_elements(By.CSS_SELECTOR, ".rv-each-links a")
    assert len(each) == 4 and each[3].get_attribute("download").endswith("-4.png")
    assert each[0].get_attribute("href").startswith("data:image/png;base64,")
    view.find_element(By.CSS_SELECTOR, ".rv-video").click()
    video = view.find_element(By.CSS_SELECTOR, ".rv-video-link")
    WebDriverWait(page, 20).until(lambda _: video.is_displayed())
    assert video.get_attribute("href").startswith("blob:") and video.get_attribute("download").endswith(".webm")
    assert int(video.get_attribute("data-bytes")) > 1000


def test_same_seed_gives_the_same_images(page, tmp_path):
    """DDIM with η = 0 is deterministic: the seed shown after a run reproduces it exactly, and so does
    the Python the "Use this from code" box gives for it."""
    set_value(page, "steps", "10")
    Select(page.find_element(By.ID, "n")).select_by_value("1")
    set_value(page, "seed", "1234")
    view = main_view(page)
    grids = []
    for _ in range(2):
        page.find_element(By.ID, "generate").click()
        assert wait_for_state(page, view, {"done", "error"}) == "done", view.text
        grids.append(view.find_element(By.CSS_SELECTOR, ".rv-download").get_attribute("href"))
    assert grids[0] == grids[1]
    assert "1234" in page.find_element(By.ID, "seed-used").text

    code = page.execute_script("return document.getElementById('code-python').textContent")
    assert '"seed": 1234' in code, code
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=120, capture_output=True)
    shown = view.find_element(By.CSS_SELECTOR, ".rv-each-links a").get_attribute("href")
    assert shown == "data:image/png;base64," + base64.b64encode((tmp_path / "image-0.png").read_bytes()).decode()
    curl = page.execute_script("return document.getElementById('code-curl').textContent")
    assert curl.startswith("curl ") and '"seed":1234' in curl and '"every"' not in curl, curl


def test_the_address_carries_the_settings(page, server_url):
    page.get(server_url + "?sampler=ddpm&steps=12&n=4&seed=77&label=3&guidance=1.5&variance=fixed_small")
    WebDriverWait(page, 20).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
    assert Select(page.find_element(By.ID, "sampler")).first_selected_option.get_attribute("value") == "ddpm"
    assert Select(page.find_element(By.ID, "param-variance")).first_selected_option.text == "fixed_small"
    assert page.find_element(By.ID, "steps").get_attribute("value") == "12"
    assert page.find_element(By.ID, "seed").get_attribute("value") == "77"
    label = Select(page.find_element(By.ID, "label")).first_selected_option
    assert label.get_attribute("value") == "3" and label.text == "3"  # a digit is its own name, not "3: 3"
    assert page.find_element(By.ID, "link-notice").text == ""
    set_value(page, "seed", "78")
    page.find_element(By.ID, "generate").click()
    assert wait_for_state(page, main_view(page), {"done", "error"}) == "done"
    # after a run the address reproduces it, with the seed it used and the sampler's parameters
    link = "?model=mnist&sampler=ddpm&steps=12&n=4&seed=78&label=3&guidance=1.5&variance=fixed_small&thresholding=clip"
    assert page.current_url.endswith(link)
    # Copy link puts the same address on the clipboard
    page.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": server_url.rstrip("/"), "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    page.find_element(By.ID, "copy-link").click()
    WebDriverWait(page, 5).until(lambda d: d.find_element(By.ID, "copy-link-status").text.startswith("Link copied"))
    copied = page.execute_async_script("const done = arguments[0]; navigator.clipboard.readText().then(done, done)")
    assert copied == server_url + link, copied

    # a link with what the page cannot take says what it ignored, and keeps the form's own values
    page.get(server_url + "?sampler=ddim&steps=5000&n=7&eta=3&colour=red&seed=12")
    WebDriverWait(page, 20).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
    notice = page.find_element(By.ID, "link-notice").text
    for ignored in ("steps=5000", "n=7", "eta=3", "colour"):
        assert ignored in notice, notice
    assert "seed" not in notice and page.find_element(By.ID, "seed").get_attribute("value") == "12"
    assert page.find_element(By.ID, "steps").get_attribute("value") == "50"  # DDIM's default
    assert page.find_element(By.ID, "param-eta").get_attribute("value") == "0"


def test_stop_cancels_a_run(page):
    Select(page.find_element(By.ID, "sampler")).select_by_value("ddpm")
    assert page.find_element(By.ID, "steps").get_attribute("value") == "1000"  # DDPM's default: all T steps
    set_value(page, "steps", str(SERVER_MAX_STEPS))  # a long DDPM run
    Select(page.find_element(By.ID, "every")).select_by_value("1")
    view = main_view(page)
    page.find_element(By.ID, "generate").click()
    WebDriverWait(page, 30).until(lambda _: int(view.get_attribute("data-frames-drawn")) >= 2)
    WebDriverWait(page, 5).until(lambda _: view.find_element(By.CSS_SELECTOR, ".rv-remaining").text.endswith(" left"))
    assert float(view.get_attribute("data-remaining-s")) > 0
    # issue #26, 10: settings changed mid-run do not hide which run is going
    Select(page.find_element(By.ID, "sampler")).select_by_value("ddim")
    title = view.find_element(By.CSS_SELECTOR, ".rv-title").text
    assert title == f"Live view: mnist, DDPM, {SERVER_MAX_STEPS} steps", title
    page.find_element(By.ID, "stop").click()

    assert wait_for_state(page, view, {"cancelled", "done", "error"}, timeout=15) == "cancelled", view.text
    step = int(view.get_attribute("data-step"))
    assert 0 < step < SERVER_MAX_STEPS
    assert view.find_element(By.CSS_SELECTOR, ".rv-remaining").text == ""
    message = view.find_element(By.CSS_SELECTOR, ".rv-message").text
    assert "Stopped at step" in message
    # the stats say the step the message says (the server may have gone a step past the last frame drawn)
    assert f"step {step}/" in message and f"step {step}/" in view.find_element(By.CSS_SELECTOR, ".rv-step").text
    assert page.find_element(By.ID, "generate").is_enabled()
    assert not page.find_element(By.ID, "stop").is_enabled()


def test_the_keyboard_alone_runs_and_stops(page):
    page.execute_script("document.getElementById('sampler').focus()")
    ActionChains(page).send_keys(Keys.HOME).perform()  # the keys move through a closed select's options
    assert Select(page.find_element(By.ID, "sampler")).first_selected_option.get_attribute("value") == "ddpm"
    steps = page.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys(str(SERVER_MAX_STEPS), Keys.ENTER)  # Enter in a field submits the form
    view = main_view(page)
    WebDriverWait(page, 30).until(lambda _: int(view.get_attribute("data-frames-drawn")) >= 1)
    ActionChains(page).send_keys(Keys.ESCAPE).perform()  # Esc stops
    assert wait_for_state(page, view, {"cancelled", "done", "error"}, timeout=15) == "cancelled", view.text

    # Enter on Generate starts a run and hands the focus to Stop (Generate is disabled meanwhile);
    # Enter on Stop cancels it and the focus comes back to Generate.
    page.find_element(By.ID, "generate").send_keys(Keys.ENTER)
    WebDriverWait(page, 10).until(lambda d: d.switch_to.active_element.get_attribute("id") == "stop")
    WebDriverWait(page, 30).until(lambda _: int(view.get_attribute("data-frames-drawn")) >= 1)
    page.switch_to.active_element.send_keys(Keys.ENTER)
    assert wait_for_state(page, view, {"cancelled", "done", "error"}, timeout=15) == "cancelled", view.text
    assert page.switch_to.active_element.get_attribute("id") == "generate"

    # the focus ring stands out from the card behind it: at least 3:1 (WCAG 2.2, 1.4.11)
    ActionChains(page).send_keys(Keys.TAB).perform()
    ring, card = page.execute_script(
        """
        const style = getComputedStyle(document.activeElement);
        return [style.outlineStyle === 'none' ? null : style.outlineColor,
                getComputedStyle(document.querySelector('.controls')).backgroundColor];
        """
    )
    assert ring is not None and contrast(ring, card) >= 3, (ring, card, contrast(ring, card))


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two CSS rgb() colours."""

    def luminance(colour: str) -> float:
        channels = [int(v) / 255 for v in colour[colour.index("(") + 1 : colour.index(")")].split(",")[:3]]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_bad_value_shows_an_error_message(page):
    # caught in the page: nothing is sent, the field is marked and the message says what is wrong; the
    # page knows the server's max_steps (900, below the model's T) from GET /config
    # a control that takes no value now looks it: guidance without a class, dimmed, its label muted
    guidance = page.find_element(By.ID, "guidance")
    assert not guidance.is_enabled() and guidance.value_of_css_property("opacity") == "0.5"
    label, hint = (
        page.find_element(By.CSS_SELECTOR, s).value_of_css_property("color")
        for s in ('[for="guidance"]', "#steps-hint")
    )
    assert label == hint
    set_value(page, "steps", "950")
    page.find_element(By.ID, "generate").click()
    error = page.find_element(By.ID, "form-error")
    assert "Steps must be a whole number from 1 to 900" in error.text
    assert page.find_element(By.ID, "steps").get_attribute("aria-invalid") == "true"
    assert page.find_element(By.ID, "steps-hint").text == "Steps: a whole number from 1 to 900."
    assert main_view(page).get_attribute("data-state") == "idle"
    # a sampler parameter out of its range, as GET /config gives it
    Select(page.find_element(By.ID, "sampler")).select_by_value("ddim")
    page.execute_script("const e = document.getElementById('param-eta'); e.max = 2; e.value = 1.5;")
    page.find_element(By.ID, "generate").click()
    assert "eta must be from 0 to 1" in error.text
    assert page.find_element(By.ID, "param-eta").get_attribute("aria-invalid") == "true"

    # refused by the server: its reason is read out in a sentence, and the page is ready for the next run
    message = page.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        import('./js/api.js').then((api) => api.postSample({model: 'mnist', steps: 950, n: 1}))
          .then(() => done('accepted'), (e) => done(e.message));
        """
    )
    assert "rejected" in message and "steps" in message and "900" in message, message
    page.execute_script("document.getElementById('param-eta').value = 0.5")
    set_value(page, "steps", "3")
    page.find_element(By.ID, "generate").click()
    assert wait_for_state(page, main_view(page), {"error", "done"}) == "done"
    assert error.text == ""
    page.get_log("browser")  # Chromium logs the 422 as a failed resource: expected here


def test_post_mode_and_a_lost_server_read_clearly(page, server_url):
    """Streaming off uses POST /sample; a server that cannot be reached is reported, not waited on."""
    set_value(page, "steps", "10")
    Select(page.find_element(By.ID, "n")).select_by_value("4")
    Select(page.find_element(By.ID, "every")).select_by_value("off")
    view = main_view(page)
    page.find_element(By.ID, "generate").click()
    assert wait_for_state(page, view, {"done", "error"}) == "done", view.text
    assert canvas_std(page, "#main-view .rv-xt") > 5
    assert "the server spent" in view.find_element(By.CSS_SELECTOR, ".rv-elapsed").get_attribute("title")

    # Take the browser off the network, as if the server had gone away. (Not by pointing a <base> at a
    # dead port: the page's Content-Security-Policy, base-uri 'none', refuses that.)
    offline = {"latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    page.execute_cdp_cmd("Network.enable", {})
    page.execute_cdp_cmd("Network.emulateNetworkConditions", {**offline, "offline": True})
    try:
        Select(page.find_element(By.ID, "every")).select_by_value("auto")
        page.find_element(By.ID, "generate").click()
        assert wait_for_state(page, view, {"error", "done"}, timeout=20) == "error"
        assert "Cannot reach the server" in view.find_element(By.CSS_SELECTOR, ".rv-message").text
        # a run that never started: the bar is still (not indeterminate), and no time of the last run is left
        assert page.execute_script("return arguments[0].querySelector('.rv-progress').position", view) == 0
        assert view.find_element(By.CSS_SELECTOR, ".rv-elapsed").get_attribute("title") in (None, "")
    finally:
        page.execute_cdp_cmd("Network.emulateNetworkConditions", {**offline, "offline": False})
    page.get_log("browser")  # the failed connections are logged by Chromium: expected here


def test_a_waiting_run_and_a_full_server_read_clearly(page):
    # Take every sampling place with long runs opened from the page's own API module, then ask for one more.
    hog = "{model: 'mnist', sampler: 'ddpm', steps: 900, n: 1, every: 100}"
    started = page.execute_async_script(
        f"""
        const [places, done] = arguments;
        import('./js/api.js').then((api) => {{
          let started = 0;
          window.hogs = Array.from({{length: places}}, () => api.streamSample({hog},
            {{onStart: () => {{ if (++started === places) done(started); }}, onError: (e) => done(e.message)}}));
        }});
        """,
        SERVER_MAX_JOBS,
    )
    assert started == SERVER_MAX_JOBS, started
    view = main_view(page)
    message = view.find_element(By.CSS_SELECTOR, ".rv-message")
    try:
        page.find_element(By.ID, "generate").click()  # streamed: it waits in the server's queue
        WebDriverWait(page, 30).until(lambda _: message.text.startswith("Waiting: next in line"))
        assert view.get_attribute("data-queue-position") == "0" and view.get_attribute("data-state") == "running"
        page.find_element(By.ID, "stop").click()
        assert wait_for_state(page, view, {"cancelled", "error", "done"}) == "cancelled"
        queued = page.execute_async_script(
            f"""
            const [places, done] = arguments;
            import('./js/api.js').then((api) => {{
              let queued = 0;
              for (let i = 0; i < places; i++) window.hogs.push(api.streamSample({hog},
                {{onQueued: () => {{ if (++queued === places) done(queued); }}, onError: (e) => done(e.message)}}));
            }});
            """,
            SERVER_MAX_QUEUE,
        )
        assert queued == SERVER_MAX_QUEUE, queued  # the queue is full now
        page.find_element(By.ID, "generate").click()
        assert wait_for_state(page, view, {"error", "done"}) == "error"
        assert "The server is full" in message.text, message.text
        Select(page.find_element(By.ID, "every")).select_by_value("off")  # POST /sample: 503 and Retry-After
        page.find_element(By.ID, "generate").click()
        assert wait_for_state(page, view, {"error", "done"}) == "error"
        assert "The server is full" in message.text and "Try again in" in message.text, message.text
    finally:
        page.execute_script("window.hogs.forEach((hog) => hog.cancel())")
    page.get_log("browser")  # Chromium logs the 503 as a failed resource: expected here


def test_side_by_side_runs_both_from_one_seed(page):
    Select(page.find_element(By.ID, "n")).select_by_value("4")
    form = page.find_element(By.ID, "compare-form")
    # a bad value is marked on its own side's field, not on the main form's
    right_steps = form.find_element(By.CSS_SELECTOR, '[data-side="b"] [name="steps"]')
    right_steps.clear()
    right_steps.send_keys("0")
    page.find_element(By.ID, "compare-run").click()
    assert "Right: Steps must be" in page.find_element(By.ID, "compare-error").text
    assert right_steps.get_attribute("aria-invalid") == "true" and page.switch_to.active_element == right_steps
    assert page.find_element(By.ID, "steps").get_attribute("aria-invalid") is None
    assert form.find_element(By.CSS_SELECTOR, '[data-side="a"] [name="steps"]').get_attribute("aria-invalid") is None
    for side, sampler, steps in (("a", "ddpm", "40"), ("b", "ddim", "10")):
        fieldset = form.find_element(By.CSS_SELECTOR, f'[data-side="{side}"]')
        Select(fieldset.find_element(By.NAME, "sampler")).select_by_value(sampler)
        field = fieldset.find_element(By.NAME, "steps")
        field.clear()
        field.send_keys(steps)
    page.find_element(By.ID, "compare-run").click()
    views = [page.find_element(By.CSS_SELECTOR, f"#compare-view-{side} .run-view") for side in "ab"]
    for view in views:
        assert wait_for_state(page, view, {"done", "error", "cancelled"}) == "done", view.text
    summary = page.find_element(By.ID, "compare-summary").text
    assert "DDPM, 40 steps" in summary and "DDIM, 10 steps" in summary and "faster" in summary, summary
    seeds = {view.find_element(By.CSS_SELECTOR, ".rv-seed").text for view in views}
    assert len(seeds) == 1, seeds
    assert canvas_std(page, "#compare-view-a .rv-xt") > 5 and canvas_std(page, "#compare-view-b .rv-xt") > 5
    # both shared the server: "Your runs" says so beside their times, and the estimate is not made from them
    rows = page.find_elements(By.CSS_SELECTOR, "#history tbody tr.shared-time")
    assert len(rows) == 2 and all("(side by side)" in row.text for row in rows)
    assert page.execute_script("return localStorage.getItem('ddpm-demo.seconds-per-row')") is None
    assert "earlier runs" not in page.find_element(By.ID, "estimate").text
    assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"), "sideways scroll"


def test_forward_process_follows_the_slider(page):
    def std(selector):
        return canvas_std(page, selector)

    slider = page.find_element(By.ID, "forward-t")
    WebDriverWait(page, 10).until(lambda _: "ᾱ" in page.find_element(By.ID, "forward-numbers").text)
    page.execute_script("arguments[0].value = 0; arguments[0].dispatchEvent(new Event('input'))", slider)
    # at t = 0 almost nothing is added: x_t looks like x_0
    x0 = page.execute_script("return document.getElementById('forward-x0').toDataURL()")
    assert std("#forward-x0") > 20
    assert "ᾱ0 = 0.9999" in page.find_element(By.ID, "forward-numbers").text
    slider.send_keys(Keys.END)  # the keyboard reaches the last t
    assert page.find_element(By.ID, "forward-t-value").text == "999"
    assert "0.000" in page.find_element(By.ID, "forward-numbers").text  # √ᾱ_T ≈ 0: only noise is left
    assert page.execute_script("return document.getElementById('forward-x0').toDataURL()") == x0
    assert std("#forward-xt") > 20


def test_browser_math_matches_the_server(page, server_url):
    """The pure modules, run in the browser: the schedule the page falls back on equals the server's,
    and the helpers behave at their edges."""
    served = httpx.get(server_url + "models/mnist/schedule").json()["alphas_cumprod"]
    result = page.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        Promise.all([import('./js/forward.js'), import('./js/frames.js'), import('./js/pixels.js'),
                     import('./js/controls.js'), import('./js/api.js'), import('./js/estimate.js'),
                     import('./js/start-image.js')])
          .then(async ([forward, frames, pixels, controls, api, estimate, start]) => {
          const config = await api.getConfig();
          const keeper = new frames.FrameKeeper(1000, 20);
          for (let step = 10; step <= 1000; step += 10) keeper.offer({step});  // 20 slots + the latest
          const model = {name: 'm', timesteps: 1000, num_classes: 10};
          const ok = {model: 'm', sampler: 'ddim', steps: '50', params: {eta: '0.3'}, n: '16', seed: '', label: '',
                      guidance: '2', every: 'auto'};
          done({
            linear: Array.from(forward.linearAlphasCumprod(1000)),
            kept: keeper.frames().map(f => f.step),
            layout16: pixels.gridLayout(122, 122, 16, 28),
            layout10: pixels.gridLayout(122, 92, 10, 28),
            valid: controls.validateSettings(ok, model, config),
            invalid: controls.validateSettings(
              {...ok, steps: '2.5', seed: '-1', label: '10', params: {eta: '2', spacing: 'karras'}}, model, config
            ).errors.map(e => e.field),
            ddpmEvery: controls.validateSettings({...ok, sampler: 'ddpm', steps: '900', params: {}}, model, config)
                         .request.every,
            counts: controls.imageCounts(64).concat(controls.imageCounts(8)),
            solverSteps: controls.samplerSteps(config.samplers[3], model, config),
            closeWords: [1006, 1012, 4000].map(api.closeReason),
            // a 60×40 colour picture made a 28×28 grey one: centred, cropped square, r = g = b
            started: await (async () => {
              const picture = document.createElement('canvas');
              picture.width = 60; picture.height = 40;
              const ctx = picture.getContext('2d');
              ctx.fillStyle = 'rgb(200 0 0)'; ctx.fillRect(0, 0, 60, 40);
              ctx.fillStyle = 'rgb(0 0 255)'; ctx.fillRect(0, 0, 10, 40);  // left of the square crop
              const made = start.toModelCanvas(picture, 28, 1);
              const {data} = made.getContext('2d').getImageData(0, 0, 28, 28);
              const png = await start.canvasPng(made);
              return {size: [made.width, made.height], pixel: Array.from(data.slice(0, 3)),
                      bytes: start.base64Bytes(png) === atob(png).length};
            })(),
            rows: [estimate.rowsOf({steps: 10, n: 4, label: 3, guidance: 3}, {evals_per_step: 1}, model),
                   estimate.rowsOf({steps: 10, n: 4, label: 3, guidance: 1}, {evals_per_step: 1}, model),
                   estimate.rowsOf({steps: 10, n: 4, label: null, guidance: 3}, {evals_per_step: 2}, model),
                   estimate.rowsOf({steps: 10, n: 1, init_image: 'png', strength: 0.3}, {evals_per_step: 1}, model),
                   estimate.rowsOf({steps: 10, n: 1, branch: {at_step: 4}}, {evals_per_step: 1}, model)],
            estimates: (() => {
              const stored = {};
              const storage = {getItem: (k) => stored[k] ?? null, setItem: (k, v) => { stored[k] = v; }};
              const book = new estimate.SpeedBook(storage);
              const before = book.estimate({steps: 10, n: 1}, {evals_per_step: 1}, model);
              book.record('m', 100, 2000);  // 20 ms a row
              const measured = book.estimate({steps: 10, n: 4}, {evals_per_step: 1}, model);
              const remembered = new estimate.SpeedBook(storage).rate(model);  // a later visit
              const server = book.estimate({steps: 10, n: 4}, {evals_per_step: 1}, {...model, seconds_per_row: 0.5});
              return {before, measured, remembered, server};
            })(),
            left: [estimate.remainingSeconds({step: 25, total: 100, elapsedS: 5}),
                   estimate.remainingSeconds({step: 0, total: 100, elapsedS: 1, estimateS: 4}),
                   estimate.remainingSeconds({step: 0, total: 100, elapsedS: 1})],
          });
        }, (e) => done({error: String(e)}));
        """
    )
    assert "error" not in result, result
    assert max(abs(a - b) for a, b in zip(result["linear"], served, strict=True)) < 1e-5
    assert len(result["kept"]) == 21 and result["kept"][-1] == 1000 and result["kept"][0] == 10
    assert result["layout16"] == {"columns": 4, "rows": 4, "padding": 2}
    assert result["layout10"] == {"columns": 4, "rows": 3, "padding": 2}
    assert result["valid"]["errors"] == []
    assert result["valid"]["request"] == {
        "model": "m", "sampler": "ddim", "steps": 50, "eta": 0.3, "spacing": "leading", "thresholding": "clip",
        "n": 16, "seed": None, "label": None, "guidance": 2, "every": 1,
    }  # fmt: skip
    assert sorted(result["invalid"]) == ["label", "param-eta", "param-spacing", "seed", "steps"]
    assert result["ddpmEvery"] == 9
    assert result["counts"] == [1, 4, 9, 16, 25, 36, 49, 64, 1, 4, 8]
    assert result["solverSteps"] == 10  # unipc's own default, as the server gives it
    assert result["closeWords"] == ["the connection dropped without a word from the server", "the server is restarting",
                                    "it closed unexpectedly"]  # fmt: skip
    assert result["started"] == {"size": [28, 28], "pixel": [67, 67, 67], "bytes": True}
    # guidance doubles the rows (at w = 1 it costs nothing); SDEdit at 0.3 takes 3 of 10 steps; a branch replays 4
    assert result["rows"] == [80, 40, 80, 3, 14]
    estimates = result["estimates"]
    assert estimates["before"] is None
    assert estimates["measured"] == {"seconds": pytest.approx(0.8), "source": "measured"}
    assert estimates["remembered"] == {"secondsPerRow": pytest.approx(0.02), "source": "measured"}
    assert estimates["server"] == {"seconds": 20, "source": "server"}  # the server's own figure comes first
    assert result["left"] == [15, 3, None]


def test_the_estimate_follows_the_servers_measured_speed(page, server_url):
    """Issue #26, 2: the estimate before a run comes from the sampling loop's time per row, which the server
    keeps up to date as it runs (GET /models), not from one timing at start-up; it is within 2x of the run."""
    set_value(page, "steps", "40")
    view = main_view(page)
    estimate = page.find_element(By.ID, "estimate")
    page.find_element(By.ID, "generate").click()
    assert wait_for_state(page, view, {"done", "error"}) == "done", view.text
    rows = 40 * 16  # the default sampler takes one evaluation a step; 16 images, no class: no guidance
    # after the run, the page holds the figure the server measured on it
    WebDriverWait(page, 10).until(
        lambda _: (
            float(estimate.get_attribute("data-seconds") or 0)
            == pytest.approx(rows * httpx.get(server_url + "models").json()[0]["seconds_per_row"], rel=1e-6)
        )
    )
    before = float(estimate.get_attribute("data-seconds"))
    page.find_element(By.ID, "generate").click()
    assert wait_for_state(page, view, {"done", "error"}) == "done", view.text
    took = float(view.find_element(By.CSS_SELECTOR, ".rv-elapsed").get_attribute("title").split()[3])
    assert took / 2 <= before <= took * 2, (before, took)


def test_an_example_fills_its_canvases(page):
    """The examples are made from GET /config: the header offers them before any run, and one click
    runs all of an example's runs, one after another, from one seed."""
    buttons = page.find_elements(By.CSS_SELECTOR, "#example-buttons button")
    titles = [b.text for b in buttons]
    assert titles == ["DDIM-50 vs DDPM-900", "Class 7 with guidance 1, 3, 7", "10 steps of each sampler"], titles
    buttons[2].click()
    views = page.find_elements(By.CSS_SELECTOR, "#example-views .run-view")
    assert [v.find_element(By.CSS_SELECTOR, ".rv-title").text for v in views] == [
        "DDPM, 10 steps", "DDIM, 10 steps", "DPM-Solver++(2M), 10 steps", "UniPC, 10 steps"
    ]  # fmt: skip
    for view in views:
        assert wait_for_state(page, view, {"done", "error", "cancelled"}) == "done", view.text
        assert canvas_std(page, f"#example-views > div:nth-child({views.index(view) + 1}) .rv-xt") > 5
    assert {v.find_element(By.CSS_SELECTOR, ".rv-seed").text for v in views} == {"seed 2"}
    # one at a time, so their times are their own: marked as nothing else in "Your runs"
    rows = page.find_elements(By.CSS_SELECTOR, "#history tbody tr")
    assert len(rows) == 4 and not page.find_elements(By.CSS_SELECTOR, "#history tr.shared-time")
    assert all(b.is_enabled() for b in buttons)


def test_runs_survive_a_reload_and_back_and_links_leave_in_a_new_tab(page, server_url):
    """Issue #26, 7, 13 and 14: the runs table and the last result come back after Back and a reload; the
    links that leave the page open a new tab; "Done" reads at 4.5:1; the footer does not say /docs needs a network."""
    set_value(page, "steps", "10")
    Select(page.find_element(By.ID, "n")).select_by_value("4")
    page.find_element(By.ID, "generate").click()
    view = main_view(page)
    assert wait_for_state(page, view, {"done", "error"}) == "done", view.text
    message = view.find_element(By.CSS_SELECTOR, ".rv-message")
    colour, behind = page.execute_script(
        """
        let box = arguments[0];
        while (box && getComputedStyle(box).backgroundColor.endsWith(', 0)')) box = box.parentElement;
        return [getComputedStyle(arguments[0]).color, getComputedStyle(box).backgroundColor];
        """,
        message,
    )
    assert contrast(colour, behind) >= 4.5, (colour, behind)
    grid = view.find_element(By.CSS_SELECTOR, ".rv-download").get_attribute("href")
    row = page.find_element(By.CSS_SELECTOR, "#history tbody tr").text
    leaving = page.find_elements(By.CSS_SELECTOR, "a[href='docs'], a[href='openapi.json']")
    assert len(leaving) >= 3 and all(a.get_attribute("target") == "_blank" for a in leaving)
    assert "online" not in page.find_element(By.CSS_SELECTOR, ".page-footer").text

    for leave, restored in ((lambda: (page.get(server_url + "docs"), page.back()), False), (page.refresh, True)):
        leave()
        WebDriverWait(page, 20).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
        view = main_view(page)
        assert wait_for_state(page, view, {"done"}, timeout=10) == "done"
        assert view.find_element(By.CSS_SELECTOR, ".rv-download").get_attribute("href") == grid
        assert [r.text for r in page.find_elements(By.CSS_SELECTOR, "#history tbody tr")] == [row]
        if restored:  # (Back may find the page in the browser's back-forward cache, as it was)
            assert "Your last run, 10 steps" in view.find_element(By.CSS_SELECTOR, ".rv-message").text


def test_leaving_mid_run_asks_first(page):
    """Issue #26, 7: a reload mid-run would close the run's connection and the server would stop the run:
    the page asks first (it cancels `beforeunload`, which makes the browser ask; chromedriver answers such
    questions itself, so the test reads the event). With no run going it does not ask."""
    asks = "const e = new Event('beforeunload', {cancelable: true}); dispatchEvent(e); return e.defaultPrevented"
    assert page.execute_script(asks) is False
    Select(page.find_element(By.ID, "sampler")).select_by_value("ddpm")
    set_value(page, "steps", str(SERVER_MAX_STEPS))
    view = main_view(page)
    page.find_element(By.ID, "generate").click()
    WebDriverWait(page, 30).until(lambda _: int(view.get_attribute("data-frames-drawn")) >= 1)
    assert page.execute_script(asks) is True
    page.find_element(By.ID, "stop").click()
    assert wait_for_state(page, view, {"cancelled", "done", "error"}, timeout=15) == "cancelled"
    assert page.execute_script(asks) is False


def test_the_upload_button_fits_and_shows_its_focus(editing, server_url):
    """Issue #26, 6 and 11: "Upload…" stays in the form card, on a desktop and on a 390 px phone, and the
    keyboard's focus on it shows."""
    page = editing
    for metrics in (None, {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}):
        if metrics:
            page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            page.get(server_url)
            WebDriverWait(page, 20).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
        try:
            use = page.find_element(By.ID, "use-start-image")
            page.execute_script("arguments[0].scrollIntoView({block: 'center'})", use)
            use.click()
            upload, form = page.execute_script(
                "return [document.querySelector('.upload').getBoundingClientRect().toJSON(),"
                " document.getElementById('generate-form').getBoundingClientRect().toJSON()]"
            )
            assert upload["right"] <= form["right"] and upload["left"] >= form["left"], (upload, form)
            overflow = page.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"the page is {overflow}px wider than the screen"
            page.find_element(By.ID, "start-from-forward").send_keys(Keys.TAB)
            assert page.switch_to.active_element.get_attribute("id") == "start-upload"
            ring, card = page.execute_script(
                "const style = getComputedStyle(document.querySelector('.upload'));"
                "return [style.outlineStyle === 'none' ? null : style.outlineColor,"
                " getComputedStyle(document.querySelector('.controls')).backgroundColor]"
            )
            assert ring is not None and contrast(ring, card) >= 3, (ring, card)
        finally:
            if metrics:
                page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_phone_screen_has_no_sideways_scroll(page, server_url, tmp_path):
    # a phone's screen: 390 × 844 CSS pixels, touch, three device pixels each
    metrics = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        phone_checks(page, server_url, tmp_path)
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def phone_checks(page, server_url, tmp_path):
    page.get(server_url)
    WebDriverWait(page, 20).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    overflow = page.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a phone screen"
    # Generate and the whole live x_t in the first screen, x_t as wide as the screen allows
    generate, xt, height = page.execute_script(
        "return [document.getElementById('generate').getBoundingClientRect().toJSON(),"
        " document.querySelector('#main-view .rv-xt').getBoundingClientRect().toJSON(), window.innerHeight]"
    )
    assert generate["bottom"] <= height and xt["bottom"] <= generate["top"], (generate, xt, height)
    assert xt["width"] >= 300, xt
    page.save_screenshot(str(tmp_path / "phone-first-screen.png"))
    # and after a run, with the filmstrip and the final grid in place
    set_value(page, "steps", "10")
    page.find_element(By.ID, "generate").click()
    assert wait_for_state(page, main_view(page), {"done", "error"}) == "done"
    overflow = page.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"after a run the page is {overflow}px wider than a phone screen"
    # scrolled down to the settings, Generate is still on screen
    page.execute_script("document.getElementById('every').scrollIntoView()")
    assert page.execute_script(
        "const box = document.getElementById('generate').getBoundingClientRect();"
        "return box.top >= 0 && box.bottom <= innerHeight"
    )
    page.save_screenshot(str(tmp_path / "phone.png"))


# --- starting images, branches, interpolation (docs/api.md: init_image, strength, mask, branch, interpolate_to) ---


@pytest.fixture
def editing(page, server_url):
    """The page, on a server that takes starting images, branches and interpolation."""
    if "max_init_image_bytes" not in httpx.get(server_url + "config").json()["limits"]:
        pytest.skip("this server has no init_image, branch or interpolate_to yet (docs/api.md)")
    return page


def choose(driver, sampler: str, steps: int, n: int, seed: int) -> None:
    Select(driver.find_element(By.ID, "sampler")).select_by_value(sampler)
    set_value(driver, "steps", str(steps))
    Select(driver.find_element(By.ID, "n")).select_by_value(str(n))
    set_value(driver, "seed", str(seed))


def images_of(view) -> list[str]:
    """A finished run's images, base64, from its per-image download links."""
    return [a.get_attribute("href").split(",", 1)[1] for a in view.find_elements(By.CSS_SELECTOR, ".rv-each-links a")]


def pixels(png_base64: str):
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_base64))).convert("L"), dtype=np.int16)


def sent_body(driver) -> dict:
    """The request the page would send now, as its "Use this from code" box writes it for curl."""
    curl = driver.execute_script("return document.getElementById('code-curl').textContent")
    return json.loads(curl.split(" -d '", 1)[1].split("' \\", 1)[0])


def test_a_branch_with_unchanged_settings_gives_the_same_images(editing, tmp_path):
    page = editing
    choose(page, "ddim", 10, 4, 5)
    view = main_view(page)
    page.find_element(By.ID, "generate").click()
    assert wait_for_state(page, view, {"done", "error"}) == "done", view.text
    thumbs = view.find_elements(By.CSS_SELECTOR, ".rv-thumb")
    thumbs[-1].send_keys(Keys.HOME, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)  # the third frame: step 3
    step = int(view.find_element(By.CSS_SELECTOR, ".rv-scrub-value").text.split("/")[0].split()[-1])
    assert 0 < step < 10
    view.find_element(By.CSS_SELECTOR, ".rv-branch").click()
    assert f"at step {step}" in page.find_element(By.ID, "branch-notice").text
    page.find_element(By.ID, "generate").click()
    branch = page.find_element(By.CSS_SELECTOR, "#branch-views .run-view")
    assert wait_for_state(page, branch, {"done", "error"}) == "done", branch.text
    assert f"Branch at step {step}: DDIM, 10 steps" in branch.find_element(By.CSS_SELECTOR, ".rv-title").text
    assert images_of(branch) == images_of(view)
    # beside the original, level with it
    assert branch.rect["x"] > view.rect["x"] + view.rect["width"] and abs(branch.rect["y"] - view.rect["y"]) < 50
    # with other settings from that step on, other images from the same start
    set_value(page, "steps", "12")
    page.find_element(By.ID, "generate").click()
    other = page.find_element(By.CSS_SELECTOR, "#branch-views .run-view")  # the newest comes first
    assert wait_for_state(page, other, {"done", "error"}) == "done", other.text
    assert images_of(other) != images_of(view)
    page.save_screenshot(str(tmp_path / "branches.png"))


def test_a_branch_chosen_on_a_phone_says_so_on_screen(editing, server_url):
    """Issue #26, 9: on a 390 px phone, "Branch from this step" brings its notice on screen, and Generate
    says it branches."""
    page = editing
    page.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}
    )
    try:
        page.get(server_url)
        WebDriverWait(page, 20).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
        choose(page, "ddim", 10, 4, 5)
        page.find_element(By.ID, "generate").click()
        view = main_view(page)
        assert wait_for_state(page, view, {"done", "error"}) == "done", view.text
        branch = view.find_element(By.CSS_SELECTOR, ".rv-branch")
        page.execute_script("arguments[0].scrollIntoView({block: 'center'})", branch)
        branch.click()
        generate = page.find_element(By.ID, "generate")
        assert generate.text == "Generate the branch"
        WebDriverWait(page, 5).until(
            lambda d: d.execute_script(
                "const box = document.getElementById('branch-notice').getBoundingClientRect();"
                "const bar = document.querySelector('.actions').getBoundingClientRect();"
                "return box.top >= 0 && box.bottom <= bar.top"
            )
        )
        page.find_element(By.CSS_SELECTOR, "#branch-notice button").click()
        assert generate.text == "Generate"
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_sdedit_and_inpainting_start_from_the_drawing(editing, server_url, tmp_path):
    page = editing
    choose(page, "ddim", 10, 1, 9)
    page.find_element(By.ID, "use-start-image").click()  # the forward section's x0: a typed "3"
    WebDriverWait(page, 5).until(lambda d: "forward-process image" in d.find_element(By.ID, "start-image-status").text)
    view = main_view(page)

    def run_at(strength: str) -> list[str]:
        page.execute_script(
            "const box = document.getElementById('strength');"
            "box.value = arguments[0]; box.dispatchEvent(new Event('input'))",
            strength,
        )
        page.find_element(By.ID, "generate").click()
        assert wait_for_state(page, view, {"done", "error"}) == "done", view.text
        return images_of(view)

    # strength 1 forgets the drawing: the plain run from the same seed
    body = sent_body(page)
    assert body["strength"] == 0.5 and len(body["init_image"]) > 100 and "mask" not in body
    drawing = pixels(body["init_image"])
    assert drawing.shape == (28, 28) and drawing.std() > 20
    forgotten = run_at("1")
    plain = {k: v for k, v in sent_body(page).items() if k not in ("init_image", "strength")}
    assert forgotten == httpx.post(server_url + "sample", json=plain, timeout=60).json()["images"]
    # a small strength stays close to the drawing
    close = pixels(run_at("0.1")[0])
    assert abs(close - drawing).mean() < 0.5 * abs(pixels(forgotten[0]) - drawing).mean()

    # inpainting: paint the left half; the right half keeps the drawing to within quantisation
    page.find_element(By.ID, "paint-mask").click()
    mask = page.find_element(By.ID, "mask-canvas")
    width = mask.rect["width"]
    actions = (
        ActionChains(page).move_to_element_with_offset(mask, int(-width * 0.4), int(-width * 0.45)).click_and_hold()
    )
    for _ in range(9):
        actions.move_by_offset(0, int(width * 0.1)).move_by_offset(int(width * 0.3), 0).move_by_offset(
            int(-width * 0.3), 0
        )
    actions.release().perform()
    WebDriverWait(page, 5).until(lambda _: int(mask.get_attribute("data-painted") or 0) > 100)
    body = sent_body(page)
    painted = pixels(body["mask"]) >= 128
    assert painted[:, :10].mean() > 0.8 and not painted[:, 16:].any()
    result = pixels(run_at("1")[0])
    kept = ~painted
    assert abs(result[kept] - drawing[kept]).max() <= 2
    assert abs(result[painted] - drawing[painted]).mean() > 10  # and the painted part was redone

    # an uploaded picture of another size becomes the starting image at the model's size, its mask cleared
    from PIL import Image

    picture = Image.new("RGB", (112, 112))
    picture.paste((255, 255, 255), (0, 0, 56, 112))  # its left half white
    picture.save(tmp_path / "half.png")
    page.find_element(By.ID, "start-upload").send_keys(str(tmp_path / "half.png"))
    WebDriverWait(page, 5).until(lambda d: "half.png" in d.find_element(By.ID, "start-image-status").text)
    body = sent_body(page)
    uploaded = pixels(body["init_image"])
    assert "mask" not in body and uploaded.shape == (28, 28)
    assert uploaded[:, :13].min() > 240 and uploaded[:, 15:].max() < 15


def test_interpolation_runs_from_one_seed_to_the_other(editing, server_url):
    """At a phone's size: the row's ends are the two seeds' own runs."""
    page = editing
    page.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
    )
    try:
        page.get(server_url)
        WebDriverWait(page, 20).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
        choose(page, "ddim", 10, 4, 3)
        set_value(page, "interpolate_to", "8")
        page.find_element(By.ID, "generate").click()
        view = main_view(page)
        assert wait_for_state(page, view, {"done", "error"}) == "done", view.text
        row = images_of(view)
        single = {k: v for k, v in sent_body(page).items() if k != "interpolate_to"} | {"n": 1}
        for seed, image in ((3, row[0]), (8, row[-1])):
            alone = httpx.post(server_url + "sample", json=single | {"seed": seed}, timeout=60).json()["images"][0]
            assert image == alone, seed
        assert "&interpolate_to=8&" in page.current_url
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_interpolating_with_a_noisy_sampler_is_refused_before_sending(editing):
    """Issue #26, 12: DDPM (or DDIM with eta > 0) draws fresh noise, so the page says so in a whole sentence,
    by GET /config's `stochastic`, and sends nothing."""
    page = editing
    for sampler, noise in (("ddpm", ""), ("ddim", " with eta = 0.5")):
        Select(page.find_element(By.ID, "sampler")).select_by_value(sampler)
        if sampler == "ddim":
            page.execute_script("document.getElementById('param-eta').value = 0.5")
        set_value(page, "interpolate_to", "8")
        page.find_element(By.ID, "generate").click()
        error = page.find_element(By.ID, "form-error").text
        title = {"ddpm": "DDPM", "ddim": "DDIM"}[sampler]
        assert f"{title}{noise} draws fresh noise at every step: choose DDIM with eta = 0, " in error, error
        assert error.rstrip().endswith("or UniPC."), error
        assert page.find_element(By.ID, "interpolate_to").get_attribute("aria-invalid") == "true"
        assert main_view(page).get_attribute("data-state") == "idle"
    page.execute_script("document.getElementById('param-eta').value = 0")
    set_value(page, "steps", "3")
    set_value(page, "seed", "3")
    page.find_element(By.ID, "generate").click()
    assert wait_for_state(page, main_view(page), {"error", "done"}) == "done"


# A sampler the page has never heard of, with a parameter no other sampler has: DDIM on every
# `stride`-th timestep of a run of steps × stride, registered in the server's process before it starts.
EXTRA_SAMPLER = """
from model.samplers import Param, Sampler, ddim_steps, ddim_timesteps, register


def strided_ddim(schedule, x, steps, generator, stride=2):
    timesteps = ddim_timesteps(schedule.num_timesteps, steps * stride, "leading")[::stride]
    return ddim_steps(schedule, x, timesteps, thresholding="clip")


register(Sampler("ddim-stride", "Strided DDIM", "DDIM on every stride-th timestep, registered by a test.",
                 strided_ddim, (Param("stride", int, 2, "take every stride-th timestep", minimum=1, maximum=4),),
                 default_steps=7))
"""


@pytest.fixture(scope="module")
def extra_server_url(tmp_path_factory):
    """A second server: one more sampler in its table, at most 8 images a request, and a distilled model."""
    folder = tmp_path_factory.mktemp("checkpoints-extra")
    make_checkpoint(folder)
    (folder / "mnist-fast.safetensors").symlink_to(REPO / "checkpoints" / "mnist-fast.safetensors")
    try:
        with running_server(folder, folder / "server.log", env={"DDPM_MAX_N": "8"}, prelude=EXTRA_SAMPLER) as url:
            yield url
    except ServerFailed as e:
        pytest.fail(str(e))


def test_the_page_offers_what_the_server_offers_without_a_change(browser, extra_server_url):
    """Samplers, their parameters, descriptions and defaults, and the limits, all from GET /config."""
    page = browser
    page.get(extra_server_url + "?seed=5")
    WebDriverWait(page, 20).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
    images = [int(o.get_attribute("value")) for o in Select(page.find_element(By.ID, "n")).options]
    assert images == [1, 4, 8] and Select(page.find_element(By.ID, "n")).first_selected_option.text == "8"
    models = [o.text for o in Select(page.find_element(By.ID, "model")).options]
    assert sorted(models) == ["mnist (28×28)", "mnist-fast (distilled: 2 steps, mnist, 28×28)"]  # a student says so

    sampler = Select(page.find_element(By.ID, "sampler"))
    assert [o.get_attribute("value") for o in sampler.options] == [
        "ddpm",
        "ddim",
        "dpm-solver++",
        "unipc",
        "ddim-stride",
    ]
    sampler.select_by_visible_text("Strided DDIM")
    assert page.find_element(By.ID, "sampler-hint").text == "DDIM on every stride-th timestep, registered by a test."
    assert page.find_element(By.ID, "steps").get_attribute("value") == "7"
    stride = page.find_element(By.ID, "param-stride")
    assert stride.get_attribute("value") == "2" and stride.get_attribute("max") == "4"
    assert page.find_element(By.ID, "param-stride-hint").text == "take every stride-th timestep"

    view = main_view(page)
    grids = {}
    for value in ("1", "3", "1"):
        set_value(page, "param-stride", value)
        set_value(page, "steps", "3")
        page.find_element(By.ID, "generate").click()
        assert wait_for_state(page, view, {"done", "error"}) == "done", view.text
        grids.setdefault(value, []).append(view.find_element(By.CSS_SELECTOR, ".rv-download").get_attribute("href"))
    # the server sampled with the stride the page sent: the same stride, the same images; another, others
    assert grids["1"][0] == grids["1"][1] != grids["3"][0]
    assert page.current_url.endswith("sampler=ddim-stride&steps=3&n=8&seed=5&stride=1")
    assert "stride = 1" in page.find_element(By.CSS_SELECTOR, "#history tbody tr").text

    # either side of the comparison may take it, with its own parameter control
    fieldset = page.find_element(By.CSS_SELECTOR, '#compare-form [data-side="a"]')
    Select(fieldset.find_element(By.NAME, "sampler")).select_by_value("ddim-stride")
    assert fieldset.find_element(By.NAME, "steps").get_attribute("value") == "7"
    assert fieldset.find_element(By.NAME, "stride").get_attribute("value") == "2"
    errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert not errors, errors


def test_a_student_runs_beside_its_teacher(browser, extra_server_url):
    """Choosing a distilled model puts its teacher at DDIM-50 on the left of the side-by-side panel and the
    student at its own 2 steps on the right; the parameters it was distilled for are shown, fixed, and sent."""
    page = browser
    page.get(extra_server_url + "?seed=5")
    WebDriverWait(page, 20).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
    Select(page.find_element(By.ID, "model")).select_by_value("mnist-fast")
    spacing = page.find_element(By.ID, "param-spacing")  # the main form: DDIM at the student's own spacing
    assert (spacing.get_attribute("value"), spacing.is_enabled()) == ("trailing", False)
    view = main_view(page)
    page.find_element(By.ID, "generate").click()
    assert wait_for_state(page, view, {"done", "error"}) == "done", view.text

    form = page.find_element(By.ID, "compare-form")
    sides = {side: form.find_element(By.CSS_SELECTOR, f'[data-side="{side}"]') for side in "ab"}

    def shown(side):
        fieldset = sides[side]
        return tuple(
            fieldset.find_element(By.NAME, name).get_attribute("value") for name in ("model", "sampler", "steps")
        )

    assert shown("a") == ("mnist", "ddim", "50") and shown("b") == ("", "ddim", "2")
    assert sides["a"].find_element(By.NAME, "spacing").is_enabled()  # the teacher takes any spacing
    assert not sides["b"].find_element(By.NAME, "spacing").is_enabled()
    page.find_element(By.ID, "compare-run").click()
    views = [page.find_element(By.CSS_SELECTOR, f"#compare-view-{side} .run-view") for side in "ab"]
    for side_view in views:
        assert wait_for_state(page, side_view, {"done", "error", "cancelled"}) == "done", side_view.text
    summary = page.find_element(By.ID, "compare-summary").text
    assert "mnist: DDIM, 50 steps" in summary and "mnist-fast: DDIM, 2 steps" in summary, summary
    rows = page.find_elements(By.CSS_SELECTOR, "#history tbody tr")
    models = [row.find_element(By.CSS_SELECTOR, "td").text for row in rows]
    assert sorted(models[:2]) == ["mnist", "mnist-fast"], models

    # a side may take any model; a distilled one brings its own sampler and steps, and leaving it restores the side's
    Select(sides["a"].find_element(By.NAME, "model")).select_by_value("mnist-fast")
    assert shown("a") == ("mnist-fast", "ddim", "2")
    Select(sides["a"].find_element(By.NAME, "model")).select_by_value("")
    assert shown("a") == ("", "ddim", "2")  # "as above" is the student too
    Select(page.find_element(By.ID, "model")).select_by_value("mnist")
    assert shown("a") == ("", "ddim", "50") and shown("b") == ("", "dpm-solver++", "10")
    assert page.find_element(By.ID, "param-spacing").is_enabled()  # the plain model's own spacing, free again
    errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert not errors, errors


def test_a_students_guided_image_costs_one_row_in_the_estimate(browser, extra_server_url):
    """Issue #26, 2: a guidance-distilled student takes w as an input (GET /models: guidance_input), so a
    guided image costs it one row a step, not the two a teacher's costs; the estimate counts it so."""
    models = {m["name"]: m for m in httpx.get(extra_server_url + "models").json()}
    assert models["mnist-fast"]["guidance_input"] and not models["mnist"]["guidance_input"]
    browser.get(extra_server_url)
    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    rows = browser.execute_async_script(
        """
        const [models, done] = arguments;
        import('./js/estimate.js').then((estimate) => done(['mnist-fast', 'mnist'].map((name) =>
          estimate.rowsOf({steps: 2, n: 4, label: 3, guidance: 3}, {evals_per_step: 1}, models[name]))));
        """,
        models,
    )
    assert rows == [8, 16]


def test_a_student_offers_only_what_it_can_do_and_its_examples_run(browser, extra_server_url):
    """Issue #26, 1, 3 and 4: a distilled model's sampler and steps are fixed (GET /models), so the form offers
    no others, a link cannot set them, the page says what a student is, and every example runs."""
    page = browser
    page.get(extra_server_url + "?model=mnist-fast&sampler=dpm-solver%2B%2B&steps=10")
    page.execute_script("sessionStorage.clear()")  # no earlier result in the live view: it stays idle below
    page.refresh()
    WebDriverWait(page, 20).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
    assert Select(page.find_element(By.ID, "model")).first_selected_option.get_attribute("value") == "mnist-fast"
    notice = page.find_element(By.ID, "link-notice").text
    assert "sampler=dpm-solver++ (not offered here)" in notice and "steps=10" in notice, notice
    offered = [o.get_attribute("value") for o in Select(page.find_element(By.ID, "sampler")).options if o.is_enabled()]
    assert offered == ["ddim"], offered
    steps = page.find_element(By.ID, "steps")
    assert steps.get_attribute("value") == "2" and steps.get_attribute("readonly") == "true"
    info = page.find_element(By.ID, "model-info").text
    assert info.startswith("A distilled student of mnist: trained to make in 2 steps"), info
    hint = page.find_element(By.ID, "sampler-hint").text
    assert "mnist-fast was distilled for DDIM with 2 steps only" in hint and "50 steps" not in hint, hint
    assert "Distilled students" in page.find_element(By.ID, "explain-students").get_attribute("textContent")
    # a value put in by other means is refused before anything is sent, in the words the server would use
    page.execute_script("document.getElementById('steps').value = '10'")
    page.find_element(By.ID, "generate").click()
    assert "mnist-fast was distilled for DDIM with 2 steps only" in page.find_element(By.ID, "form-error").text
    assert main_view(page).get_attribute("data-state") == "idle"

    # the examples fit the student: beside its teacher, and at rising guidance, each run done
    buttons = page.find_elements(By.CSS_SELECTOR, "#example-buttons button")
    assert [b.text for b in buttons] == ["mnist DDIM-50 vs mnist-fast DDIM-2", "Class 7 with guidance 1, 3, 7"]
    for index, titles in (
        (0, ["mnist: DDIM, 50 steps", "mnist-fast: DDIM, 2 steps, spacing = trailing"]),
        (1, [f"DDIM, 2 steps, spacing = trailing, class 7, w = {w}" for w in (1, 3, 7)]),
    ):
        page.find_elements(By.CSS_SELECTOR, "#example-buttons button")[index].click()
        views = page.find_elements(By.CSS_SELECTOR, "#example-views .run-view")
        assert [v.find_element(By.CSS_SELECTOR, ".rv-title").text for v in views] == titles
        for view in views:
            assert wait_for_state(page, view, {"done", "error", "cancelled"}, timeout=60) == "done", view.text
    errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert not errors, errors


def test_the_start_image_and_mask_outlive_a_change_of_model(browser, extra_server_url, tmp_path):
    """Issue #26, 5: an uploaded picture and a painted mask stay when the model changes to one of the same size."""
    from PIL import Image

    page = browser
    page.get(extra_server_url)
    WebDriverWait(page, 20).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
    use = page.find_element(By.ID, "use-start-image")
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", use)
    use.click()
    picture = Image.new("RGB", (56, 56))
    picture.paste((255, 255, 255), (0, 0, 28, 56))
    picture.save(tmp_path / "half.png")
    page.find_element(By.ID, "start-upload").send_keys(str(tmp_path / "half.png"))
    WebDriverWait(page, 5).until(lambda d: "half.png" in d.find_element(By.ID, "start-image-status").text)
    page.find_element(By.ID, "paint-mask").click()
    mask = page.find_element(By.ID, "mask-canvas")
    ActionChains(page).move_to_element(mask).click_and_hold().move_by_offset(20, 20).release().perform()
    WebDriverWait(page, 5).until(lambda _: int(mask.get_attribute("data-painted") or 0) > 10)
    before = sent_body(page)
    Select(page.find_element(By.ID, "model")).select_by_value("mnist-fast")
    WebDriverWait(page, 5).until(lambda _: sent_body(page)["model"] == "mnist-fast")
    after = sent_body(page)
    assert (after["init_image"], after["mask"]) == (before["init_image"], before["mask"])
    assert "half.png" in page.find_element(By.ID, "start-image-status").text


def test_one_step_reads_as_one_step(page):
    """Issue #26, 12: a count of one is singular in the hint, the run's title and its closing stats."""
    Select(page.find_element(By.ID, "sampler")).select_by_value("ddim")
    set_value(page, "steps", "1")
    hint = page.find_element(By.ID, "steps-hint").text
    assert hint.startswith("1 step of the ") and "1 model evaluation" in hint, hint
    page.find_element(By.ID, "generate").click()
    view = main_view(page)
    assert wait_for_state(page, view, {"done", "error", "cancelled"}) == "done", view.text
    assert view.find_element(By.CSS_SELECTOR, ".rv-title").text.endswith("DDIM, 1 step"), view.text
    assert "1 steps" not in view.text and "1 steps" not in hint


def test_error_messages_read_as_sentences(page):
    """Issue #26, 12: the server's words are added only where they say more, and never in nested brackets."""
    messages = page.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        import('./js/api.js').then((api) => done([
          api.streamError('the server is shutting down', 1001).message,
          api.streamError('you already have 4 runs going or waiting (the most)', 1008, 'client_limit').message,
        ]));
        """
    )
    assert messages[0] == "The server is shutting down."
    assert messages[1] == (
        "This browser already has as many runs going or waiting as the server allows. The server says: you already "
        "have 4 runs going or waiting (the most). Wait for one to finish, or stop one, then try again."
    )


# --- the README's screenshot -----------------------------------------------------------------


def take_screenshot(
    checkpoints: Path, out: Path, model: str = "mnist", label: int | None = None, seed: int = 2
) -> None:
    """Run the page against real checkpoints and photograph it the way a visitor sees it after one
    run: the live view scrubbed back to a step where digits are still forming, the filmstrip below."""
    binary, driver_path = find_browser()
    if binary is None or driver_path is None:
        sys.exit("no chromium/chromedriver found")
    with tempfile.TemporaryDirectory() as tmp, running_server(checkpoints, Path(tmp) / "server.log") as url:
        driver = start_chromium(binary, driver_path, Path(tmp) / "profile")
        try:
            # the visible page itself (not the window) is 1280×1000: a laptop screen, controls and live view
            metrics = {"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": False}
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            driver.get(url)
            WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
            Select(driver.find_element(By.ID, "model")).select_by_value(model)
            if label is not None:
                Select(driver.find_element(By.ID, "label")).select_by_value(str(label))
            set_value(driver, "seed", str(seed))
            driver.find_element(By.ID, "generate").click()
            view = main_view(driver)
            WebDriverWait(driver, 120).until(lambda _: view.get_attribute("data-state") in {"done", "error"})
            scrub = view.find_element(By.CSS_SELECTOR, ".rv-scrub")
            middle = round(int(scrub.get_attribute("max")) * 0.7)
            driver.execute_script(
                "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))", scrub, middle
            )
            time.sleep(0.5)  # let the chosen frame decode and draw
            driver.execute_script("window.scrollTo(0, 0); document.activeElement.blur()")
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Save a screenshot of the web UI (docs/screenshot.png).")
    parser.add_argument("--checkpoints", type=Path, default=REPO / "checkpoints")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--label", type=int, default=None)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshot.png")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    take_screenshot(args.checkpoints, args.out, args.model, args.label, args.seed)
    print(f"saved {args.out}")
