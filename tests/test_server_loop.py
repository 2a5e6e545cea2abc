"""The batching sampling loop (server.loop) and a connection's outbound queue (server.jobs.Outbox),
with tiny random models in memory."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, server_unet
from model.checkpoint import Checkpoint, save_checkpoint
from model.editing import Plan
from model.samplers import (
    SAMPLERS,
    ddim_steps,
    ddim_timesteps,
    ddpm_steps,
    guided_eps,
    initial_noise,
    make_generator,
    sample,
)
from model.schedule import NoiseSchedule
from model.unet import UNet, UNetConfig
from server.errors import Refused
from server.jobs import Outbox
from server.loop import Cancelled, Failed, Finished, Frame, Job, JobSpec, SamplingLoop
from server.registry import LoadedModel

WAIT_S = 30  # generous: the machine is shared; a passing test never waits this long


def tiny_model(name: str, channels: int, num_classes: int, timesteps: int, device="cpu") -> LoadedModel:
    unet = server_unet(channels, num_classes, seed=len(name))
    checkpoint = Checkpoint(unet.to(device).eval(), NoiseSchedule.from_name("linear", timesteps).to(device), "toy")
    return LoadedModel(name, checkpoint, torch.device(device))


def plain(model: LoadedModel, sampler: str, steps: int, n: int, seed: int, params=None, **settings) -> JobSpec:
    """The spec of a plain run (no SDEdit, inpainting, interpolation or branch), as server.validation builds it."""
    entry = SAMPLERS[sampler]
    return JobSpec(model, Plan(entry, model.schedule, steps, entry.resolve(params or {}), n, seed), **settings)


@pytest.fixture(scope="module")
def cond():
    return tiny_model("cond", channels=1, num_classes=3, timesteps=1000)


@pytest.fixture(scope="module")
def uncond():
    return tiny_model("uncond", channels=3, num_classes=0, timesteps=100)


def forwards_above(loop: SamplingLoop, jobs: int) -> float:
    """How many batched forwards advanced more than `jobs` jobs (from the histogram's buckets)."""
    metrics = loop.metrics
    return metrics.value("ddpm_batch_jobs_count") - metrics.value("ddpm_batch_jobs_bucket", le=str(float(jobs)))


class Recorder:
    """A job's report callback that keeps every event and says when the job has ended."""

    def __init__(self):
        self.events = []
        self.progressed = threading.Event()
        self.ended = threading.Event()

    def __call__(self, event):
        self.events.append(event)
        self.progressed.set()
        if isinstance(event, Finished | Cancelled | Failed):
            self.ended.set()

    def frames(self) -> list[Frame]:
        return [event for event in self.events if isinstance(event, Frame)]

    def wait_for_progress(self):
        assert self.progressed.wait(WAIT_S), "the job took no step"

    def wait(self):
        assert self.ended.wait(WAIT_S), "the job did not end"
        return self.events[-1]


@pytest.fixture
def loop():
    loop = SamplingLoop(torch.device("cpu"), max_jobs=8)
    yield loop
    loop.stop()


def submit(loop: SamplingLoop, spec: JobSpec, timeout_s: float = float("inf")) -> Recorder:
    recorder = Recorder()
    recorder.job = Job(spec, recorder, timeout_s)
    loop.submit(recorder.job)
    return recorder


def run_alone(spec: JobSpec) -> torch.Tensor:
    loop = SamplingLoop(torch.device("cpu"), max_jobs=1)
    loop.start()
    try:
        event = submit(loop, spec).wait()
    finally:
        loop.stop()
    assert isinstance(event, Finished)
    return event.images


def test_concurrent_jobs_share_batched_forwards_and_match_their_solo_runs(loop, cond, uncond):
    specs = [
        plain(cond, "ddpm", steps=12, n=2, seed=1, label=1, guidance=3.0),
        plain(cond, "ddim", steps=8, n=3, seed=2, params={"eta": 0.0}),  # unconditional on a conditional model
        plain(cond, "ddim", steps=10, n=1, seed=3, params={"eta": 0.7}, label=2, guidance=1.0),
        plain(uncond, "ddim", steps=6, n=2, seed=4, params={"eta": 0.0}),
        plain(uncond, "ddpm", steps=5, n=1, seed=5),
    ]
    # submitted before the loop starts, so that they all join at its first iteration
    recorders = [submit(loop, spec) for spec in specs]
    loop.start()
    results = [recorder.wait() for recorder in recorders]

    assert all(isinstance(result, Finished) for result in results)
    # cond: 3 jobs in each of the first 8 forwards, then 2 (until step 10), then 1 (until 12);
    # uncond: 2 jobs in each of the first 5 forwards, then 1
    assert forwards_above(loop, 2) == 8
    assert forwards_above(loop, 1) == 8 + 2 + 5
    assert forwards_above(loop, 0) == 12 + 6
    for spec, result in zip(specs, results, strict=True):
        assert result.images.shape == (spec.plan.n, *spec.model.image_shape)
        torch.testing.assert_close(result.images, run_alone(spec), atol=1e-5, rtol=1e-5)


def test_multistep_solvers_keep_their_history_when_batched_with_other_jobs(loop, cond):
    """DPM-Solver++ and UniPC remember earlier predictions; sharing forwards with jobs of other
    samplers and lengths must not change what they compute."""
    specs = [
        plain(cond, "dpm-solver++", steps=6, n=2, seed=5, label=1, guidance=3.0),
        plain(cond, "unipc", steps=5, n=1, seed=6, params={"order": 3, "spacing": "karras"}),
        plain(cond, "ddim", steps=3, n=2, seed=7),
    ]
    recorders = [submit(loop, spec) for spec in specs]
    loop.start()
    for spec, recorder in zip(specs, recorders, strict=True):
        result = recorder.wait()
        assert isinstance(result, Finished)
        torch.testing.assert_close(result.images, run_alone(spec), atol=1e-5, rtol=1e-5)


def test_the_loop_computes_what_the_core_sampler_computes(loop, cond):
    spec = plain(cond, "ddim", steps=7, n=2, seed=11, params={"eta": 0.5}, label=0, guidance=2.5)
    loop.start()
    served = submit(loop, spec).wait().images

    generator = make_generator(spec.plan.seed)
    x = initial_noise((spec.plan.n, *cond.image_shape), generator)
    steps = ddim_steps(cond.schedule, x, ddim_timesteps(1000, spec.plan.steps), 0.5, generator, thresholding="clip")
    labels = torch.full((spec.plan.n,), spec.label)
    with torch.inference_mode():
        expected = sample(steps, lambda x, t: guided_eps(cond.unet, x, t, labels, spec.guidance))
    torch.testing.assert_close(served, expected, atol=1e-5, rtol=1e-5)


def test_ddpm_jobs_clip_x0(loop, uncond):
    spec = plain(uncond, "ddpm", steps=4, n=1, seed=3)
    loop.start()
    served = submit(loop, spec).wait().images

    generator = make_generator(spec.plan.seed)
    x = initial_noise((1, *uncond.image_shape), generator)
    with torch.inference_mode():
        expected = sample(ddpm_steps(uncond.schedule, x, 4, generator=generator, thresholding="clip"), uncond.unet)
    torch.testing.assert_close(served, expected, atol=1e-5, rtol=1e-5)


def test_frames_every_k_steps_and_always_the_last(loop, uncond):
    loop.start()
    recorder = submit(loop, plain(uncond, "ddim", steps=10, n=2, seed=0, params={"eta": 0.0}, every=4))
    finished = recorder.wait()
    frames = [event for event in recorder.events if isinstance(event, Frame)]
    assert [frame.step for frame in frames] == [4, 8, 10]
    assert [frame.t for frame in frames] == [ddim_timesteps(100, 10)[4], ddim_timesteps(100, 10)[8], -1]
    assert frames[-1].x_t.shape == frames[-1].x0.shape == (2, 3, 8, 8)
    torch.testing.assert_close(frames[-1].x_t, finished.images)


def test_a_new_job_does_not_wait_for_a_long_one(loop, cond):
    loop.start()
    long_job = submit(loop, plain(cond, "ddpm", steps=1000, n=1, seed=0, every=1))
    long_job.wait_for_progress()
    short_job = submit(loop, plain(cond, "ddim", steps=5, n=1, seed=1, params={"eta": 0.0}))
    assert isinstance(short_job.wait(), Finished)
    assert not long_job.ended.is_set(), "the short job should have finished while the long one runs"
    assert loop.active_jobs == 1


def test_the_start_up_timing_is_the_median_of_its_forwards(monkeypatch):
    """Issue #26, 2: one busy moment during start-up (here a forward that takes 50 s) does not set the
    page's first estimate; the median of the timed forwards does."""
    from server import registry

    model = tiny_model("timed", channels=1, num_classes=3, timesteps=1000)
    clock = iter([0.0, 50.0, 100.0, 101.0, 200.0, 202.0])  # forwards of 50, 1 and 2 seconds
    monkeypatch.setattr(registry.time, "perf_counter", lambda: next(clock))
    registry.warm_up(model)
    assert model.seconds_per_row == 2.0 / registry.TIMING_ROWS


def test_the_loop_keeps_each_models_time_per_row_up_to_date(loop):
    """GET /models' seconds_per_row follows what the loop measures as it runs (issue #26: a start-up
    timing on a busy machine made the page's estimates 15-30x too high)."""
    model = tiny_model("timed", channels=1, num_classes=3, timesteps=1000)
    model.seconds_per_row = 100.0  # a start-up figure far from the truth
    loop.start()
    run = submit(loop, plain(model, "ddim", steps=100, n=2, seed=0, params={"eta": 0.0}))
    assert isinstance(run.wait(), Finished)
    assert 0 < model.seconds_per_row < 0.1
    assert model.info()["seconds_per_row"] == model.seconds_per_row


def test_cancel_stops_the_job_within_a_step_and_frees_its_place(loop, cond):
    loop.start()
    recorder = submit(loop, plain(cond, "ddpm", steps=1000, n=1, seed=0, every=1))
    recorder.wait_for_progress()
    assert loop.active_jobs == 1
    frames_before = len(recorder.frames())
    recorder.job.cancel()
    event = recorder.wait()
    assert isinstance(event, Cancelled)
    assert len(recorder.frames()) <= frames_before + 1  # the step under way when cancel() came
    assert event.step == recorder.frames()[-1].step < 1000
    assert loop.active_jobs == 0


def test_places_are_limited_and_refused_beyond(cond):
    loop = SamplingLoop(torch.device("cpu"), max_jobs=1)  # not started: the first job keeps its place
    loop.submit(Job(plain(cond, "ddim", steps=1, n=1, seed=0), Recorder()))
    with pytest.raises(Refused):
        loop.submit(Job(plain(cond, "ddim", steps=1, n=1, seed=0), Recorder()))
    loop.stop()


def test_a_job_past_its_deadline_fails_with_timeout(loop, cond):
    loop.start()
    event = submit(loop, plain(cond, "ddpm", steps=1000, n=1, seed=0), timeout_s=0.05).wait()
    assert isinstance(event, Failed) and event.kind == "timeout"
    assert loop.active_jobs == 0


def test_a_failing_forward_fails_its_jobs_and_the_loop_keeps_serving(loop, cond):
    loop.start()
    # label 7 of a 3-class model: validation would refuse it; here it breaks the embedding lookup
    broken = submit(loop, plain(cond, "ddim", steps=3, n=1, seed=0, label=7, guidance=2.0)).wait()
    assert isinstance(broken, Failed) and broken.kind == "error"
    assert isinstance(submit(loop, plain(cond, "ddim", steps=3, n=1, seed=0)).wait(), Finished)


def test_stopping_the_loop_fails_the_running_jobs(cond):
    loop = SamplingLoop(torch.device("cpu"), max_jobs=2)
    loop.start()
    recorder = submit(loop, plain(cond, "ddpm", steps=1000, n=1, seed=0, every=1))
    recorder.wait_for_progress()
    loop.stop()
    event = recorder.wait()
    assert isinstance(event, Failed) and event.kind == "shutdown"
    with pytest.raises(Refused):
        loop.submit(Job(plain(cond, "ddim", steps=1, n=1, seed=0), Recorder()))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_jobs_on_cuda_match_their_solo_runs():
    model = tiny_model("cuda", channels=1, num_classes=3, timesteps=1000, device="cuda")
    loop = SamplingLoop(torch.device("cuda"), max_jobs=4)
    specs = [
        plain(model, "ddpm", steps=10, n=2, seed=1, label=0, guidance=2.0),
        plain(model, "ddim", steps=6, n=3, seed=2, params={"eta": 0.3}),
    ]
    recorders = [submit(loop, spec) for spec in specs]
    loop.start()
    try:
        results = [recorder.wait() for recorder in recorders]
    finally:
        loop.stop()
    assert forwards_above(loop, 1) >= 6
    for spec, result in zip(specs, results, strict=True):
        alone = SamplingLoop(torch.device("cuda"), max_jobs=1)
        alone.start()
        try:
            expected = submit(alone, spec).wait().images
        finally:
            alone.stop()
        torch.testing.assert_close(result.images, expected, atol=1e-4, rtol=1e-4)


# --- Outbox -----------------------------------------------------------------------------------------


def frame(step: int, total: int = 10) -> Frame:
    x = torch.zeros(1, 1, 2, 2)
    return Frame(step, total, 999 - step, x, x)


def drain(outbox: Outbox, count: int) -> list:
    """The next `count` items, checking that there are no more."""

    async def take():
        items = [await outbox.get() for _ in range(count)]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(outbox.get(), 0.01)
        return items

    return asyncio.run(take())


def test_outbox_keeps_only_the_newest_unsent_frames_and_every_other_message():
    dropped = []
    outbox = Outbox(frame_slots=1, on_drop=lambda: dropped.append(1))
    start, done = {"type": "start"}, Finished(torch.zeros(1), 1.0)
    for item in [start, frame(1), frame(2), frame(3), frame(10), done]:
        outbox.put(item)
    items = drain(outbox, 4)
    assert items[0] is start and items[-1] is done
    assert [item.step for item in items[1:-1]] == [3, 10]  # the last frame is never replaced
    assert len(dropped) == 2


def test_outbox_with_more_slots_keeps_that_many_frames_in_order():
    outbox = Outbox(frame_slots=3)
    for step in range(1, 8):
        outbox.put(frame(step))
    assert [item.step for item in drain(outbox, 3)] == [5, 6, 7]


def test_outbox_get_waits_for_the_next_item():
    async def scenario():
        outbox = Outbox()
        getter = asyncio.ensure_future(outbox.get())
        await asyncio.sleep(0)
        assert not getter.done()
        outbox.put({"type": "start"})
        return await asyncio.wait_for(getter, 1)

    assert asyncio.run(scenario()) == {"type": "start"}


SERVE_AND_COUNT_NATIVE_THREADS = """
import json, os, sys, threading
import torch
from fastapi.testclient import TestClient
from model.checkpoint import load_checkpoint
from server.app import create_app
from server.settings import Settings

def native_threads():  # threads Python did not start: OpenMP's workers, and a few others of torch's and NumPy's
    python = {thread.native_id for thread in threading.enumerate()}
    return len({int(task) for task in os.listdir("/proc/self/task")} - python)

folder, requests, alone = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "alone"
before = native_threads()
if alone:  # the least a process can do: set the threads, load the model and run it, on one thread
    torch.set_num_threads(2)
    unet = load_checkpoint(folder + "/big.safetensors").unet
    with torch.inference_mode():
        unet(torch.randn(8, 1, 192, 192), torch.full((8,), 500))
else:
    settings = Settings(_env_file=None, checkpoint_dir=folder, web_dir=None, device="cpu", torch_threads=2)
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        for body in requests:
            answer = client.post("/sample", json=body)
            assert answer.status_code == 200, answer.text
        print(native_threads() - before)  # while the server runs: its threads are all alive
if alone:
    print(native_threads() - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in Linux's /proc")
def test_only_the_sampling_thread_runs_parallel_torch_kernels(tmp_path):
    """With OpenMP every thread that runs a parallel kernel gets a team of worker threads; more of them
    than cores makes libgomp sleep between kernels, and the server's forwards took 1.5-1.7× as long.
    A server with 2 torch threads that loaded a model, warmed it up and served plain and SDEdit requests
    (an init image and a mask over torch's parallel threshold of 32768 values) has started no more
    native threads than a process that loads and runs the model on one thread: one team."""
    config = UNetConfig(in_channels=1, image_size=192, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                        attention_resolutions=(), dropout=0.0)  # fmt: skip
    save_checkpoint(tmp_path / "big.safetensors", UNet(config), NoiseSchedule.from_name("linear"), "toy")
    picture = Image.fromarray(np.tile(np.arange(192, dtype=np.uint8), (192, 1)))

    def png(image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    plain = {"model": "big", "n": 1, "sampler": "ddim", "steps": 2, "seed": 1}
    edit = {**plain, "init_image": png(picture), "strength": 0.5, "mask": png(picture.point(lambda v: 255 * (v > 96)))}
    started = {}
    for mode in ("alone", "server"):
        run = subprocess.run(
            [sys.executable, "-c", SERVE_AND_COUNT_NATIVE_THREADS, str(tmp_path), json.dumps([plain, edit]), mode],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        started[mode] = int(run.stdout.split()[-1])
    assert started["server"] == started["alone"] >= 1, started
