// The forward-process section: pick a clean image x0 (a typed character, a drawing, or one the
// model just generated), slide t, and see q(x_t | x0) beside the sampler's own x_t at that t.

import { getSchedule } from "./api.js";
import { alphasCumprodByName, gaussianNoise, noiseImage, noiseLevels, qSample } from "./forward.js";
import { decodePng, drawCrisp, drawGridCell, gridLayout } from "./pixels.js";

const PAD_PIXELS = 224; // the drawing pad works at about this many pixels a side, then is averaged down

export class ForwardView {
  constructor() {
    const $ = (id) => document.getElementById(id);
    this.el = {
      x0: $("forward-x0"),
      xt: $("forward-xt"),
      eps: $("forward-eps"),
      reverseFigure: $("reverse-figure"),
      reverse: $("reverse-xt"),
      reverseCaption: $("reverse-caption"),
      t: $("forward-t"),
      tValue: $("forward-t-value"),
      play: $("forward-play"),
      renoise: $("forward-renoise"),
      numbers: $("forward-numbers"),
      plot: $("schedule-plot"),
      glyph: $("glyph-text"),
      pad: $("draw-pad"),
      padClear: $("draw-clear"),
      picker: $("generated-picker"),
      generatedHint: $("generated-hint"),
      generatedRadio: $("source-generated"),
    };
    this.size = 28;
    this.channels = 1;
    this.alphasCumprod = null;
    this.scheduleNote = "";
    this.epsSeed = 1;
    this.x0 = null; // ImageData, size × size
    this.generated = null; // {images, frames, n, imageSize, picked}
    this.scheduleCache = new Map();

    for (const radio of document.querySelectorAll('input[name="forward-source"]')) {
      radio.addEventListener("change", () => this.onSourceChange());
    }
    this.el.glyph.addEventListener("input", () => this.onSourceChange());
    this.el.t.addEventListener("input", () => this.render());
    this.el.renoise.addEventListener("click", () => {
      this.epsSeed = (this.epsSeed * 1103515245 + 12345) >>> 0;
      this.eps = null;
      this.render();
    });
    this.el.play.addEventListener("click", () => this.togglePlay());
    this.el.padClear.addEventListener("click", () => {
      this.clearPad();
      this.onSourceChange();
    });
    this.setUpPad();
    window.addEventListener("resize", () => this.drawPlot());
  }

  /** The chosen model decides the image size, the colour channels and the schedule. */
  async setModel(model) {
    if (!model) return;
    this.size = model.image_size;
    this.channels = model.channels;
    this.eps = null;
    this.el.t.max = String(model.timesteps - 1);
    if (Number(this.el.t.value) > model.timesteps - 1) this.el.t.value = String(Math.floor(model.timesteps / 2));
    this.el.pad.width = this.el.pad.height = this.size * Math.max(1, Math.round(PAD_PIXELS / this.size));
    this.clearPad();
    try {
      if (!this.scheduleCache.has(model.name)) this.scheduleCache.set(model.name, await getSchedule(model.name));
      this.alphasCumprod = Float64Array.from(this.scheduleCache.get(model.name).alphas_cumprod);
      this.scheduleNote = "";
    } catch (error) {
      // The formulas are known: compute them here rather than leave the section dead.
      this.alphasCumprod = alphasCumprodByName(model.schedule, model.timesteps);
      this.scheduleNote = this.alphasCumprod
        ? ` (schedule computed in the browser: ${error.message})`
        : ` (no schedule: ${error.message})`;
    }
    this.drawPlot();
    await this.onSourceChange();
  }

