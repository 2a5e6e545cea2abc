"""The page checked by axe-core (Deque's accessibility engine, the one behind Lighthouse's audit) in the
states a visitor sees: the first screen, a run going, a finished run, a refused setting, the start image and mask
open, the code box and the forward panel; on a desktop and on a phone. No serious or critical
violation may be left. Same machinery as tests/test_web.py (real server, headless Chromium)."""

from __future__ import annotations

import importlib.resources

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait
from test_web import browser, main_view, page, server_url, set_value, wait_for_state  # noqa: F401

pytestmark = pytest.mark.browser
AXE = importlib.resources.files("axe_core_python").joinpath("axe.min.js").read_text()
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}
# WCAG 2.1 A and AA, and axe's best practices (landmarks, headings, regions)
RULES = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]}}


def serious_violations(driver) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now, one line each."""
    driver.execute_script(AXE)
    driver.set_script_timeout(60)
    results = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, arguments[0]).then(done, e => done({error: String(e)}));",
        RULES,
    )
    assert "error" not in results, results.get("error")
    assert results["passes"], "axe-core checked nothing"
    return [
        f"{v['impact']} {v['id']}: {v['help']} at {[n['target'] for n in v['nodes']][:5]}"
        for v in results["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def visit_the_states(driver) -> dict[str, list[str]]:
    """Each state a visitor sees on the way through the page, with its serious violations."""
    found = {"first screen": serious_violations(driver)}
    set_value(driver, "steps", "100000")
    driver.find_element(By.ID, "generate").click()
    WebDriverWait(driver, 5).until(lambda d: d.find_element(By.ID, "form-error").text)
    found["a refused setting"] = serious_violations(driver)
    Select(driver.find_element(By.ID, "sampler")).select_by_value("ddpm")
    set_value(driver, "steps", "900")
    view = main_view(driver)
    driver.find_element(By.ID, "generate").click()
    WebDriverWait(driver, 30).until(lambda _: int(view.get_attribute("data-frames-drawn")) >= 2)
    found["during a run"] = serious_violations(driver)
    driver.find_element(By.ID, "stop").click()
    assert wait_for_state(driver, view, {"cancelled", "done", "error"}) == "cancelled"
    Select(driver.find_element(By.ID, "sampler")).select_by_value("dpm-solver++")
    set_value(driver, "steps", "10")
    Select(driver.find_element(By.ID, "label")).select_by_value("3")
    driver.find_element(By.ID, "generate").click()
    assert wait_for_state(driver, view, {"done", "error"}) == "done"
    found["a finished run"] = serious_violations(driver)
    # clicked from script: on a phone the sticky Generate bar may lie over them
    driver.execute_script("document.querySelector('#code-box summary').click()")
    found["the code box"] = serious_violations(driver)
    driver.execute_script("document.getElementById('use-start-image').click()")
    driver.execute_script("document.getElementById('paint-mask').click()")
    found["start image and mask"] = serious_violations(driver)
    driver.execute_script("document.getElementById('source-generated').click()")
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "reverse-figure").is_displayed())
    found["the forward panel on a sample"] = serious_violations(driver)
    return found


def test_no_serious_accessibility_violations_on_a_desktop(page):  # noqa: F811
    found = visit_the_states(page)
    assert len(found) == 7 and not any(found.values()), {state: v for state, v in found.items() if v}


def test_no_serious_accessibility_violations_on_a_phone(page, server_url):  # noqa: F811
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        page.get(server_url)
        WebDriverWait(page, 20).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))
        found = visit_the_states(page)
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert len(found) == 7 and not any(found.values()), {state: v for state, v in found.items() if v}


def test_axe_finds_what_it_should(page):  # noqa: F811
    # the check can fail: an unlabelled field and grey-on-grey text are caught
    page.execute_script(
        "const f = document.createElement('input'); document.querySelector('main').append(f);"
        "const p = document.createElement('p'); p.textContent = 'faint'; p.style.color = '#ccc';"
        "p.style.background = '#ddd'; document.querySelector('main').append(p);"
    )
    found = " ".join(serious_violations(page))
    assert "label" in found and "color-contrast" in found, found
