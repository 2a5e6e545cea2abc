// The generate form: filled from GET /config (the samplers and their parameters, the request's fields
// and their rules, the server's limits and defaults) and GET /models, keeping its hints honest, and
// turning it into a request of the contract. No sampler, limit, default or check of a field is written
// here: they all come from the server. A field the form has no control of its own for gets one built
// from its rules (`ownFields`). `validateSettings`, `samplerSteps` and `autoEvery` are pure, so tests can call them.

import { formatDuration, plural, rowsOf, SpeedBook } from "./estimate.js";
import { buildParamFields, describeParams, formValue, parseInteger, parseParam } from "./params.js";
import { base64Bytes } from "./start-image.js";

// The settings a link can carry (?model=mnist&sampler=ddim&steps=50&seed=7…), so a run can be shared;
// the fields built from their rules and the chosen sampler's own parameters (eta=0.5) come after them.
const LINK_FIELDS = ["model", "sampler", "steps", "n", "seed", "label", "guidance", "interpolate_to"];
// The request fields with a control of their own on the page, or that the page sets itself.
const OWN_CONTROLS = [...LINK_FIELDS, "init_image", "strength", "mask", "branch", "every", "preview_size"];

const ESTIMATE_SOURCES = {
  server: "the server's measured speed for this model, kept up to date as it samples",
  measured: "this server's speed on your earlier runs of this model",
};

/** About 100 frames per run at most: every step for DDIM-50, every 10th for DDPM-1000. */
export function autoEvery(steps) {
  return Math.max(1, Math.ceil(steps / 100));
}

export function randomSeed() {
  const buf = new Uint32Array(1);
  crypto.getRandomValues(buf);
  return buf[0]; // 0 … 2^32 − 1, like the seeds the server draws itself
}

export function findSampler(config, name) {
  return config?.samplers.find((s) => s.name === name) ?? null;
}

/** The sampler a request for `model` gets when it names none: the model's own, else the server's. */
export function defaultSamplerName(config, model) {
  return model?.default_sampler ?? config.defaults.sampler;
}

/**
 * The rule of request field `name` (GET /config's request.fields) with the bounds `model` and `sampler`
 * (a name or a sampler) set for it; the loosest of the server's models for a model it does not list.
 */
export function fieldRule(config, name, model, sampler) {
  const rule = config.request.fields.find((f) => f.name === name);
  return { ...rule, ...config.request.models[model?.name]?.[sampler?.name ?? sampler]?.[name] };
}

/** The request fields the form has no control of its own for, with a control built from their rules. */
export function ownFields(config) {
  const scalar = ["integer", "number", "boolean", "string"];
  return config.request.fields.filter((f) => !OWN_CONTROLS.includes(f.name) && scalar.includes(f.type));
}

/** The steps the server gives `sampler` when a request names no steps (its rule's default for the model). */
export function samplerSteps(sampler, model, config) {
  return fieldRule(config, "steps", model, sampler).default ?? sampler.default_steps ?? model?.timesteps ?? config.limits.max_steps;
}

/**
 * What a distilled model fixes (GET /models: `distilled`, its `default_sampler`, `default_steps` and
 * that sampler's `sampler_params`): the server takes no other sampler, steps or values of those
 * parameters for it. Null for a model that takes anything the sampler table allows.
 */
export function modelFixes(model) {
  if (!model?.distilled) return null;
  const sampler = model.default_sampler;
  return { sampler, steps: model.default_steps, params: model.sampler_params?.[sampler] ?? {} };
}

/**
 * The parameter values `model`'s files state for `sampler` (GET /models' sampler_params), as form values,
 * and the names a distilled model fixes: {values, fixed}. They replace the table's defaults for it.
 */
export function modelParams(model, sampler) {
  const own = model?.sampler_params?.[sampler?.name] ?? {};
  const values = {};
  for (const param of sampler?.params ?? []) if (param.name in own) values[param.name] = formValue(param, own[param.name]);
  return { values, fixed: modelFixes(model) ? Object.keys(values) : [] };
}

/** Whether `model` can take `sampler` at all: any sampler, or a student's own only. */
export function samplerOffered(model, sampler) {
  const fixes = modelFixes(model);
  return !fixes || fixes.sampler === sampler.name;
}

