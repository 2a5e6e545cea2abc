// "Your runs": a table of finished runs and what each cost, for comparing samplers and step counts.
// It lives in sessionStorage (this tab only, bounded), so a reload or Back from another page keeps it.

import { describeParams } from "./params.js";

const MAX_ROWS = 12;
const RUNS_KEY = "ddpm-demo.runs";
const MAX_STORED_CHARS = 1_500_000; // of this page's share of sessionStorage (about 5 MB a site)

/** `value` as JSON under `key` in sessionStorage, unless it is over `maxChars`; false if not stored. */
export function saveSession(key, value, maxChars = MAX_STORED_CHARS) {
  try {
    const text = JSON.stringify(value);
    if (text.length > maxChars) {
      sessionStorage.removeItem(key);
      return false;
    }
    sessionStorage.setItem(key, text);
    return true;
  } catch {
    return false; // a full or blocked storage costs only what a reload would have kept
  }
}

export function loadSession(key) {
  try {
    return JSON.parse(sessionStorage.getItem(key) ?? "null");
  } catch {
    return null;
  }
}

/** What a table row or a restored view needs of a request: its starting image and mask can be large. */
export function storedRequest({ init_image, mask, branch, ...settings }) {
  return { ...settings, ...(branch ? { branch: { at_step: branch.at_step } } : {}) };
}

export class RunHistory {
  /** samplerInfo(name): the sampler's entry of GET /config, for its title and parameters. */
  constructor(table, { onReuseSeed, samplerInfo = () => null } = {}) {
    this.body = table.tBodies[0];
    this.onReuseSeed = onReuseSeed;
    this.samplerInfo = samplerInfo;
    this.entries = []; // newest first, as stored
  }

  /** The rows of this tab's earlier visits to the page (call once the samplers are known). */
  restore() {
    const entries = loadSession(RUNS_KEY);
    if (!Array.isArray(entries)) return;
    for (const entry of entries.slice().reverse()) this.show(entry);
    this.entries = entries;
  }

  /**
   * sideBySide: the run shared the server with the other side of the comparison, so its time is not
   * what it takes alone; its times are marked as such.
   */
  add(request, result, model, { sideBySide = false } = {}) {
    const className = request.label == null ? "any" : (model?.class_names?.[request.label] ?? String(request.label));
    const entry = {
      request: storedRequest(request),
      result: { seed: result.seed, elapsed_ms: result.elapsed_ms, grid: result.grid },
      className,
      sideBySide,
    };
    this.show(entry);
    this.entries = [entry, ...this.entries].slice(0, MAX_ROWS);
    // the oldest rows go first when the thumbnails of large images do not fit
    let kept = this.entries.length;
    while (kept > 0 && !saveSession(RUNS_KEY, this.entries.slice(0, kept))) kept -= 1;
  }

  show({ request, result, className, sideBySide }) {
    const sampler = this.samplerInfo(request.sampler);
    if (!this.body.querySelector("tr:not(.empty)")) this.body.replaceChildren();
    const row = this.body.insertRow(0);
    const seed = result.seed;
    const ms = result.elapsed_ms;
    const shared = sideBySide ? " (side by side)" : "";
    const cells = [
      request.model,
      sampler?.title ?? request.sampler,
      String(request.steps),
      describeParams(sampler, request) || "defaults",
      String(request.n),
      request.label == null ? "any" : request.guidance == null ? className : `${className} (w = ${request.guidance})`,
      null, // seed: a button
      ms == null ? "–" : `${(ms / 1000).toFixed(2)} s${shared}`,
      ms == null ? "–" : `${(ms / request.steps).toFixed(1)} ms${shared}`,
      null, // thumbnail
    ];
    cells.forEach((text, i) => {
      const cell = row.insertCell();
      if (text != null) cell.textContent = text;
      if (i === 6) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "link-button";
        button.textContent = String(seed);
        button.title = "Use this seed for the next run";
        button.addEventListener("click", () => this.onReuseSeed?.(seed));
        cell.append(button);
      }
      if (i === 9) {
        const img = document.createElement("img");
        img.className = "history-thumb pixelated";
        img.src = `data:image/png;base64,${result.grid}`;
        img.alt = `the ${request.n} images of this run`;
        cell.append(img);
      }
    });
    if (sideBySide) {
      row.classList.add("shared-time");
      row.title = "Ran at the same time as the other side of the comparison: both shared the server, so each took longer than alone.";
    }
    while (this.body.rows.length > MAX_ROWS) this.body.deleteRow(-1);
  }
}
