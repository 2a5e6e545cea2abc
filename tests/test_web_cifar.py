"""The shipped CIFAR-10 model on the page: colour x_t and x̂0 at the server's defaults, its model line, and
the forward process on a generated colour image. Same machinery as tests/test_web.py (real server,
headless Chromium); skipped with the reason where there is no browser."""

from __future__ import annotations

import shutil

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from test_web import ServerFailed, browser, main_view, running_server, wait_for_state  # noqa: F401
from test_web_colour import colourfulness

from conftest import REPO

pytestmark = pytest.mark.browser
SHIPPED = REPO / "checkpoints" / "cifar10.safetensors"


@pytest.fixture(scope="module")
def cifar_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    shutil.copy(SHIPPED, folder / SHIPPED.name)
    try:
        with running_server(folder, folder / "server.log") as url:
            yield url
    except ServerFailed as e:
        pytest.fail(str(e))


def test_the_cifar10_model_draws_colour_images_at_the_servers_defaults(browser, cifar_url):  # noqa: F811
    page = browser
    page.set_window_size(1280, 900)
    page.get(cifar_url)
    page.execute_script("localStorage.clear(); sessionStorage.clear()")
    page.refresh()
    WebDriverWait(page, 20).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
    Select(page.find_element(By.ID, "model")).select_by_value("cifar10")
    WebDriverWait(page, 5).until(lambda d: "32×32 colour" in d.find_element(By.ID, "model-info").text)
    Select(page.find_element(By.ID, "n")).select_by_value("4")
    view = main_view(page)
    page.find_element(By.ID, "generate").click()
    assert wait_for_state(page, view, {"done", "error", "cancelled"}, timeout=120) == "done", view.text
    assert colourfulness(page, "#main-view .rv-xt") > 5, "the samples are grey"
    assert colourfulness(page, "#main-view .rv-x0") > 5, "the predicted x0 is grey"

    page.find_element(By.CSS_SELECTOR, 'label[for="source-generated"]').click()
    WebDriverWait(page, 10).until(lambda d: d.find_element(By.ID, "reverse-figure").is_displayed())
    assert colourfulness(page, "#forward-x0") > 5 and colourfulness(page, "#forward-eps") > 5
    errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert not errors, errors