/** "mnist-fast was distilled for DDIM with 2 steps only", or null for a model that is not distilled. */
export function fixedNote(model, config) {
  const fixes = modelFixes(model);
  if (!fixes) return null;
  const title = findSampler(config, fixes.sampler)?.title ?? fixes.sampler;
  return `${model.name} was distilled for ${title} with ${plural(fixes.steps, "step")} only`;
}

function fixedValues({ values, fixed }) {
  return Object.fromEntries(fixed.map((name) => [name, values[name]]));
}

/** The largest step count the form offers: the model's T and the server's limit (the sampler's rule). */
export function maxSteps(model, config, sampler) {
  return fieldRule(config, "steps", model, sampler).maximum;
}

/**
 * Form values (strings, as inputs hold them; `params` name → value of the sampler's controls) + the
 * chosen model + the server's /config → {request, stream, errors}. `errors` is a list of
 * {field, message}; when it is not empty, nothing should be sent.
 */
export function validateSettings(values, model, config) {
  const errors = [];
  const request = { model: model?.name ?? values.model, sampler: values.sampler };
  const sampler = findSampler(config, values.sampler);
  // a field's value, checked by its rule; a problem is reported on `field`, the control that holds it
  const check = (name, raw, field = name) => {
    const { value, error } = parseParam(fieldRule(config, name, model, sampler), raw);
    if (error) errors.push({ field, message: error });
    return value;
  };

  if (!model) errors.push({ field: "model", message: "Choose a model (the server has none loaded yet)." });
  if (!sampler) errors.push({ field: "sampler", message: "Choose one of the server's samplers." });

  request.steps = check("steps", values.steps);
  const fixes = modelFixes(model);
  if (fixes && sampler && request.steps !== undefined && (sampler.name !== fixes.sampler || request.steps !== fixes.steps)) {
    errors.push({ field: sampler.name !== fixes.sampler ? "sampler" : "steps", message: `${fixedNote(model, config)}.` });
  }

  for (const param of sampler?.params ?? []) {
    const { value, error } = parseParam(param, values.params?.[param.name] ?? formValue(param, param.default));
    if (error) errors.push({ field: `param-${param.name}`, message: error });
    else if (fixes?.sampler === sampler.name && param.name in fixes.params && value !== fixes.params[param.name]) {
      errors.push({ field: `param-${param.name}`, message: `${model.name} was distilled for ${param.name} = ${fixes.params[param.name]} only.` });
    }
    request[param.name] = value;
  }

  request.n = check("n", values.n);
  request.seed = check("seed", values.seed);
  request.label = check("label", values.label);
  const guidance = check("guidance", values.guidance);
  // a class-conditional model without an unconditional class (a diffusers one) takes no guidance
  request.guidance = model?.guidance === false ? null : guidance;

  // A starting image (SDEdit; with a mask, inpainting), as start-image.js holds it.
  if (values.start?.init_image !== undefined) {
    const { init_image: image, strength, mask } = values.start;
    if (!image) errors.push({ field: "use-start-image", message: "Choose the image to start from." });
    else if (base64Bytes(image) > config.limits.max_init_image_bytes) {
      errors.push({ field: "use-start-image", message: `The starting image is over the server's ${config.limits.max_init_image_bytes} bytes.` });
    }
    Object.assign(request, { init_image: image, strength: check("strength", strength) }, mask ? { mask } : {});
  }

  if (String(values.interpolate_to ?? "").trim() !== "") {
    request.interpolate_to = check("interpolate_to", values.interpolate_to);
    if (request.seed == null) errors.push({ field: "seed", message: "Interpolation needs a seed to start from." });
    if (request.n < 2) errors.push({ field: "n", message: "Interpolation needs at least 2 images (a row from one seed to the other)." });
    if (sampler && drawsNoise(sampler, request)) {
      const which = typeof sampler.stochastic === "string" ? ` with ${sampler.stochastic} = ${request[sampler.stochastic]}` : "";
      const message = `Interpolation needs a deterministic sampler, and ${sampler.title}${which} draws fresh noise at every step: choose ${deterministicChoices(config)}.`;
      errors.push({ field: "interpolate_to", message });
    }
  }

  // the fields with controls built from their rules: sent when set, else the server's default holds
  for (const rule of ownFields(config)) {
    const raw = values.fields?.[rule.name];
    if (raw !== undefined && raw !== "" && raw !== formValue(rule, rule.default ?? "")) request[rule.name] = check(rule.name, raw);
  }

  const stream = values.every !== "off";
  if (stream) {
    const every = values.every === "auto" || values.every == null ? autoEvery(request.steps || 1) : values.every;
    request.every = check("every", every);
  }
  return { request, stream, errors };
}

