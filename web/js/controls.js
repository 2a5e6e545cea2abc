// The generate form: filling it from /models, keeping its hints honest, and turning it into a
// request of the contract. `validateSettings` and `autoEvery` are pure, so tests can call them.

export const DEFAULTS = { sampler: "ddim", ddimSteps: 50, eta: 0, n: 16, guidance: 3, every: "auto" };
export const MAX_SEED = Number.MAX_SAFE_INTEGER; // the server takes seeds below 2^53, exact in JS
const MAX_IMAGES = 64;
const PREFERRED_MODEL = "mnist";
// The settings a link can carry (?model=mnist&sampler=ddim&steps=50&seed=7…), so a run can be shared.
const LINK_FIELDS = ["model", "sampler", "steps", "eta", "n", "seed", "label", "guidance"];
const MAX_GUIDANCE = 20;

/** About 100 frames per run at most: every step for DDIM-50, every 10th for DDPM-1000. */
export function autoEvery(steps) {
  return Math.max(1, Math.ceil(steps / 100));
}

export function randomSeed() {
  const buf = new Uint32Array(1);
  crypto.getRandomValues(buf);
  return buf[0]; // 0 … 2^32 − 1, like the seeds the server draws itself
}

function parseInteger(text) {
  const trimmed = String(text ?? "").trim();
  return /^[+-]?\d+$/.test(trimmed) ? Number(trimmed) : Number.NaN;
}

function parseNumber(text) {
  const trimmed = String(text ?? "").trim();
  return trimmed === "" ? Number.NaN : Number(trimmed);
}

/**
 * Form values (strings, as inputs hold them) + the chosen model → {request, stream, errors}.
 * `errors` is a list of {field, message}; when it is not empty, nothing should be sent.
 */
export function validateSettings(values, model) {
  const errors = [];
  const timesteps = model?.timesteps ?? 1000;
  const request = { model: model?.name ?? values.model, sampler: values.sampler };

  if (!model) errors.push({ field: "model", message: "Choose a model (the server has none loaded yet)." });
  if (values.sampler !== "ddim" && values.sampler !== "ddpm") {
    errors.push({ field: "sampler", message: "The sampler must be DDIM or DDPM." });
  }

  const steps = parseInteger(values.steps);
  if (!Number.isInteger(steps) || steps < 1 || steps > timesteps) {
    errors.push({ field: "steps", message: `Steps must be a whole number from 1 to ${timesteps}.` });
  }
  request.steps = steps;

  const eta = values.sampler === "ddim" ? parseNumber(values.eta) : 1;
  if (!(eta >= 0 && eta <= 1)) errors.push({ field: "eta", message: "η must be between 0 and 1." });
  // DDPM always adds its full noise; sending η = 1 says so honestly to a server that reads it.
  request.eta = eta;

  const n = parseInteger(values.n);
  if (!Number.isInteger(n) || n < 1 || n > MAX_IMAGES) {
    errors.push({ field: "n", message: `The number of images must be from 1 to ${MAX_IMAGES}.` });
  }
  request.n = n;

  if (String(values.seed ?? "").trim() === "") {
    request.seed = null;
  } else {
    const seed = parseInteger(values.seed);
    if (!Number.isInteger(seed) || seed < 0 || seed > MAX_SEED) {
      errors.push({ field: "seed", message: `The seed must be a whole number from 0 to ${MAX_SEED}, or empty for a random one.` });
    }
    request.seed = seed;
  }

  if (values.label === "" || values.label == null) {
    request.label = null;
  } else {
    const label = parseInteger(values.label);
    const classes = model?.num_classes ?? 0;
    if (!Number.isInteger(label) || label < 0 || label >= classes) {
      errors.push({ field: "label", message: "This model has no such class." });
    }
    request.label = label;
  }

  const guidance = parseNumber(values.guidance);
  if (!(guidance >= 0 && guidance <= MAX_GUIDANCE)) {
    errors.push({ field: "guidance", message: `Guidance must be between 0 and ${MAX_GUIDANCE}.` });
  }
  // a class-conditional model without an unconditional class (a diffusers one) takes no guidance
  request.guidance = model?.guidance === false ? null : guidance;

  const stream = values.every !== "off";
  if (stream) {
    const every = values.every === "auto" || values.every == null ? autoEvery(steps || 1) : parseInteger(values.every);
    if (!Number.isInteger(every) || every < 1) errors.push({ field: "every", message: "Stream every k steps, k ≥ 1." });
    request.every = every;
  }
  return { request, stream, errors };
}

