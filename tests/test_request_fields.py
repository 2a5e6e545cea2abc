"""A request field added to its definition alone (server.schemas: the request model and RULES):
`temperature` is checked, planned (model.editing.Plan), kept by a branch and published for the page,
with no line of the validation or of the page's script about it."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from test_server import serve, write_checkpoint
from test_web import browser, main_view, page, server_url, set_value, wait_for_state  # noqa: F401

BASE = {"model": "cond", "sampler": "ddim", "steps": 4, "n": 2, "seed": 3}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    write_checkpoint(folder / "cond.safetensors", channels=1, num_classes=3, timesteps=100)
    with serve(folder) as client:
        yield client


def images(client, body: dict) -> list[str]:
    response = client.post("/sample", json=body)
    assert response.status_code == 200, response.text
    return response.json()["images"]


def test_temperature_scales_the_starting_noise(client):
    plain = images(client, BASE)
    assert images(client, {**BASE, "temperature": 1}) == plain
    assert images(client, {**BASE, "temperature": 0.5}) != plain
    # from x_T = 0 a deterministic sampler makes one image, whatever the seed draws
    first, second = images(client, {**BASE, "temperature": 0})
    assert first == second


@pytest.mark.parametrize("value", [-0.1, 2.5, "1", None])
def test_a_temperature_out_of_its_range_is_refused(client, value):
    response = client.post("/sample", json={**BASE, "temperature": value})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "temperature"]


def test_a_branch_keeps_the_temperature_of_its_start(client):
    origin = {**BASE, "temperature": 0.5}
    final = images(client, origin)
    branch = {"model": "cond", "sampler": "ddim", "steps": 4, "branch": {"from": origin, "at_step": 4}}
    assert images(client, branch) == final  # at the original's last step: its final images
    response = client.post("/sample", json={**branch, "temperature": 1.0})
    assert response.status_code == 422 and response.json()["detail"][0]["type"] == "branch_start"


def test_the_rules_of_temperature_are_published_and_in_the_schema(client):
    rules = {field["name"]: field for field in client.get("/config").json()["request"]["fields"]}
    assert {k: rules["temperature"][k] for k in ("type", "minimum", "maximum", "default", "start", "nullable")} == {
        "type": "number", "minimum": 0, "maximum": 2, "default": 1, "start": True, "nullable": False,
    }  # fmt: skip
    variants = client.get("/openapi.json").json()["components"]["schemas"]["SampleRequest"]["anyOf"]
    assert all(variant["properties"]["temperature"]["maximum"] == 2 for variant in variants)


@pytest.mark.browser
def test_the_page_shows_and_checks_the_field_by_its_published_rules(page):  # noqa: F811
    control = page.find_element(By.ID, "temperature")
    assert control.get_attribute("type") == "range" and control.get_attribute("max") == "2"
    assert page.find_element(By.CSS_SELECTOR, 'label[for="temperature"]').text.startswith("The noise temperature")
    # its check is the rule GET /config publishes: out of its range, nothing is sent
    page.execute_script("const e = document.getElementById('temperature'); e.max = 5; e.value = 3;")
    page.find_element(By.ID, "generate").click()
    assert "The noise temperature must be from 0 to 2." in page.find_element(By.ID, "form-error").text
    assert control.get_attribute("aria-invalid") == "true"
    page.execute_script("document.getElementById('temperature').value = 0.5")
    set_value(page, "steps", "3")
    page.find_element(By.ID, "generate").click()
    assert wait_for_state(page, main_view(page), {"done", "error"}) == "done"
    assert "&temperature=0.5" in page.current_url  # and the run's link carries it
