"""The browser UI with a colour 256 px model (a tiny random diffusers UNet2DModel): RGB on the page,
frames as previews and the final grid at full size, one image enlarged, and the forward process.
Same machinery as tests/test_web.py (real server, headless Chromium); skipped with the reason
where there is no browser."""

from __future__ import annotations

import pytest
from diffusers import DDIMPipeline, DDIMScheduler
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait
from test_diffusers_models import tiny_unet2d
from test_web import ServerFailed, browser, main_view, running_server, set_value, wait_for_state  # noqa: F401

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def colour_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    DDIMPipeline(tiny_unet2d(size=256), DDIMScheduler(num_train_timesteps=10)).save_pretrained(folder / "church")
    try:
        with running_server(folder, folder / "server.log") as url:
            yield url
    except ServerFailed as e:
        pytest.fail(str(e))


def colourfulness(driver, selector: str) -> float:
    """Mean |R − G| + |G − B| of a canvas's pixels: 0 for a grey image."""
    return driver.execute_script(
        """
        const canvas = document.querySelector(arguments[0]);
        const {data} = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
        let sum = 0;
        for (let i = 0; i < data.length; i += 4) {
          sum += Math.abs(data[i] - data[i + 1]) + Math.abs(data[i + 1] - data[i + 2]);
        }
        return sum / (data.length / 4);
        """,
        selector,
    )


def test_a_256px_colour_model_streams_previews_and_shows_full_size_images(browser, colour_url):  # noqa: F811
    page = browser
    page.set_window_size(1280, 900)
    page.get(colour_url)
    WebDriverWait(page, 20).until(lambda d: d.find_element(By.ID, "generate").is_enabled())
    assert "256×256 colour" in page.find_element(By.ID, "model-info").text
    set_value(page, "steps", "3")
    Select(page.find_element(By.ID, "n")).select_by_value("4")
    Select(page.find_element(By.ID, "every")).select_by_value("1")
    view = main_view(page)
    page.find_element(By.ID, "generate").click()
    assert wait_for_state(page, view, {"done", "error", "cancelled"}, timeout=60) == "done", view.text
    assert int(view.get_attribute("data-frames-drawn")) >= 1
    # the frames were 64-pixel previews (the filmstrip keeps them); the final grid is the full 2 × 256 + 3 × 2
    thumb = view.find_element(By.CSS_SELECTOR, ".rv-thumb img")
    assert page.execute_script("return arguments[0].naturalWidth", thumb) == 2 * 64 + 3 * 2
    xt = view.find_element(By.CSS_SELECTOR, ".rv-xt")
    assert xt.get_attribute("data-source-width") == str(2 * 256 + 3 * 2)
    assert "smooth" in xt.get_attribute("class")  # shrunk to fit, so drawn smoothly
    assert colourfulness(page, "#main-view .rv-xt") > 5, "the images are grey"

    # one image, large: from the button, then the next with the arrow key, then Esc
    view.find_element(By.CSS_SELECTOR, ".rv-zoom").click()
    dialog = page.find_element(By.ID, "zoom")
    WebDriverWait(page, 5).until(lambda _: dialog.get_attribute("data-size") == "256")
    assert page.execute_script("return arguments[0].open", dialog)
    assert "Image 1 of 4 · 256×256 pixels" in dialog.find_element(By.CSS_SELECTOR, ".zoom-caption").text
    dialog.send_keys(Keys.ARROW_RIGHT)
    WebDriverWait(page, 5).until(lambda _: dialog.get_attribute("data-index") == "1")
    dialog.send_keys(Keys.ESCAPE)
    WebDriverWait(page, 5).until(lambda _: not page.execute_script("return arguments[0].open", dialog))
    # a click on the grid's bottom-right image opens that one
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", xt)
    quarter = xt.size["width"] // 4  # offsets from the canvas's centre: the middle of the bottom-right image
    ActionChains(page).move_to_element_with_offset(xt, quarter, quarter).click().perform()
    WebDriverWait(page, 5).until(lambda _: page.execute_script("return arguments[0].open", dialog))
    assert dialog.get_attribute("data-index") == "3"
    dialog.send_keys(Keys.ESCAPE)

    # the forward process on a generated colour image, beside the sampler's own (preview) x_t
    page.find_element(By.CSS_SELECTOR, 'label[for="source-generated"]').click()
    WebDriverWait(page, 10).until(lambda d: d.find_element(By.ID, "reverse-figure").is_displayed())
    assert page.find_element(By.ID, "forward-x0").get_attribute("data-source-width") == "256"
    assert page.find_element(By.ID, "reverse-xt").get_attribute("data-source-width") == "64"
    assert colourfulness(page, "#forward-x0") > 5 and colourfulness(page, "#forward-eps") > 5
    errors = [e for e in page.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]]
    assert not errors, errors