export function describeModel(model) {
  const colour = model.channels === 1 ? "grayscale" : model.channels === 3 ? "colour" : `${model.channels} channels`;
  const classes = model.num_classes ? `${model.num_classes} classes` : "unconditional";
  return `${model.dataset} · ${model.image_size}×${model.image_size} ${colour} · ${classes} · ${model.schedule} schedule, T = ${model.timesteps} · on ${model.device}`;
}

/** The DOM side of the form. */
export class Controls {
  constructor(form) {
    this.form = form;
    this.models = [];
    const $ = (id) => document.getElementById(id);
    this.el = {
      model: $("model"),
      modelInfo: $("model-info"),
      steps: $("steps"),
      stepsHint: $("steps-hint"),
      samplerHint: $("sampler-hint"),
      eta: $("eta"),
      etaValue: $("eta-value"),
      etaField: $("eta-field"),
      n: $("n"),
      seed: $("seed"),
      seedRandom: $("seed-random"),
      seedUsed: $("seed-used"),
      label: $("label"),
      guidance: $("guidance"),
      guidanceValue: $("guidance-value"),
      guidanceHint: $("guidance-hint"),
      every: $("every"),
      everyHint: $("every-hint"),
      error: $("form-error"),
      estimate: $("estimate"),
    };
    // Each sampler remembers its own step count: DDIM's 50 should not become DDPM's default.
    this.stepsBySampler = { ddim: String(DEFAULTS.ddimSteps), ddpm: null };
    this.msPerStepImage = new Map(); // model name → measured milliseconds per (step × image)

    this.el.eta.addEventListener("input", () => this.refreshHints());
    this.el.guidance.addEventListener("input", () => this.refreshHints());
    this.el.label.addEventListener("change", () => this.refreshHints());
    this.el.every.addEventListener("change", () => this.refreshHints());
    this.el.n.addEventListener("change", () => this.refreshHints());
    this.el.steps.addEventListener("input", () => {
      this.stepsBySampler[this.sampler] = this.el.steps.value;
      this.clearFieldError("steps");
      this.refreshHints();
    });
    this.el.seed.addEventListener("input", () => this.clearFieldError("seed"));
    for (const radio of form.querySelectorAll('input[name="sampler"]')) {
      radio.addEventListener("change", () => this.onSamplerChange());
    }
    this.el.seedRandom.addEventListener("click", () => {
      this.el.seed.value = String(randomSeed());
      this.clearFieldError("seed");
    });
    this.el.model.addEventListener("change", () => this.onModelChange());
    this.onModelChangeCallbacks = [];
  }

  get sampler() {
    return this.form.querySelector('input[name="sampler"]:checked').value;
  }

  get model() {
    return this.models.find((m) => m.name === this.el.model.value) ?? null;
  }

  setModels(models) {
    this.models = models;
    const options = models.map((m) => {
      const option = document.createElement("option");
      option.value = m.name;
      const size = `${m.image_size}×${m.image_size}`;
      option.textContent = m.dataset === m.name ? `${m.name} (${size})` : `${m.name} (${m.dataset}, ${size})`;
      return option;
    });
    this.el.model.replaceChildren(...options);
    // /models does not say which model is the server's default; the server prefers "mnist", so do we.
    if (models.some((m) => m.name === PREFERRED_MODEL)) this.el.model.value = PREFERRED_MODEL;
    this.el.model.disabled = models.length === 0;
    if (models.length === 0) {
      const none = document.createElement("option");
      none.textContent = "No models on the server";
      this.el.model.replaceChildren(none);
    }
    this.onModelChange();
  }

