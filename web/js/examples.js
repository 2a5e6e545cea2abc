// Examples: a few runs worth seeing side by side, one click each, for a visitor who does not know
// the settings yet. They are made from GET /config and the chosen model (no sampler is named here),
// and run one after another so that each has the server to itself: their times are the real ones.

import { describeRun, findSampler, maxSteps, modelFixes, modelParams, samplerSteps, validateSettings } from "./controls.js";
import { startRun } from "./runner.js";
import { RunView } from "./run-view.js";

const EXAMPLE_SEED = "2"; // one seed for every run of an example: the same starting noise
const GUIDANCE_SCALES = [1, 3, 7];
const FEW_STEPS = 10;

/** "DDIM-50". */
function shortName(sampler, steps) {
  return `${sampler.title}-${steps}`;
}

/**
 * The examples this server and model allow: [{id, title, description, runs: [form values]}], each
 * run's form values as `validateSettings` takes them, with the parameter values its model's files
 * state. A distilled model takes only its own sampler and steps: its examples are itself beside its
 * teacher (when the server has it) and itself at rising guidance.
 */
export function buildExamples(config, model, models = [model]) {
  if (!model) return [];
  const base = { n: String(config.defaults.n), seed: EXAMPLE_SEED, label: "", guidance: "1", every: "auto" };
  const runOf = (runModel, sampler, steps, extra = {}) => ({
    ...base,
    model: runModel.name,
    sampler: sampler.name,
    steps: String(steps),
    params: modelParams(runModel, sampler).values,
    ...extra,
  });
  const examples = [];
  const student = modelFixes(model);

  // The classic pair: the sampler that walks all T steps against the one with the most steps of its own;
  // for a student, the classic sampler on its teacher against the student's few steps.
  const allSteps = config.samplers.find((s) => s.default_steps == null);
  const fewer = config.samplers
    .filter((s) => s.default_steps != null)
    .reduce((best, s) => (s.default_steps > (best?.default_steps ?? 0) ? s : best), null);
  const teacher = student && models.find((m) => m.name === model.teacher && !modelFixes(m));
  if (teacher && fewer) {
    const own = findSampler(config, student.sampler);
    const teacherSteps = samplerSteps(fewer, teacher, config);
    examples.push({
      id: "classic",
      title: `${teacher.name} ${shortName(fewer, teacherSteps)} vs ${model.name} ${shortName(own, student.steps)}`,
      description: "The same noise: the teacher's many steps, and the student's few.",
      runs: [runOf(teacher, fewer, teacherSteps), runOf(model, own, student.steps)],
    });
  } else if (!student && allSteps && fewer) {
    const [a, b] = [
      [fewer, samplerSteps(fewer, model, config)],
      [allSteps, maxSteps(model, config, allSteps)],
    ];
    examples.push({
      id: "classic",
      title: `${shortName(...a)} vs ${shortName(...b)}`,
      description: "The same noise, two samplers: about as good, one far faster.",
      runs: [runOf(model, ...a), runOf(model, ...b)],
    });
  }

  // One class at rising guidance, with the model's own sampler.
  if (model.num_classes && model.guidance !== false) {
    const label = Math.min(7, model.num_classes - 1);
    const name = model.class_names?.[label] ?? String(label);
    const sampler = findSampler(config, model.default_sampler ?? config.defaults.sampler);
    const scales = GUIDANCE_SCALES.filter((w) => w <= config.limits.max_guidance);
    examples.push({
      id: "guidance",
      title: `Class ${name} with guidance ${scales.join(", ")}`,
      description: "Stronger guidance: more typical of the class, less varied.",
      runs: scales.map((w) =>
        runOf(model, sampler, samplerSteps(sampler, model, config), { label: String(label), guidance: String(w) }),
      ),
    });
  }

  // The same few steps for every sampler of the table (a student takes one sampler: nothing to compare).
  if (!student) {
    const steps = Math.min(FEW_STEPS, ...config.samplers.map((s) => maxSteps(model, config, s)));
    examples.push({
      id: "few-steps",
      title: `${steps} steps of each sampler`,
      description: "What each sampler makes of the same small budget.",
      runs: config.samplers.map((s) => runOf(model, s, steps)),
    });
  }
  return examples;
}

/** A run of an example in words: its model when the example has two, and its class and guidance when it has them. */
export function describeExampleRun(request, requests, config, model) {
  const run = describeRun(request, config);
  const who = requests.every((r) => r.model === request.model) ? "" : `${request.model}: `;
  const className = request.label == null ? null : (model?.class_names?.[request.label] ?? String(request.label));
  const guided = className == null ? "" : `, class ${className}${request.guidance == null ? "" : `, w = ${request.guidance}`}`;
  return `${who}${run}${guided}`;
}

export class Examples {
  /** controls: the main form (its config and model); onRunFinished(request, result): each run that finished. */
  constructor(controls, { onRunFinished } = {}) {
    this.controls = controls;
    this.onRunFinished = onRunFinished;
    this.buttons = document.getElementById("example-buttons");
    this.section = document.getElementById("examples");
    this.gallery = document.getElementById("example-views");
    this.summary = document.getElementById("example-summary");
    this.stopButton = document.getElementById("example-stop");
    this.stopButton.addEventListener("click", () => this.stop());
    this.current = null; // the run in progress
    this.stopped = false;
    this.running = false;
  }

  /** Rebuild the buttons for the chosen model. */
  setModel(model) {
    const config = this.controls.config;
    this.examples = buildExamples(config, model, this.controls.models);
    this.buttons.replaceChildren(
      ...this.examples.map((example) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "secondary example";
        button.dataset.example = example.id;
        button.textContent = example.title;
        button.title = example.description;
        button.disabled = this.running;
        button.addEventListener("click", () => this.run(example));
        return button;
      }),
    );
  }

  setRunning(running) {
    this.running = running;
    for (const button of this.buttons.querySelectorAll("button")) button.disabled = running;
    this.stopButton.hidden = !running;
  }

  async run(example) {
    if (this.running) return;
    const config = this.controls.config;
    const modelOf = (name) => this.controls.models.find((m) => m.name === name);
    const requests = example.runs.map((values) => validateSettings(values, modelOf(values.model), config).request);
    const boxes = requests.map(() => document.createElement("div"));
    this.gallery.replaceChildren(...boxes);
    const views = requests.map((request, i) => {
      const title = describeExampleRun(request, requests, config, modelOf(request.model));
      return new RunView(boxes[i], { title, placeholder: "Waiting for the run before it." });
    });
    this.section.hidden = false;
    this.gallery.dataset.example = example.id;
    this.summary.textContent = `${example.title}: ${example.description} Seed ${EXAMPLE_SEED} for all.`;
    this.stopped = false;
    this.setRunning(true);
    this.section.scrollIntoView({ block: "start", behavior: window.matchMedia("(prefers-reduced-motion: reduce)").matches ? "auto" : "smooth" });
    for (const [i, request] of requests.entries()) {
      if (this.stopped) break;
      this.current = startRun(request, views[i], { estimateS: this.controls.estimateFor(request)?.seconds ?? null });
      const outcome = await this.current.finished;
      if (outcome.status === "done") this.onRunFinished?.(request, outcome.result);
    }
    this.current = null;
    this.setRunning(false);
  }

  stop() {
    this.stopped = true;
    this.current?.stop();
  }
}