/** Whether a run of `sampler` with the request's parameters draws noise after x_T (GET /config's `stochastic`). */
function drawsNoise(sampler, request) {
  return typeof sampler.stochastic === "string" ? request[sampler.stochastic] > 0 : sampler.stochastic === true;
}

/** "DDIM with eta = 0, DPM-Solver++(2M) or UniPC": the server's samplers that can run without fresh noise. */
function deterministicChoices(config) {
  const names = config.samplers
    .filter((s) => s.stochastic !== true)
    .map((s) => (typeof s.stochastic === "string" ? `${s.title} with ${s.stochastic} = 0` : s.title));
  return names.length > 1 ? `${names.slice(0, -1).join(", ")} or ${names.at(-1)}` : names[0];
}

/** A request in words: "DDIM, 50 steps" or "UniPC, 8 steps, order = 3". */
export function describeRun(request, config) {
  const sampler = findSampler(config, request.sampler);
  const params = describeParams(sampler, request);
  return `${sampler?.title ?? request.sampler}, ${plural(request.steps, "step")}${params ? `, ${params}` : ""}`;
}

/** How many images a request may ask for: square grids up to the server's limit, and the limit itself. */
export function imageCounts(maxN) {
  const counts = [];
  for (let side = 1; side * side <= maxN; side += 1) counts.push(side * side);
  if (counts.at(-1) !== maxN) counts.push(maxN);
  return counts;
}

/** Fill a <select> with the server's samplers, by title, and a tooltip of each one's description. */
export function fillSamplerSelect(select, config) {
  select.replaceChildren(
    ...config.samplers.map((s) => {
      const option = new Option(s.title, s.name);
      option.title = s.description;
      return option;
    }),
  );
}

/**
 * Offer only what `model` can do: the samplers it cannot take are greyed out in `sampler`, and the steps
 * of a distilled model are shown but read-only (`steps.max` is the model's largest step count either way).
 */
export function offerFor(model, config, { sampler, steps }) {
  for (const option of sampler.options) option.disabled = !samplerOffered(model, { name: option.value });
  const fixes = modelFixes(model);
  steps.readOnly = Boolean(fixes);
  steps.max = String(fixes ? fixes.steps : maxSteps(model, config, sampler.value));
  steps.min = String(fixes ? fixes.steps : 1);
}

/** A model as the model lists name it: "mnist-fast (distilled: 2 steps, mnist, 28×28)". */
export function modelLabel(m) {
  const size = `${m.image_size}×${m.image_size}`;
  // a distilled student says what it is: its own few steps are all it takes
  const what = m.distilled ? `distilled: ${plural(m.default_steps, "step")}, ` : "";
  return m.dataset === m.name ? `${m.name} (${what}${size})` : `${m.name} (${what}${m.dataset}, ${size})`;
}

export function describeModel(model, config) {
  const colour = model.channels === 1 ? "grayscale" : model.channels === 3 ? "colour" : `${model.channels} channels`;
  const classes = model.num_classes ? `${model.num_classes} classes` : "unconditional";
  const facts = `${model.dataset} · ${model.image_size}×${model.image_size} ${colour} · ${classes} · ${model.schedule} schedule, T = ${model.timesteps} · on ${model.device}`;
  if (!modelFixes(model)) return facts;
  // a student is not its teacher: say what it is before the facts they share
  const teacher = model.teacher ? ` of ${model.teacher}` : "";
  return `A distilled student${teacher}: trained to make in ${plural(model.default_steps, "step")} what its teacher makes in many (see “Distilled students” below), so its sampler and steps are fixed. ${facts}`;
}