  onModelChanged(callback) {
    this.onModelChangeCallbacks.push(callback);
  }

  onModelChange() {
    const model = this.model;
    if (model) {
      this.el.modelInfo.textContent = describeModel(model);
      this.el.steps.max = String(model.timesteps);
      this.stepsBySampler.ddpm = String(model.timesteps);
      if (this.sampler === "ddpm") this.el.steps.value = this.stepsBySampler.ddpm;
      const previous = this.el.label.value;
      const options = [new Option("any", "")];
      (model.class_names?.length ? model.class_names : [...Array(model.num_classes).keys()].map(String)).forEach(
        (name, i) => options.push(new Option(`${i}: ${name}`, String(i))),
      );
      this.el.label.replaceChildren(...options);
      this.el.label.disabled = !model.num_classes;
      if (previous !== "" && Number(previous) < model.num_classes) this.el.label.value = previous;
    }
    this.refreshHints();
    for (const callback of this.onModelChangeCallbacks) callback(model);
  }

  onSamplerChange() {
    const sampler = this.sampler;
    this.el.steps.value = this.stepsBySampler[sampler] ?? String(this.model?.timesteps ?? 1000);
    this.clearFieldError("steps");
    this.refreshHints();
  }

  refreshHints() {
    const model = this.model;
    const sampler = this.sampler;
    const T = model?.timesteps ?? 1000;
    const steps = parseInteger(this.el.steps.value);
    this.el.etaValue.textContent = Number(this.el.eta.value).toFixed(1);
    this.el.guidanceValue.textContent = Number(this.el.guidance.value).toFixed(1);
    this.el.etaField.classList.toggle("disabled", sampler !== "ddim");
    this.el.eta.disabled = sampler !== "ddim";
    this.el.samplerHint.textContent =
      sampler === "ddim"
        ? "DDIM: big deterministic jumps; 50 steps look close to DDPM's 1000."
        : `DDPM: ancestral sampling with fresh noise at every step; the original walks all ${T} steps.`;
    this.el.stepsHint.textContent =
      sampler === "ddim"
        ? `DDIM visits ${Number.isInteger(steps) ? steps : "S"} of the ${T} timesteps.`
        : steps === T
          ? `All ${T} timesteps, as in the DDPM paper.`
          : `${Number.isInteger(steps) ? steps : "S"} of ${T} timesteps (a respaced DDPM schedule).`;

    const conditional = Boolean(model?.num_classes);
    const classChosen = this.el.label.value !== "";
    this.el.guidance.disabled = !conditional || !classChosen || model.guidance === false;
    this.el.guidanceHint.textContent = !conditional
      ? "This model is unconditional: no class, no guidance."
      : model.guidance === false
        ? "This model has no unconditional class: “any” gives each image a random class, and there is no guidance."
        : classChosen
        ? "Guidance w: 1 = the plain conditional model, 0 = ignore the class, more = more typical of the class."
        : "Pick a class to steer the images; guidance then sets how hard.";

    if (this.el.every.value === "off") {
      this.el.everyHint.textContent = "No live frames: the server answers once, with the final images.";
    } else {
      const every = this.el.every.value === "auto" ? autoEvery(Number.isInteger(steps) ? steps : 1) : Number(this.el.every.value);
      const frames = Number.isInteger(steps) ? Math.ceil(steps / every) : "?";
      this.el.everyHint.textContent = `${this.el.every.value === "auto" ? "Auto: " : ""}a frame every ${every === 1 ? "step" : `${every} steps`} (${frames} frames).`;
    }
    this.refreshEstimate();
  }

  /** Remember how fast a model ran, so the next choice of steps shows what it will cost. */
  recordTiming(modelName, steps, n, elapsedMs) {
    if (steps > 0 && n > 0 && elapsedMs > 0) this.msPerStepImage.set(modelName, elapsedMs / (steps * n));
    this.refreshEstimate();
  }