  /** A finished run from the main view: its images and the filmstrip that led to them, whose
   * grids hold each image at frameSize pixels (a preview of a large image). */
  setGenerated({ images, frames, n, imageSize, frameSize = imageSize }) {
    this.generated = { images, frames, n, imageSize, frameSize, picked: 0 };
    this.el.generatedRadio.disabled = false;
    this.el.generatedHint.textContent = "Pick one of the images you generated last:";
    const buttons = images.map((b64, index) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "pick";
      button.setAttribute("aria-label", `Generated image ${index + 1}`);
      button.setAttribute("aria-pressed", String(index === 0));
      const img = document.createElement("img");
      img.src = `data:image/png;base64,${b64}`;
      img.alt = "";
      button.append(img);
      button.addEventListener("click", () => {
        this.generated.picked = index;
        for (const [i, b] of [...this.el.picker.children].entries()) b.setAttribute("aria-pressed", String(i === index));
        this.onSourceChange();
      });
      return button;
    });
    this.el.picker.replaceChildren(...buttons);
    if (this.source === "generated") this.onSourceChange();
  }

  get source() {
    return document.querySelector('input[name="forward-source"]:checked').value;
  }

  async onSourceChange() {
    const source = this.source;
    for (const panel of document.querySelectorAll(".source-panel")) panel.hidden = panel.dataset.source !== source;
    const s = this.size;
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = s;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, s, s);
    if (source === "glyph") {
      this.drawGlyph(ctx, this.el.glyph.value || " ");
    } else if (source === "draw") {
      ctx.imageSmoothingEnabled = true;
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(this.el.pad, 0, 0, s, s);
    } else if (source === "generated" && this.generated) {
      const image = await decodePng(this.generated.images[this.generated.picked]);
      ctx.drawImage(image, 0, 0, s, s);
    }
    this.x0 = ctx.getImageData(0, 0, s, s);
    if (this.channels === 1) this.toGray(this.x0);
    this.render();
  }

  /** A character drawn large then averaged down: soft edges, like a scanned digit. */
  drawGlyph(ctx, text) {
    const s = this.size;
    const big = document.createElement("canvas");
    big.width = big.height = s * 8;
    const b = big.getContext("2d");
    b.fillStyle = "#000";
    b.fillRect(0, 0, big.width, big.height);
    b.fillStyle = "#fff";
    b.textAlign = "center";
    b.textBaseline = "middle";
    b.font = `bold ${Math.round(big.height * 0.78)}px system-ui, "DejaVu Sans", Arial, sans-serif`;
    b.fillText(text, big.width / 2, big.height * 0.54, big.width * 0.9);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(big, 0, 0, s, s);
  }

  toGray(imageData) {
    const d = imageData.data;
    for (let i = 0; i < d.length; i += 4) {
      const v = Math.round((d[i] + d[i + 1] + d[i + 2]) / 3);
      d[i] = d[i + 1] = d[i + 2] = v;
    }
  }

  render() {
    const t = Number(this.el.t.value);
    this.el.tValue.textContent = String(t);
    if (!this.x0 || !this.alphasCumprod) {
      this.el.numbers.textContent = `Loading the noise schedule…${this.scheduleNote}`;
      return;
    }
    const s = this.size;
    const gray = this.channels === 1;
    const count = s * s * (gray ? 1 : 3);
    if (!this.eps || this.eps.length !== count) this.eps = gaussianNoise(count, this.epsSeed);
    const alphaBar = this.alphasCumprod[Math.min(t, this.alphasCumprod.length - 1)];
    const { signal, noise, snr } = noiseLevels(alphaBar);

    this.paint(this.el.x0, this.x0.data);
    this.paint(this.el.xt, qSample(this.x0.data, this.eps, alphaBar, gray));
    this.paint(this.el.eps, noiseImage(this.eps, s * s, gray));
    this.el.xt.setAttribute("aria-label", `x_t at t = ${t}: ${Math.round(signal * 100)}% image, ${Math.round(noise * 100)}% noise`);
    this.el.numbers.innerHTML =
      `ᾱ<sub>${t}</sub> = ${alphaBar.toFixed(4)}: x<sub>t</sub> = <strong>${signal.toFixed(3)}</strong> · x<sub>0</sub> + ` +
      `<strong>${noise.toFixed(3)}</strong> · ε, signal-to-noise ratio ${snr >= 0.01 ? snr.toFixed(2) : snr.toExponential(1)}` +
      this.scheduleNote;
    this.el.t.setAttribute("aria-valuetext", `t = ${t}, ${Math.round(signal * 100)} percent of the image remains`);
    this.drawPlot();
    this.renderReverse(t);
  }

  paint(canvas, rgba) {
    const s = this.size;
    const small = document.createElement("canvas");
    small.width = small.height = s;
    small.getContext("2d").putImageData(new ImageData(rgba, s, s), 0, 0);
    drawCrisp(canvas, small, { minSize: 224 });
  }

  /** The sampler's x_t for the picked image at the streamed frame nearest to t. */
  async renderReverse(t) {
    const g = this.generated;
    const frames = g?.frames?.filter((f) => f.t >= 0 && !f.final) ?? [];
    if (this.source !== "generated" || !g || frames.length === 0) {
      this.el.reverseFigure.hidden = true;
      return;
    }
    const nearest = frames.reduce((best, f) => (Math.abs(f.t - t) < Math.abs(best.t - t) ? f : best));
    const grid = await decodePng(nearest.xt);
    const layout = gridLayout(grid.width, grid.height, g.n, g.frameSize);
    if (!layout || Number(this.el.t.value) !== t) {
      this.el.reverseFigure.hidden = !layout;
      return;
    }
    drawGridCell(this.el.reverse, grid, layout, g.picked, g.frameSize, { minSize: 224 });
    this.el.reverseCaption.innerHTML = `reverse: the sampler's x<sub>t</sub> at t = ${nearest.t} (step ${nearest.step})`;
    this.el.reverseFigure.hidden = false;
  }

  /** √ᾱ_t (what is left of x0) and √(1 − ᾱ_t) (how much noise), with the current t marked. */
  drawPlot() {
    const canvas = this.el.plot;
    const ac = this.alphasCumprod;
    if (!ac) return;
    const dpr = window.devicePixelRatio || 1;
    const cssWidth = canvas.clientWidth || 640;
    const cssHeight = canvas.clientHeight || 180;
    if (canvas.width !== Math.round(cssWidth * dpr) || canvas.height !== Math.round(cssHeight * dpr)) {
      canvas.width = Math.round(cssWidth * dpr);
      canvas.height = Math.round(cssHeight * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const style = getComputedStyle(document.documentElement);
    const colour = (name, fallback) => style.getPropertyValue(name).trim() || fallback;
    const fg = colour("--fg", "#222");
    const muted = colour("--muted", "#777");
    const signalColour = colour("--signal", "#2563eb");
    const noiseColour = colour("--noise", "#ea580c");
    const W = cssWidth;
    const H = cssHeight;
    const left = 34;
    const right = 8;
    const top = 10;
    const bottom = 24;
    const x = (t) => left + ((W - left - right) * t) / Math.max(1, ac.length - 1);
    const y = (v) => top + (H - top - bottom) * (1 - v);
    ctx.clearRect(0, 0, W, H);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = muted;
    ctx.strokeStyle = muted;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(left, top);
    ctx.lineTo(left, H - bottom);
    ctx.lineTo(W - right, H - bottom);
    ctx.stroke();
    ctx.textAlign = "right";
    ctx.fillText("1", left - 4, y(1) + 4);
    ctx.fillText("0", left - 4, y(0) + 4);
    ctx.textAlign = "center";
    ctx.fillText("t = 0", x(0) + 14, H - 8);
    ctx.fillText(`t = ${ac.length - 1}`, x(ac.length - 1) - 24, H - 8);
    const curve = (f, stroke) => {
      ctx.strokeStyle = stroke;
      ctx.lineWidth = 2;
      ctx.beginPath();
      for (let t = 0; t < ac.length; t++) {
        const px = x(t);
        const py = y(f(ac[t]));
        if (t === 0) ctx.moveTo(px, py);
        else ctx.lineTo(px, py);
      }
      ctx.stroke();
    };
    curve((a) => Math.sqrt(a), signalColour);
    curve((a) => Math.sqrt(1 - a), noiseColour);
    const t = Number(this.el.t.value);
    ctx.strokeStyle = fg;
    ctx.setLineDash([4, 3]);
    ctx.beginPath();
    ctx.moveTo(x(t), top);
    ctx.lineTo(x(t), H - bottom);
    ctx.stroke();
    ctx.setLineDash([]);
  }

  togglePlay() {
    if (this.playing) {
      this.stopPlay();
      return;
    }
    this.playing = true;
    this.el.play.textContent = "⏸ Pause";
    this.el.play.setAttribute("aria-pressed", "true");
    const max = Number(this.el.t.max);
    if (Number(this.el.t.value) >= max) this.el.t.value = "0";
    let last = performance.now();
    const advance = (now) => {
      if (!this.playing) return;
      // about three seconds from t = 0 to t = T − 1, whatever the frame rate
      const next = Math.min(max, Number(this.el.t.value) + Math.max(1, Math.round(((now - last) * max) / 3000)));
      last = now;
      this.el.t.value = String(next);
      this.render();
      if (next >= max) this.stopPlay();
      else requestAnimationFrame(advance);
    };
    requestAnimationFrame(advance);
  }

  stopPlay() {
    this.playing = false;
    this.el.play.textContent = "▶ Play";
    this.el.play.setAttribute("aria-pressed", "false");
  }

  clearPad() {
    const ctx = this.el.pad.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, this.el.pad.width, this.el.pad.height);
  }

  setUpPad() {
    const pad = this.el.pad;
    let drawing = false;
    let lastPoint = null;
    const point = (event) => {
      const rect = pad.getBoundingClientRect();
      return [((event.clientX - rect.left) * pad.width) / rect.width, ((event.clientY - rect.top) * pad.height) / rect.height];
    };
    const stroke = (from, to) => {
      const ctx = pad.getContext("2d");
      ctx.strokeStyle = "#fff";
      ctx.lineCap = "round";
      ctx.lineJoin = "round";
      ctx.lineWidth = pad.width / 10; // about MNIST's pen width
      ctx.beginPath();
      ctx.moveTo(...from);
      ctx.lineTo(...to);
      ctx.stroke();
    };
    pad.addEventListener("pointerdown", (event) => {
      drawing = true;
      pad.setPointerCapture(event.pointerId);
      lastPoint = point(event);
      stroke(lastPoint, lastPoint);
    });
    pad.addEventListener("pointermove", (event) => {
      if (!drawing) return;
      const p = point(event);
      stroke(lastPoint, p);
      lastPoint = p;
      this.onSourceChange();
    });
    const end = () => {
      if (drawing) this.onSourceChange();
      drawing = false;
    };
    pad.addEventListener("pointerup", end);
    pad.addEventListener("pointercancel", end);
  }
}
