// "Your runs": a table of finished runs and what each cost, for comparing samplers and step counts.

import { describeParams } from "./params.js";

const MAX_ROWS = 12;

export class RunHistory {
  /** samplerInfo(name): the sampler's entry of GET /config, for its title and parameters. */
  constructor(table, { onReuseSeed, samplerInfo = () => null } = {}) {
    this.body = table.tBodies[0];
    this.onReuseSeed = onReuseSeed;
    this.samplerInfo = samplerInfo;
    this.count = 0;
  }

  /**
   * sideBySide: the run shared the server with the other side of the comparison, so its time is not
   * what it takes alone; its times are marked as such.
   */
  add(request, result, model, { sideBySide = false } = {}) {
    const sampler = this.samplerInfo(request.sampler);
    if (this.count === 0) this.body.replaceChildren();
    this.count += 1;
    const row = this.body.insertRow(0);
    const seed = result.seed;
    const ms = result.elapsed_ms;
    const shared = sideBySide ? " (side by side)" : "";
    const className = request.label == null ? "any" : (model?.class_names?.[request.label] ?? String(request.label));
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