  refreshEstimate() {
    const model = this.model;
    const rate = model && this.msPerStepImage.get(model.name);
    const steps = parseInteger(this.el.steps.value);
    const n = parseInteger(this.el.n.value);
    if (!rate || !Number.isInteger(steps)) {
      this.el.estimate.textContent = "";
      return;
    }
    const ms = rate * steps * n;
    const text = ms < 1000 ? "under a second" : ms < 60000 ? `about ${Math.round(ms / 1000)} s` : `about ${(ms / 60000).toFixed(1)} min`;
    this.el.estimate.textContent = `Estimated time: ${text} (from this server's speed on your last run).`;
  }

  /** Apply settings from the page's address (?model=…&seed=…), ignoring what does not fit. */
  applyLink(search) {
    const params = new URLSearchParams(search);
    if (params.has("model") && this.models.some((m) => m.name === params.get("model"))) {
      this.el.model.value = params.get("model");
      this.onModelChange();
    }
    if (params.get("sampler") === "ddpm" || params.get("sampler") === "ddim") {
      this.form.querySelector(`input[name="sampler"][value="${params.get("sampler")}"]`).checked = true;
      this.onSamplerChange();
    }
    if (params.has("steps")) {
      this.el.steps.value = params.get("steps");
      this.stepsBySampler[this.sampler] = this.el.steps.value;
    }
    if (params.has("eta")) this.el.eta.value = params.get("eta");
    if (params.has("n") && [...this.el.n.options].some((o) => o.value === params.get("n"))) this.el.n.value = params.get("n");
    if (params.has("seed")) this.el.seed.value = params.get("seed");
    if (params.has("label") && [...this.el.label.options].some((o) => o.value === params.get("label"))) {
      this.el.label.value = params.get("label");
    }
    if (params.has("guidance")) this.el.guidance.value = params.get("guidance");
    this.refreshHints();
  }

  /** The address that reproduces a finished run: its settings and the seed it used. */
  static linkFor(request, seed) {
    const params = new URLSearchParams();
    for (const field of LINK_FIELDS) {
      const value = field === "seed" ? seed : request[field];
      if (value == null || (field === "eta" && request.sampler !== "ddim")) continue;
      if (field === "guidance" && request.label == null) continue;
      params.set(field, String(value));
    }
    return `?${params}`;
  }

  values() {
    const data = new FormData(this.form);
    return {
      model: this.el.model.value,
      sampler: this.sampler,
      steps: this.el.steps.value,
      eta: this.el.eta.value,
      n: this.el.n.value,
      seed: this.el.seed.value,
      label: this.el.label.disabled ? "" : this.el.label.value,
      guidance: this.el.guidance.value,
      every: data.get("every"),
    };
  }

  /** Validate; show the problems beside their fields. Returns {request, stream} or null. */
  read() {
    const { request, stream, errors } = validateSettings(this.values(), this.model);
    for (const input of this.form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
    if (errors.length) {
      this.showError(errors.map((e) => e.message).join(" "));
      for (const { field } of errors) document.getElementById(field)?.setAttribute("aria-invalid", "true");
      document.getElementById(errors[0].field)?.focus();
      return null;
    }
    this.showError("");
    return { request, stream };
  }

  showError(text) {
    this.el.error.textContent = text;
    this.el.error.hidden = !text;
  }

  clearFieldError(field) {
    document.getElementById(field)?.removeAttribute("aria-invalid");
  }

  showSeedUsed(seed) {
    this.el.seedUsed.hidden = false;
    this.el.seedUsed.replaceChildren(`Last run used seed ${seed}. `);
    const reuse = document.createElement("button");
    reuse.type = "button";
    reuse.className = "link-button";
    reuse.textContent = "Use it again";
    reuse.addEventListener("click", () => {
      this.el.seed.value = String(seed);
      this.el.seed.focus();
    });
    this.el.seedUsed.append(reuse, " · The page's address now links to this run.");
  }

  useSeed(seed) {
    this.el.seed.value = String(seed);
  }
}