/** The DOM side of the form. */
export class Controls {
  constructor(form) {
    this.form = form;
    this.models = [];
    this.config = null;
    const $ = (id) => document.getElementById(id);
    this.el = {
      model: $("model"),
      modelInfo: $("model-info"),
      sampler: $("sampler"),
      samplerHint: $("sampler-hint"),
      params: $("sampler-params"),
      fields: $("request-fields"),
      steps: $("steps"),
      stepsHint: $("steps-hint"),
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
      linkNotice: $("link-notice"),
      interpolate: $("interpolate_to"),
      interpolateField: $("interpolate-field"),
    };
    // Each sampler remembers its own steps and parameters: DDIM's 50 should not become DDPM's default.
    this.stepsBySampler = new Map();
    this.paramsBySampler = new Map();
    this.paramFields = null;
    this.fieldControls = null; // those of the request's fields built from their rules
    this.shownSampler = null;
    this.speeds = new SpeedBook();

    this.el.guidance.addEventListener("input", () => this.refreshHints());
    this.el.label.addEventListener("change", () => this.refreshHints());
    this.el.every.addEventListener("change", () => this.refreshHints());
    this.el.n.addEventListener("change", () => this.refreshHints());
    this.el.steps.addEventListener("input", () => {
      this.stepsBySampler.set(this.sampler, this.el.steps.value);
      this.clearFieldError("steps");
      this.refreshHints();
    });
    this.el.seed.addEventListener("input", () => this.clearFieldError("seed"));
    this.el.interpolate.addEventListener("input", () => this.clearFieldError("interpolate_to"));
    this.el.sampler.addEventListener("change", () => this.onSamplerChange());
    this.el.seedRandom.addEventListener("click", () => {
      this.el.seed.value = String(randomSeed());
      this.clearFieldError("seed");
    });
    this.el.model.addEventListener("change", () => this.onModelChange());
    this.onModelChangeCallbacks = [];
  }

  get sampler() {
    return this.el.sampler.value;
  }

  get samplerInfo() {
    return findSampler(this.config, this.sampler);
  }

  get model() {
    return this.models.find((m) => m.name === this.el.model.value) ?? null;
  }

  /** The server's GET /config: the samplers, the limits and the defaults the form offers. */
  setConfig(config) {
    this.config = config;
    const { limits, defaults } = config;
    fillSamplerSelect(this.el.sampler, config);
    this.el.sampler.value = defaults.sampler;
    this.el.n.replaceChildren(...imageCounts(limits.max_n).map((n) => new Option(String(n), String(n))));
    this.el.n.value = String(defaults.n);
    this.el.guidance.max = String(limits.max_guidance);
    this.el.guidance.value = String(defaults.guidance);
    // A server that takes starting images also takes branches and interpolation (one release of the API).
    this.el.interpolateField.hidden = limits.max_init_image_bytes == null;
    this.fieldControls = buildParamFields(this.el.fields, { params: ownFields(config) }, {
      idPrefix: "",
      onChange: (event) => {
        this.clearFieldError(event.target.id);
        this.refreshHints();
      },
    });
    this.showSampler();
  }

