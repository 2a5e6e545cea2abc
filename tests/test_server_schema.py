"""schemathesis against the live server's own OpenAPI schema, in its positive mode (requests the
schema allows: none may be refused) and its negative mode (requests it forbids: each must be
refused with a 4xx), never a server error. The server serves one model, so that the schema's bounds
(from the settings and the model) are exactly the server's; the examples are bounded to keep CI short."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from conftest import LiveServer, live_server_env, server_unet
from model.checkpoint import save_checkpoint
from model.schedule import NoiseSchedule

EXAMPLES = 40  # per operation and mode
# Issue #18's fields have rules across fields and inside their values that JSON Schema cannot state (a PNG
# of the model's size; a mask needs an init_image; a branch's at_step within its original's steps): the
# schema gives their types and ranges, and tests/test_server_editing.py what the server accepts. Positive
# cases leave them out (the rest of such a case is still one the schema allows); negative ones keep them.
EDITING_FIELDS = ("init_image", "strength", "mask", "branch", "interpolate_to")
CHECKS = [not_a_server_error, positive_data_acceptance, negative_data_rejection]


@pytest.fixture(scope="module")
def live_schema(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    unet = server_unet(channels=1, num_classes=2, seed=0)
    save_checkpoint(folder / "digits.safetensors", unet, NoiseSchedule.from_name("linear", 100), "toy", ["a", "b"])
    server = LiveServer(folder, live_server_env(folder, max_n=4, max_steps=20))
    try:
        yield schemathesis.openapi.from_url(server.url + "/openapi.json")
    finally:
        server.stop()
    assert "Exception in ASGI application" not in server.output, server.output


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_the_server_keeps_its_own_schema(live_schema, mode):
    failures, tried = {}, set()
    for result in live_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def call(case):
            tried.add(case.operation.label)
            if mode == GenerationMode.POSITIVE and isinstance(case.body, dict):
                for name in EDITING_FIELDS:
                    case.body.pop(name, None)
            case.call_and_validate(checks=CHECKS, timeout=60)

        try:
            call()
        except Unsatisfiable:  # negative mode: an operation without parameters has nothing to break
            assert mode == GenerationMode.NEGATIVE
        except Exception as e:  # schemathesis's failure report, with the request that caused it
            failures[operation.label] = str(e)
    assert not failures, "\n\n".join(f"{label}: {report}" for label, report in failures.items())
    assert {"POST /sample", "GET /models/{name}/schedule"} <= tried
