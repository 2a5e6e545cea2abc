"""The page in a second browser engine: WebKit (Safari's engine), as Debian's WebKitGTK ships it with a
WebDriver (`apt-get install webkit2gtk-driver xvfb`), on a virtual X display. A run streams to the end,
Stop cancels one, a refused setting reads clearly and the forward panel follows its slider, with no
script error. Skipped with the reason where WebKitWebDriver, its MiniBrowser or Xvfb is missing."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest
from test_web import canvas_std, main_view, server_url, set_value, wait_for_state  # noqa: F401

try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    from selenium.webdriver.webkitgtk.options import Options
    from selenium.webdriver.webkitgtk.service import Service
except ImportError:  # pragma: no cover - selenium is a test dependency
    webdriver = None

pytestmark = pytest.mark.browser
# every uncaught error and rejected promise from here on, for the test to read back
CATCH_ERRORS = """window.pageErrors = [];
addEventListener('error', e => pageErrors.push(e.message));
addEventListener('unhandledrejection', e => pageErrors.push(String(e.reason)));"""


@pytest.fixture(scope="module")
def display():
    """A virtual X display (Xvfb picks a free number and tells it on a pipe)."""
    if shutil.which("Xvfb") is None:
        pytest.skip("no Xvfb: install Debian's xvfb to run the page in WebKit")
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stderr=subprocess.DEVNULL)  # fmt: skip
    os.close(write)
    with open(read) as pipe:
        number = pipe.readline().strip()
    yield f":{number}"
    xvfb.terminate()
    xvfb.wait(10)


@pytest.fixture(scope="module")
def webkit(display, monkeypatch_module):
    if webdriver is None:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    driver_path = shutil.which("WebKitWebDriver")
    browsers = sorted(glob.glob("/usr/lib/*/webkit2gtk-4.*/MiniBrowser"))
    if driver_path is None or not browsers:
        pytest.skip("no WebKitWebDriver or MiniBrowser: install Debian's webkit2gtk-driver to run the page in WebKit")
    monkeypatch_module.setenv("DISPLAY", display)
    options = Options()
    options.binary_location = browsers[-1]
    options.add_argument("--automation")
    try:
        driver = webdriver.WebKitGTK(options=options, service=Service(executable_path=driver_path))
    except WebDriverException as e:
        pytest.skip(f"WebKitWebDriver ({driver_path}) would not start {browsers[-1]}: {e.msg}")
    driver.set_window_size(1280, 900)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture
def page(webkit, server_url):  # noqa: F811
    webkit.get(server_url)
    webkit.execute_script("localStorage.clear(); sessionStorage.clear()")
    webkit.refresh()
    WebDriverWait(webkit, 30).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
    WebDriverWait(webkit, 10).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
    webkit.execute_script(CATCH_ERRORS)
    yield webkit
    assert webkit.execute_script("return window.pageErrors") == []
    assert not webkit.find_element(By.ID, "page-error").is_displayed()


def test_a_run_streams_to_the_end_in_webkit(page):
    assert "AppleWebKit" in page.execute_script("return navigator.userAgent")
    set_value(page, "steps", "20")
    Select(page.find_element(By.ID, "n")).select_by_value("4")
    view = main_view(page)
    page.find_element(By.ID, "generate").click()
    assert wait_for_state(page, view, {"done", "error", "cancelled"}, timeout=60) == "done", view.text
    assert int(view.get_attribute("data-frames-drawn")) >= 3
    assert view.get_attribute("data-step") == view.get_attribute("data-total") == "20"
    assert canvas_std(page, "#main-view .rv-xt") > 5, "the final image is blank"
    assert len(view.find_elements(By.CSS_SELECTOR, ".rv-each-links a")) == 4
    assert "DPM-Solver++" in page.find_element(By.CSS_SELECTOR, "#history tbody tr").text


def test_stop_cancels_a_run_in_webkit(page):
    Select(page.find_element(By.ID, "sampler")).select_by_value("ddpm")
    set_value(page, "steps", "900")
    view = main_view(page)
    page.find_element(By.ID, "generate").click()
    WebDriverWait(page, 30).until(lambda _: int(view.get_attribute("data-step") or 0) > 0)
    page.find_element(By.ID, "stop").click()
    assert wait_for_state(page, view, {"cancelled", "done", "error"}) == "cancelled"
    assert page.find_element(By.ID, "generate").is_enabled()


def test_a_refused_setting_reads_clearly_in_webkit(page):
    set_value(page, "steps", "100000")
    page.find_element(By.ID, "generate").click()
    assert "Steps must be a whole number from 1 to" in page.find_element(By.ID, "form-error").text
    assert page.find_element(By.ID, "steps").get_attribute("aria-invalid") == "true"
    assert main_view(page).get_attribute("data-state") == "idle"


def test_the_forward_panel_follows_its_slider_in_webkit(page):
    slider = page.find_element(By.ID, "forward-t")
    WebDriverWait(page, 10).until(lambda _: "ᾱ" in page.find_element(By.ID, "forward-numbers").text)
    page.execute_script("arguments[0].value = 0; arguments[0].dispatchEvent(new Event('input'))", slider)
    assert "ᾱ0 = 0.9999" in page.find_element(By.ID, "forward-numbers").text
    page.execute_script("arguments[0].value = 999; arguments[0].dispatchEvent(new Event('input'))", slider)
    assert page.find_element(By.ID, "forward-t-value").text == "999"
    assert canvas_std(page, "#forward-xt") > 20 and canvas_std(page, "#forward-x0") > 20


def test_a_script_error_would_fail_these_tests(webkit, server_url):  # noqa: F811
    webkit.get(server_url)
    webkit.execute_script(CATCH_ERRORS + "setTimeout(() => { throw new Error('boom'); });")
    WebDriverWait(webkit, 5).until(lambda d: d.execute_script("return window.pageErrors.length"))
    assert "boom" in webkit.execute_script("return window.pageErrors")[0]