  setModels(models) {
    this.models = models;
    const options = models.map((m) => new Option(modelLabel(m), m.name));
    this.el.model.replaceChildren(...options);
    if (models.some((m) => m.name === this.config.defaults.model)) this.el.model.value = this.config.defaults.model;
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
      this.el.modelInfo.textContent = describeModel(model, this.config);
      offerFor(model, this.config, { sampler: this.el.sampler, steps: this.el.steps });
      // A model with a sampler of its own (a distilled one) gets it, and leaving it restores the
      // server's; step counts that depend on the model (all T, its own default) start again from it.
      const ownDefaults = Boolean(model.default_sampler || this.lastModel?.default_sampler);
      for (const sampler of this.config.samplers) {
        if (ownDefaults || sampler.default_steps == null) this.stepsBySampler.delete(sampler.name);
      }
      // parameter values set for another model's defaults start again from this one's
      if (JSON.stringify(model.sampler_params) !== JSON.stringify(this.lastModel?.sampler_params)) {
        this.paramsBySampler.clear();
        this.paramFields = null; // the controls on screen hold the last model's values: not to be remembered
      }
      if (ownDefaults) this.el.sampler.value = defaultSamplerName(this.config, model);
      this.lastModel = model;
      this.showSampler();
      const previous = this.el.label.value;
      const options = [new Option("any", "")];
      (model.class_names?.length ? model.class_names : [...Array(model.num_classes).keys()].map(String)).forEach(
        // digits are their own names: "7", not "7: 7"
        (name, i) => options.push(new Option(name === String(i) ? name : `${i}: ${name}`, String(i))),
      );
      this.el.label.replaceChildren(...options);
      this.el.label.disabled = !model.num_classes;
      if (previous !== "" && Number(previous) < model.num_classes) this.el.label.value = previous;
    }
    this.refreshHints();
    for (const callback of this.onModelChangeCallbacks) callback(model);
  }

  onSamplerChange() {
    if (this.model) offerFor(this.model, this.config, { sampler: this.el.sampler, steps: this.el.steps });
    this.showSampler();
    this.clearFieldError("steps");
    this.refreshHints();
  }

  /** The chosen sampler's steps and parameter controls, as it last had them or at its defaults. */
  showSampler() {
    if (this.shownSampler && this.paramFields) this.paramsBySampler.set(this.shownSampler, this.paramFields.read());
    const sampler = this.samplerInfo;
    this.shownSampler = sampler?.name ?? null;
    if (!sampler) return;
    const fixed = modelFixes(this.model)?.steps;
    this.el.steps.value = fixed ?? this.stepsBySampler.get(sampler.name) ?? String(samplerSteps(sampler, this.model, this.config));
    const own = modelParams(this.model, sampler);
    this.paramFields = buildParamFields(this.el.params, sampler, {
      // what the visitor set for this sampler, over the model's own values, except those a distilled model fixes
      values: { ...own.values, ...this.paramsBySampler.get(sampler.name), ...fixedValues(own) },
      fixed: own.fixed,
      onChange: (event) => {
        this.clearFieldError(event.target.id);
        this.refreshHints();
      },
    });
  }

  refreshHints() {
    const model = this.model;
    const sampler = this.samplerInfo;
    const T = model?.timesteps;
    const steps = parseInteger(this.el.steps.value);
    this.el.guidanceValue.textContent = Number(this.el.guidance.value).toFixed(1);
    // a student's sampler is not the one the table describes: DDIM-2 of a student is not DDIM-2 of its teacher
    const fixed = fixedNote(model, this.config);
    this.el.samplerHint.textContent = fixed
      ? `${fixed}: the other samplers and step counts are greyed out. ${sampler?.title ?? ""} is how its steps are taken.`
      : (sampler?.description ?? "");
    const conditional = Boolean(model?.num_classes);
    const classChosen = this.el.label.value !== "";
    const most = maxSteps(model, this.config, sampler);
    if (Number.isInteger(steps) && steps >= 1 && steps <= most && sampler) {
      const nfe = steps * sampler.evals_per_step;
      const rows = conditional && classChosen && Number(this.el.guidance.value) !== 1 ? ", each of two UNet rows an image (guidance)" : "";
      const of = T ? ` of the ${T} timesteps` : "";
      this.el.stepsHint.textContent = `${plural(steps, "step")}${of}: ${plural(nfe, "model evaluation")}${rows}.`;
    } else {
      this.el.stepsHint.textContent = `Steps: a whole number from 1 to ${most}.`;
    }

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
      const frames = Number.isInteger(steps) ? plural(Math.ceil(steps / every), "frame") : "? frames";
      this.el.everyHint.textContent = `${this.el.every.value === "auto" ? "Auto: " : ""}a frame every ${every === 1 ? "step" : `${every} steps`} (${frames}).`;
    }
    this.refreshEstimate();
  }

  /** A run that had the server to itself: how fast its model ran, for the estimates of the next ones. */
  recordTiming(request, elapsedMs) {
    const model = this.models.find((m) => m.name === request.model);
    this.speeds.record(request.model, rowsOf(request, findSampler(this.config, request.sampler), model), elapsedMs);
    this.refreshEstimate();
  }

  /** The server's figures after a run (GET /models): its time per row follows what its sampling loop measures. */
  updateSpeeds(models) {
    for (const fresh of models) {
      const model = this.models.find((m) => m.name === fresh.name);
      if (model) model.seconds_per_row = fresh.seconds_per_row;
    }
    this.refreshEstimate();
  }

  /** {seconds, source} the request should take on the server, or null when this page cannot tell yet. */
  estimateFor(request) {
    const model = this.models.find((m) => m.name === request.model);
    return this.speeds.estimate(request, findSampler(this.config, request.sampler), model);
  }

  refreshEstimate() {
    const { request, errors } = validateSettings(this.values(), this.model, this.config);
    const estimate = errors.length ? null : this.estimateFor(request);
    this.el.estimate.textContent = estimate
      ? `Estimated time: ${formatDuration(estimate.seconds)} of sampling (${ESTIMATE_SOURCES[estimate.source]}).`
      : "";
    this.el.estimate.dataset.seconds = estimate ? String(estimate.seconds) : ""; // for tests: the unrounded figure
  }

  /**
   * Apply settings from the page's address (?model=…&seed=…). What does not fit is left at what the
   * form had and listed in the link notice, so a mistyped link does not quietly give other images.
   */
  applyLink(search) {
    const params = new URLSearchParams(search);
    const ignored = [];
    const offered = (select, name) => {
      if (!params.has(name)) return false;
      if ([...select.options].some((o) => o.value === params.get(name) && !o.disabled)) {
        select.value = params.get(name);
        return true;
      }
      ignored.push(`${name}=${params.get(name)} (not offered here)`);
      return false;
    };
    if (offered(this.el.model, "model")) this.onModelChange();
    offered(this.el.sampler, "sampler");
    this.onSamplerChange();
    offered(this.el.n, "n");
    offered(this.el.label, "label");
    // Typed values and the sampler's parameters: checked as the form checks them before they are
    // put in (a slider would silently clamp eta=3 to its maximum).
    const sampler = this.samplerInfo;
    const typed = { steps: this.el.steps, seed: this.el.seed, guidance: this.el.guidance, interpolate_to: this.el.interpolate };
    const linked = this.values();
    for (const name of Object.keys(typed)) if (params.has(name)) linked[name] = params.get(name);
    const ruled = ownFields(this.config).filter((f) => params.has(f.name));
    for (const f of ruled) linked.fields[f.name] = formValue(f, params.get(f.name));
    for (const p of sampler.params) if (params.has(p.name)) linked.params[p.name] = formValue(p, params.get(p.name));
    const refused = new Map();
    for (const { field, message } of validateSettings(linked, this.model, this.config).errors) {
      const name = field.replace(/^param-/, "");
      if (params.has(name)) refused.set(name, message.replace(/\.$/, ""));
    }
    for (const [name, message] of refused) ignored.push(`${name}=${params.get(name)} (${message})`);
    for (const [name, input] of Object.entries(typed)) if (params.has(name) && !refused.has(name)) input.value = linked[name];
    for (const f of ruled.filter((f) => !refused.has(f.name))) {
      const control = document.getElementById(f.name);
      if (control.type === "checkbox") control.checked = linked.fields[f.name];
      else control.value = linked.fields[f.name];
    }
    const accepted = sampler.params.filter((p) => !refused.has(p.name));
    this.paramsBySampler.set(sampler.name, Object.fromEntries(accepted.map((p) => [p.name, linked.params[p.name]])));
    this.stepsBySampler.set(sampler.name, this.el.steps.value);
    this.shownSampler = null; // what the controls hold now is what the link made of them
    this.showSampler();
    const settings = new Set([...LINK_FIELDS, ...ownFields(this.config).map((f) => f.name), ...sampler.params.map((p) => p.name)]);
    for (const name of new Set(params.keys())) if (!settings.has(name)) ignored.push(`${name} (not a setting here)`);
    this.el.linkNotice.textContent = ignored.length ? `From the link, ignored: ${ignored.join("; ")}.` : "";
    this.refreshHints();
  }

  /** The address that reproduces a finished run: its settings, its sampler's parameters and its seed. */
  linkFor(request, seed) {
    const params = new URLSearchParams();
    const samplerParams = findSampler(this.config, request.sampler)?.params.map((p) => p.name) ?? [];
    for (const field of [...LINK_FIELDS, ...ownFields(this.config).map((f) => f.name), ...samplerParams]) {
      const value = field === "seed" ? seed : request[field];
      if (value == null) continue;
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
      params: this.paramFields?.read() ?? {},
      fields: this.fieldControls?.read() ?? {},
      n: this.el.n.value,
      seed: this.el.seed.value,
      label: this.el.label.disabled ? "" : this.el.label.value,
      guidance: this.el.guidance.value,
      every: data.get("every"),
      interpolate_to: this.el.interpolateField.hidden ? "" : this.el.interpolate.value,
      start: this.startImage?.values() ?? {},
    };
  }

  /** Validate; show the problems beside their fields. Returns {request, stream} or null. */
  read() {
    const { request, stream, errors } = validateSettings(this.values(), this.model, this.config);
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
