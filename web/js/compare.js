// Side by side: two runs from the same seed at once (DDIM-50 against the fast default, a teacher at
// DDIM-50 against its distilled student, or any two samplers of the server's table with their own
// steps and parameters), with the time each took. Each side may take its own model; the other shared
// settings (images, class, guidance, seed) come from the main form.

import { buildParamFields } from "./params.js";
import {
  describeRun,
  fillSamplerSelect,
  findSampler,
  modelLabel,
  modelParams,
  offerFor,
  randomSeed,
  samplerSteps,
  validateSettings,
} from "./controls.js";
import { startRun } from "./runner.js";
import { RunView } from "./run-view.js";

const SIDES = ["a", "b"];
const SIDE_NAMES = { a: "Left", b: "Right" };

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
    this.sides = {};
    for (const side of SIDES) {
      const fieldset = this.form.querySelector(`[data-side="${side}"]`);
      this.sides[side] = {
        fieldset,
        model: fieldset.querySelector('[name="model"]'),
        sampler: fieldset.querySelector('[name="sampler"]'),
        steps: fieldset.querySelector('[name="steps"]'),
        params: fieldset.querySelector(".compare-params"),
        fields: null,
      };
      this.sides[side].sampler.addEventListener("change", () => this.showSampler(side));
      this.sides[side].model.addEventListener("change", () => {
        if (side === "a") this.teacherShown = false; // the visitor's choice now, kept when the main model changes
        this.onSideModelChange(side);
      });
    }
    this.runs = [];
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.run();
    });
    this.stopButton.addEventListener("click", () => this.stop());
    this.form.addEventListener("input", (event) => event.target.removeAttribute("aria-invalid"));
  }

  /** The control a validation error is about: this side's model, steps or parameter, else the main form's field. */
  fieldFor(side, field) {
    if (field === "steps" || (field === "model" && this.sides[side].model.value)) return this.sides[side][field];
    if (field.startsWith("param-")) return document.getElementById(`compare-${side}-${field}`);
    return document.getElementById(field);
  }

  get running() {
    return this.runs.length > 0;
  }

  /**
   * The samplers from GET /config. The right side starts at the server's default (the fast one), the
   * left at the sampler with the most default steps beside it (DDIM-50 today): the comparison of a
   * classic sampler and the fast default is the one people want.
   */
  setConfig(config) {
    this.config = config;
    const right = findSampler(config, config.defaults.sampler) ?? config.samplers[0];
    const others = config.samplers.filter((s) => s !== right && s.default_steps != null);
    const left = others.reduce((best, s) => (s.default_steps > (best?.default_steps ?? 0) ? s : best), null) ?? right;
    for (const [side, sampler] of [["a", left], ["b", right]]) {
      const s = this.sides[side];
      fillSamplerSelect(s.sampler, config);
      s.defaultSampler = sampler.name; // what the side returns to when it leaves a distilled model
      s.sampler.value = sampler.name;
      this.showSampler(side);
    }
  }

  /** The model a side samples: its own choice, else the main form's. */
  modelOf(side) {
    const name = this.sides[side].model.value;
    return (name && this.controls.models.find((m) => m.name === name)) || this.controls.model;
  }

  showSampler(side) {
    const s = this.sides[side];
    const model = this.modelOf(side);
    const sampler = findSampler(this.config, s.sampler.value);
    s.steps.value = String(samplerSteps(sampler, model, this.config));
    if (model) offerFor(model, this.config, s);
    const own = modelParams(model, sampler);
    s.fields = buildParamFields(s.params, sampler, { idPrefix: `compare-${side}-param-`, compact: true, ...own });
  }

  /** A side's model changed: a distilled one takes only its own sampler and steps; leaving one restores the side's. */
  onSideModelChange(side) {
    const s = this.sides[side];
    const model = this.modelOf(side);
    if (model?.default_sampler) s.sampler.value = model.default_sampler;
    else if (s.shownModel?.default_sampler) s.sampler.value = s.defaultSampler;
    s.shownModel = model;
    this.showSampler(side);
  }

  /**
   * The main form's model changed. Each side's model list follows the server's; a distilled model puts
   * its teacher (when it is served) on the left, at the classic sampler's steps, beside itself on the
   * right: what a student is for, seen at once.
   */
  setModel(model) {
    this.runButton.disabled = !model || this.running;
    const models = this.controls.models;
    for (const side of SIDES) {
      const select = this.sides[side].model;
      const chosen = select.value;
      select.replaceChildren(new Option("as above", ""), ...models.map((m) => new Option(modelLabel(m), m.name)));
      select.value = models.some((m) => m.name === chosen) ? chosen : "";
    }
    if (!model) return;
    const teacher = models.find((m) => m.name === model.teacher);
    const left = this.sides.a;
    if (teacher) {
      left.model.value = teacher.name;
      left.sampler.value = left.defaultSampler;
      left.shownModel = undefined; // shown afresh below, at the classic sampler's steps
      this.teacherShown = true;
    } else if (this.teacherShown) {
      left.model.value = "";
      this.teacherShown = false;
    }
    for (const side of SIDES) if (this.modelOf(side) !== this.sides[side].shownModel) this.onSideModelChange(side);
  }

  sideValues(side) {
    const s = this.sides[side];
    return { sampler: s.sampler.value, steps: s.steps.value, params: s.fields?.read() ?? {} };
  }

  /** A side's run in words; with its model's name when the two sides sample different models. */
  describeSide(request, requests) {
    const run = describeRun(request, this.config);
    return requests.every((r) => r.model === request.model) ? run : `${request.model}: ${run}`;
  }

  async run() {
    if (this.running) return;
    const base = this.controls.values();
    // Both runs must start from the same noise, so the page picks the seed when the visitor did not.
    const seed = base.seed.trim() === "" ? String(randomSeed()) : base.seed;
    const requests = {};
    const problems = [];
    for (const element of document.querySelectorAll("#compare-form [aria-invalid]")) element.removeAttribute("aria-invalid");
    for (const side of SIDES) {
      const values = { ...base, ...this.sideValues(side), seed, every: "auto" };
      const { request, errors } = validateSettings(values, this.modelOf(side), this.config);
      requests[side] = request;
      problems.push(...errors.map((e) => ({ ...e, side, element: this.fieldFor(side, e.field) })));
    }
    if (problems.length) {
      this.error.textContent = problems.map((p) => `${SIDE_NAMES[p.side]}: ${p.message}`).join(" ");
      for (const { element } of problems) element?.setAttribute("aria-invalid", "true");
      problems[0].element?.focus();
      return;
    }
    this.error.textContent = "";
    this.summary.textContent = `Both start from seed ${seed}…`;
    const focusOnRun = document.activeElement === this.runButton;
    this.runButton.disabled = true;
    this.stopButton.disabled = false;
    if (focusOnRun) this.stopButton.focus(); // a disabled button would drop the keyboard's focus
    const all = Object.values(requests);
    for (const side of SIDES) this.views[side].el.title.textContent = this.describeSide(requests[side], all);
    const started = SIDES.map((side) => {
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
      if (outcomes[i].status === "done") this.onRunFinished?.(run.request, outcomes[i].result, { sideBySide: true });
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
    const name = (i) => this.describeSide(started[i].request, started.map((run) => run.request));
    this.summary.textContent =
      `Seed ${seed}: ${name(0)} took ${(times[0] / 1000).toFixed(2)} s, ${name(1)} took ${(times[1] / 1000).toFixed(2)} s` +
      ` (server time, both running at once). ${name(fast)} was ${ratio.toFixed(1)}× faster.`;
  }

  stop() {
    for (const run of this.runs) run.handle.stop();
  }
}
