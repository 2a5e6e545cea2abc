// Side by side: two runs from the same seed at once (DDPM vs DDIM, or two step counts), with the
// time each took. Shared settings (model, images, class, guidance, seed) come from the main form.

import { randomSeed, validateSettings } from "./controls.js";
import { startRun } from "./runner.js";
import { RunView } from "./run-view.js";

function describe(request) {
  const eta = request.sampler === "ddim" ? `, η = ${request.eta}` : "";
  return `${request.sampler.toUpperCase()}, ${request.steps} steps${eta}`;
}

export class Compare {
  constructor(controls, { onRunFinished } = {}) {
    this.controls = controls;
    this.onRunFinished = onRunFinished;
    this.form = document.getElementById("compare-form");
    this.runButton = document.getElementById("compare-run");
    this.stopButton = document.getElementById("compare-stop");
    this.error = document.getElementById("compare-error");
    this.summary = document.getElementById("compare-summary");
    this.views = {
      a: new RunView(document.getElementById("compare-view-a"), { title: "Left", placeholder: "Press Run both." }),
      b: new RunView(document.getElementById("compare-view-b"), { title: "Right", placeholder: "Press Run both." }),
    };
    this.runs = [];
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.run();
    });
    this.stopButton.addEventListener("click", () => this.stop());
    for (const side of ["a", "b"]) {
      const fieldset = this.form.querySelector(`[data-side="${side}"]`);
      const sampler = fieldset.querySelector('[name="sampler"]');
      const syncEta = () => {
        fieldset.querySelector('[name="eta"]').disabled = sampler.value !== "ddim";
      };
      sampler.addEventListener("change", syncEta);
      syncEta();
    }
  }

  get running() {
    return this.runs.length > 0;
  }

  setModel(model) {
    this.runButton.disabled = !model || this.running;
    if (!model) return;
    for (const input of this.form.querySelectorAll('[name="steps"]')) {
      input.max = String(model.timesteps);
      if (Number(input.value) > model.timesteps) input.value = String(model.timesteps);
    }
  }

  sideValues(side) {
    const fieldset = this.form.querySelector(`[data-side="${side}"]`);
    const value = (name) => fieldset.querySelector(`[name="${name}"]`).value;
    return { sampler: value("sampler"), steps: value("steps"), eta: value("eta") };
  }

  async run() {
    if (this.running) return;
    const base = this.controls.values();
    const model = this.controls.model;
    // Both runs must start from the same noise, so the page picks the seed when the visitor did not.
    const seed = base.seed.trim() === "" ? String(randomSeed()) : base.seed;
    const requests = {};
    const problems = [];
    for (const side of ["a", "b"]) {
      const { request, errors } = validateSettings({ ...base, ...this.sideValues(side), seed, every: "auto" }, model);
      requests[side] = request;
      problems.push(...errors.map((e) => `${side === "a" ? "Left" : "Right"}: ${e.message}`));
    }
    if (problems.length) {
      this.error.textContent = problems.join(" ");
      return;
    }
    this.error.textContent = "";
    this.summary.textContent = `Both start from seed ${seed}…`;
    const focusOnRun = document.activeElement === this.runButton;
    this.runButton.disabled = true;
    this.stopButton.disabled = false;
    if (focusOnRun) this.stopButton.focus(); // a disabled button would drop the keyboard's focus
    for (const side of ["a", "b"]) this.views[side].el.title.textContent = describe(requests[side]);
    const started = ["a", "b"].map((side) => {
      const handle = startRun(requests[side], this.views[side]);
      return { side, handle, request: requests[side] };
    });
    this.runs = started;
    const outcomes = await Promise.all(started.map((run) => run.handle.finished));
    this.runs = [];
    const focusOnStop = document.activeElement === this.stopButton;
    this.runButton.disabled = !this.controls.model;
    this.stopButton.disabled = true;
    if (focusOnStop) this.runButton.focus();
    started.forEach((run, i) => {
      if (outcomes[i].status === "done") this.onRunFinished?.(run.request, outcomes[i].result);
    });
    this.summarise(started, outcomes, seed);
  }

  summarise(started, outcomes, seed) {
    const [a, b] = outcomes;
    if (a.status !== "done" || b.status !== "done") {
      this.summary.textContent = "One of the runs did not finish; see its message.";
      return;
    }
    const times = outcomes.map((o) => o.result.elapsed_ms);
    const [fast, slow] = times[0] <= times[1] ? [0, 1] : [1, 0];
    const ratio = times[slow] / Math.max(1, times[fast]);
    const name = (i) => describe(started[i].request);
    this.summary.textContent =
      `Seed ${seed}: ${name(0)} took ${(times[0] / 1000).toFixed(2)} s, ${name(1)} took ${(times[1] / 1000).toFixed(2)} s` +
      ` (server time, both running at once). ${name(fast)} was ${ratio.toFixed(1)}× faster.`;
  }

  stop() {
    for (const run of this.runs) run.handle.stop();
  }
}
