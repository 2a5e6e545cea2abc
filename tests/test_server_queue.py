"""Admission: the sampling loop's FIFO queue (positions, wait estimates, withdrawal), the full queue
(503 / 1013), the per-client limit (429 / 1008) and X-Forwarded-For from trusted proxies only, a
crowd of WebSocket clients, and /metrics through prometheus_client's parser and promtool."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from test_server import expect_close, read_to_end, serve, write_checkpoint
from test_server_loop import Recorder, plain, submit, tiny_model

from server.errors import Refused
from server.jobs import JobBridge, Outbox
from server.loop import Cancelled, Failed, Finished, Job, Queued, SamplingLoop, Started

WAIT_S = 30  # generous: the machine is shared; a passing test never waits this long
BLOCKER = {"model": "cond", "sampler": "ddpm", "steps": 1000, "n": 1, "every": 50}  # holds a place until cancelled


@pytest.fixture(scope="module")
def cond():
    return tiny_model("cond", channels=1, num_classes=3, timesteps=1000)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    write_checkpoint(folder / "cond.safetensors", channels=1, num_classes=3, timesteps=1000)
    write_checkpoint(folder / "uncond.safetensors", channels=3, num_classes=0, timesteps=100)
    return folder


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# --- the loop ---------------------------------------------------------------------------------------


def test_queued_jobs_hear_their_position_fall_and_start_first_come_first_served(cond):
    loop = SamplingLoop(torch.device("cpu"), max_jobs=1, max_queue=3)  # not started: the first job keeps its place
    spec = plain(cond, "ddim", steps=4, n=1, seed=0)
    recorders = [submit(loop, spec) for _ in range(4)]
    assert [recorder.events for recorder in recorders] == [[], [Queued(0, None)], [Queued(1, None)], [Queued(2, None)]]
    with pytest.raises(Refused):
        loop.submit(Job(spec, Recorder()))
    recorders[2].job.cancel()  # withdrawn at once, before the loop runs at all
    assert recorders[2].events[-1] == Cancelled(0) and loop.queued_jobs == 2 and loop.active_jobs == 3
    loop.start()
    try:
        results = [recorder.wait() for recorder in recorders]
    finally:
        loop.stop()
    assert [type(result) for result in results] == [Finished, Finished, Cancelled, Finished]
    last = recorders[3].events
    queued = [event for event in last if isinstance(event, Queued)]
    assert [event.position for event in queued][:2] == [2, 1]  # C left, then the loop told D
    assert queued[1].eta_s is not None and queued[1].eta_s > 0  # measured by then
    assert [type(event) for event in last[: len(queued) + 1]] == [Queued] * len(queued) + [Started]
    assert (loop.active_jobs, loop.queued_jobs) == (0, 0)
    assert loop.metrics.value("ddpm_queue_wait_seconds_count") == 3


def test_the_wait_estimate_plays_the_queue_forward_on_the_measured_iteration_time(cond):
    loop = SamplingLoop(torch.device("cpu"), max_jobs=2, max_queue=4)  # not started
    loop.iteration_s = 0.5  # as if measured
    for steps in (10, 4):  # the batch: places free after 10 and 4 iterations
        submit(loop, plain(cond, "ddim", steps=steps, n=1, seed=0))
    third = submit(loop, plain(cond, "ddim", steps=6, n=1, seed=0))  # takes the place freed after 4
    fourth = submit(loop, plain(cond, "ddim", steps=6, n=1, seed=0))  # the one freed after 10
    fifth = submit(loop, plain(cond, "ddim", steps=6, n=1, seed=0))  # the third's, after 4 + 6
    assert [r.events for r in (third, fourth, fifth)] == [[Queued(0, 2.0)], [Queued(1, 5.0)], [Queued(2, 5.0)]]
    loop.stop()


def test_closing_the_loop_fails_the_queued_jobs_at_once(cond):
    loop = SamplingLoop(torch.device("cpu"), max_jobs=1, max_queue=2)
    submit(loop, plain(cond, "ddim", steps=2, n=1, seed=0))
    queued = submit(loop, plain(cond, "ddim", steps=2, n=1, seed=0))
    loop.close()
    assert queued.events[-1] == Failed("shutdown", "the server is shutting down") and loop.queued_jobs == 0
    loop.stop()


# --- the server ---------------------------------------------------------------------------------------


def first_message(ws) -> dict:
    message = ws.receive_json()
    assert message["type"] in ("queued", "start"), message
    return message


def test_a_full_queue_refuses_with_503_and_1013_and_the_server_recovers(checkpoints):
    with serve(checkpoints, max_jobs=1, max_queue=4, max_jobs_per_client=100) as client:
        sockets = [client.websocket_connect("/ws/sample").__enter__() for _ in range(5)]
        for i, ws in enumerate(sockets):
            ws.send_json(BLOCKER)
            message = first_message(ws)
            assert message["type"] == ("start" if i == 0 else "queued") and message.get("position", 0) == max(0, i - 1)
        response = client.post("/sample", json={"n": 1, "steps": 1})
        assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
        assert "queue" in response.json()["detail"]
        with client.websocket_connect("/ws/sample") as fifth:
            fifth.send_json({"n": 1, "steps": 1})
            message = fifth.receive_json()
            assert message["type"] == "error" and message["kind"] == "busy"
            expect_close(fifth, 1013)
        for ws in sockets:
            ws.send_json({"type": "cancel"})
            assert read_to_end(ws)[-1]["type"] == "cancelled"
            ws.__exit__(None, None, None)
        assert client.post("/sample", json={"n": 1, "steps": 1}).status_code == 200
        assert client.get("/readyz").status_code == 200
        state = client.app.state.server
        assert (state.loop.active_jobs, state.metrics.value("ddpm_errors_total", kind="busy")) == (0, 2)


def test_a_rest_request_waits_in_the_queue_within_its_timeout(checkpoints):
    with serve(checkpoints, max_jobs=1, request_timeout_s=5) as client, client.websocket_connect("/ws/sample") as ws:
        ws.send_json(BLOCKER)
        assert first_message(ws)["type"] == "start"
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(client.post, "/sample", json={"n": 1, "steps": 2})
            wait_for(lambda: client.app.state.server.loop.queued_jobs == 1, "the request to queue")
            ws.send_json({"type": "cancel"})
            assert waiting.result(WAIT_S).status_code == 200


def test_a_rest_request_that_finds_no_place_within_its_timeout_is_504(cond):
    loop = SamplingLoop(torch.device("cpu"), max_jobs=1, max_queue=1)  # not started: the first job keeps its place
    bridge = JobBridge(loop, timeout_s=0.2)
    spec = plain(cond, "ddim", steps=1, n=1, seed=0)

    async def request():
        bridge.submit(spec, Outbox(), "a")
        with pytest.raises(Refused) as refused:
            await bridge.run_to_end(spec, "b", asyncio.Event().wait)
        return refused.value

    refused = asyncio.run(request())
    assert refused.kind == "timeout" and "no sampling place came free within the 0.2 s" in refused.detail
    assert (loop.queued_jobs, loop.active_jobs) == (0, 1)
    loop.stop()


def test_a_client_over_its_limit_gets_429_and_1008_and_a_forged_forwarded_for_changes_nothing(checkpoints):
    forged = {"X-Forwarded-For": "203.0.113.7"}
    with (
        serve(checkpoints, max_jobs=1, max_jobs_per_client=2) as client,
        client.websocket_connect("/ws/sample") as one,
        client.websocket_connect("/ws/sample") as two,
    ):
        for ws in (one, two):
            ws.send_json(BLOCKER)
            first_message(ws)
        response = client.post("/sample", json={"n": 1, "steps": 1}, headers=forged)
        assert response.status_code == 429 and "2 runs" in response.json()["detail"]
        with client.websocket_connect("/ws/sample", headers=forged) as three:
            three.send_json({"n": 1, "steps": 1})
            message = three.receive_json()
            assert message["type"] == "error" and message["kind"] == "client_limit"
            expect_close(three, 1008)
        one.send_json({"type": "cancel"})
        read_to_end(one)
        # a place of its own again: the request waits behind `two`, so it is cancelled at once
        with client.websocket_connect("/ws/sample") as again:
            again.send_json({"n": 1, "steps": 1})
            assert first_message(again)["type"] == "queued"
            again.send_json({"type": "cancel"})
            assert read_to_end(again)[-1] == {"type": "cancelled", "step": 0}
        two.send_json({"type": "cancel"})
        read_to_end(two)


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit(checkpoints):
    # TestClient's peer address is "testclient": here, the proxy
    with serve(checkpoints, max_jobs=1, max_jobs_per_client=1, trusted_proxies=["testclient"]) as client:
        sockets = []
        for address in ("203.0.113.7", "203.0.113.8"):
            ws = client.websocket_connect("/ws/sample", headers={"X-Forwarded-For": f"10.9.9.9, {address}"})
            sockets.append(ws.__enter__())
            sockets[-1].send_json(BLOCKER)
            first_message(sockets[-1])
        headers = {"X-Forwarded-For": "203.0.113.8"}
        assert client.post("/sample", json={"n": 1, "steps": 1}, headers=headers).status_code == 429
        for ws in sockets:
            ws.send_json({"type": "cancel"})
            read_to_end(ws)
            ws.__exit__(None, None, None)


def test_a_crowd_is_served_first_come_first_served(checkpoints, monkeypatch):
    """The issue's 64 clients, scaled: 2 blockers hold the batch while 12 clients queue; 2 of those
    hang up and 2 cancel while queued; the other 8 each see their position fall to their start,
    start in the order they came and finish; the server ends with nothing running or queued."""
    starts = []
    original_start = Job.start
    monkeypatch.setattr(Job, "start", lambda job: (starts.append(job.spec.plan.seed), original_start(job))[1])
    hang_up, cancel = {3, 8}, {5, 10}
    with serve(checkpoints, max_jobs=2, max_jobs_per_client=100) as client:
        state = client.app.state.server
        blockers = [client.websocket_connect("/ws/sample").__enter__() for _ in range(2)]
        for seed, ws in enumerate(blockers):
            ws.send_json({**BLOCKER, "seed": 1000 + seed})
            assert first_message(ws)["type"] == "start"
        crowd, firsts = [], []
        for seed in range(12):  # one after the other, so that the order of arrival is known
            ws = client.websocket_connect("/ws/sample").__enter__()
            ws.send_json({"model": "uncond", "sampler": "ddim", "steps": 5, "n": 2, "seed": seed, "every": 1})
            firsts.append(first_message(ws))
            crowd.append(ws)
        assert [message["position"] for message in firsts] == list(range(12))
        for seed in sorted(hang_up):
            crowd[seed].__exit__(None, None, None)
        for seed in sorted(cancel):
            crowd[seed].send_json({"type": "cancel"})
            assert crowd[seed].receive_json()["type"] in ("queued", "cancelled")  # a position may come first
        wait_for(lambda: state.loop.queued_jobs == 12 - 4, "the queue to lose the 4 who left")

        staying = [seed for seed in range(12) if seed not in hang_up | cancel]
        with ThreadPoolExecutor(len(staying)) as pool:
            runs = {seed: pool.submit(read_to_end, crowd[seed]) for seed in staying}
            for ws in blockers:
                ws.send_json({"type": "cancel"})
            for seed in staying:
                messages = [firsts[seed], *runs[seed].result(WAIT_S)]
                kinds = [message["type"] for message in messages]
                waited = kinds.index("start")
                assert kinds[:waited] == ["queued"] * waited and kinds[-1] == "done", kinds
                positions = [message["position"] for message in messages[:waited]]
                assert positions == sorted(positions, reverse=True), positions
        for ws in [*blockers, *crowd]:
            ws.__exit__(None, None, None)
        assert starts == [1000, 1001, *staying]

        wait_for(lambda: state.loop.active_jobs == 0, "the loop to empty")
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(client.get("/metrics").text)
            for sample in family.samples
        }
        assert samples[("ddpm_active_jobs", ())] == samples[("ddpm_queued_jobs", ())] == 0
        assert samples[("ddpm_jobs_total", (("outcome", "finished"),))] == len(staying)
        assert samples[("ddpm_jobs_total", (("outcome", "cancelled"),))] == 2 + 4
        assert samples[("ddpm_queue_wait_seconds_count", ())] == 2 + len(staying)
        assert samples[("ddpm_time_to_first_frame_seconds_count", ())] == len(staying)
        assert samples[("ddpm_forward_seconds_count", ())] > 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) is not installed")
def test_metrics_pass_promtool(checkpoints, tmp_path):
    with serve(checkpoints) as client:
        client.post("/sample", json={"n": 1, "steps": 2})
        client.post("/sample", json={"n": 0})
        text = client.get("/metrics").text
    checked = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_concurrent_submissions_never_exceed_the_batch_or_the_queue(cond):
    loop = SamplingLoop(torch.device("cpu"), max_jobs=2, max_queue=3)  # not started
    refused = []

    def try_submit():
        try:
            loop.submit(Job(plain(cond, "ddim", steps=1, n=1, seed=0), Recorder()))
        except Refused:
            refused.append(1)

    threads = [threading.Thread(target=try_submit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (loop.active_jobs, loop.queued_jobs, len(refused)) == (5, 3, 15)
    loop.stop()
