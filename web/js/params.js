// A sampler's parameters and the request's fields, as GET /config describes them ({name, type, default,
// minimum, maximum, choices, description}; a request field also has a title, whether it is nullable and
// an exclusive_minimum): the form controls built from that description, and the checks of what a visitor
// typed. Nothing here knows any sampler or field by name: one added to the server's tables gets its
// controls and its checks from this file without a change to it.

/** The parameter's value written as a form control holds it: a string, or a boolean for a checkbox. */
export function formValue(param, value) {
  return param.type === "boolean" ? Boolean(value) : String(value);
}

export function parseInteger(text) {
  const trimmed = String(text ?? "").trim();
  return /^[+-]?\d+$/.test(trimmed) ? Number(trimmed) : Number.NaN;
}

export function parseNumber(text) {
  const trimmed = String(text ?? "").trim();
  return trimmed === "" ? Number.NaN : Number(trimmed);
}

/** What is allowed, in words: "from 0 to 1", "a whole number from 1 to 50", "one of 1, 2, 3", "above 0 and at most 1". */
export function allowed(param) {
  if (param.choices) return `one of ${param.choices.join(", ")}`;
  const whole = param.type === "integer" ? "a whole number " : "";
  const low = param.minimum ?? null;
  const high = param.maximum ?? null;
  const empty = param.nullable ? ", or empty" : "";
  if (param.exclusive_minimum != null) return `above ${param.exclusive_minimum}${high !== null ? ` and at most ${high}` : ""}${empty}`;
  if (low !== null && high !== null) return `${whole}from ${low} to ${high}${empty}`;
  if (low !== null) return `${whole}at least ${low}${empty}`;
  if (high !== null) return `${whole}at most ${high}${empty}`;
  return `${whole || (param.type === "number" ? "a number" : "any text")}${empty}`.trim();
}

/**
 * A form value → {value} in the request's JSON type, or {error} saying what is allowed. An empty value
 * of a nullable field is null (the server's default).
 */
export function parseParam(param, raw) {
  let value;
  if (param.nullable && String(raw ?? "").trim() === "") return { value: null };
  if (param.type === "boolean") value = raw === true || raw === "true";
  else if (param.type === "integer") value = parseInteger(raw);
  else if (param.type === "number") value = parseNumber(raw);
  else value = String(raw ?? "");
  const bad = { error: `${param.title ?? param.name} must be ${allowed(param)}.` };
  if ((param.type === "integer" || param.type === "number") && !Number.isFinite(value)) return bad;
  if (param.choices && !param.choices.includes(value)) return bad;
  if (param.minimum != null && value < param.minimum) return bad;
  if (param.exclusive_minimum != null && value <= param.exclusive_minimum) return bad;
  if (param.maximum != null && value > param.maximum) return bad;
  return { value };
}

/** The parameters a visitor set that differ from the defaults, in words ("eta = 0.5"); "" if none. */
export function describeParams(sampler, request) {
  return (sampler?.params ?? [])
    .filter((p) => request[p.name] !== undefined && request[p.name] !== p.default)
    .map((p) => `${p.name} = ${request[p.name]}`)
    .join(", ");
}

/**
 * The controls of `sampler`'s parameters, built into `container` (replacing what was there).
 * `values` (name → form value) fills them, else each takes its default. The names in `fixed` are shown
 * but cannot be changed (a distilled model takes only its own value). `compact` leaves out the
 * one-line descriptions (they become the controls' tooltips). Returns {read(): name → form value}.
 */
export function buildParamFields(
  container,
  sampler,
  { idPrefix = "param-", values = {}, fixed = [], compact = false, onChange } = {},
) {
  const fields = [];
  const controls = new Map();
  for (const param of sampler?.params ?? []) {
    const id = `${idPrefix}${param.name}`;
    const field = document.createElement("div");
    field.className = "field param-field";
    field.dataset.param = param.name;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = param.title ?? param.name;
    const value = values[param.name] ?? formValue(param, param.default ?? "");
    let control;
    if (param.type === "boolean") {
      control = document.createElement("input");
      control.type = "checkbox";
      control.checked = value === true || value === "true";
      field.classList.add("param-checkbox");
    } else if (param.choices) {
      control = document.createElement("select");
      control.append(...param.choices.map((choice) => new Option(String(choice), String(choice))));
      control.value = String(value);
    } else if (param.type === "number" && param.minimum != null && param.maximum != null) {
      control = document.createElement("input");
      control.type = "range";
      control.min = String(param.minimum);
      control.max = String(param.maximum);
      control.step = String((param.maximum - param.minimum) / 20);
      control.value = String(value);
      const shown = document.createElement("output");
      shown.htmlFor = id;
      const show = () => {
        shown.textContent = Number(control.value).toFixed(2).replace(/\.?0+$/, "");
      };
      control.addEventListener("input", show);
      show();
      label.append(" ", shown);
    } else {
      control = document.createElement("input");
      control.type = param.type === "string" ? "text" : "number";
      if (param.type !== "string") {
        control.inputMode = param.type === "integer" ? "numeric" : "decimal";
        control.step = param.type === "integer" ? "1" : "any";
        if (param.minimum != null) control.min = String(param.minimum);
        if (param.maximum != null) control.max = String(param.maximum);
      }
      control.value = String(value);
    }
    control.id = id;
    control.name = param.name;
    control.title = param.description;
    if (fixed.includes(param.name)) {
      control.disabled = true;
      control.title += " (fixed: the model was distilled for this value)";
    }
    if (onChange) control.addEventListener(param.type === "boolean" ? "change" : "input", onChange);
    if (param.type === "boolean") field.append(control, label);
    else field.append(label, control);
    if (!compact) {
      const hint = document.createElement("p");
      hint.className = "hint";
      hint.id = `${id}-hint`;
      hint.textContent = param.description;
      control.setAttribute("aria-describedby", hint.id);
      field.append(hint);
    }
    controls.set(param.name, control);
    fields.push(field);
  }
  container.replaceChildren(...fields);
  container.hidden = fields.length === 0;
  return {
    read() {
      const out = {};
      for (const [name, control] of controls) out[name] = control.type === "checkbox" ? control.checked : control.value;
      return out;
    },
  };
}
