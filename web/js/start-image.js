// "Start from an image": SDEdit and inpainting (docs/api.md: init_image, strength, mask).
//
// The starting image is the forward-process section's x0 (a typed character, a drawing, or a
// generated image) or an uploaded file, made here at the model's size and channels, since the
// server takes exactly image_size a side. Over it the visitor paints the mask (white: repaint,
// black: keep) with a mouse, a pen or a finger. Both are kept as base64 PNGs, ready for a request.

import { drawCrisp } from "./pixels.js";

/** A canvas as raw base64 PNG (no data: prefix). */
export function canvasPng(canvas) {
  return new Promise((resolve, reject) => {
    canvas.toBlob((blob) => {
      if (!blob) return reject(new Error("the browser could not encode the image"));
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result).split(",")[1]);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    }, "image/png");
  });
}

/** Bytes a base64 string decodes to (what the server's max_init_image_bytes counts). */
export function base64Bytes(text) {
  const padding = text.endsWith("==") ? 2 : text.endsWith("=") ? 1 : 0;
  return (text.length * 3) / 4 - padding;
}

/** `source` (anything drawImage takes) drawn into a new size × size canvas: centred, cropped to a square, grey if channels = 1. */
export function toModelCanvas(source, size, channels) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, size, size);
  const width = source.width;
  const height = source.height;
  const side = Math.min(width, height);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(source, (width - side) / 2, (height - side) / 2, side, side, 0, 0, size, size);
  if (channels === 1) {
    const pixels = ctx.getImageData(0, 0, size, size);
    const d = pixels.data;
    for (let i = 0; i < d.length; i += 4) d[i] = d[i + 1] = d[i + 2] = Math.round((d[i] + d[i + 1] + d[i + 2]) / 3);
    ctx.putImageData(pixels, 0, 0);
  }
  return canvas;
}

function copyCanvas(canvas) {
  const copy = document.createElement("canvas");
  copy.width = canvas.width;
  copy.height = canvas.height;
  copy.getContext("2d").drawImage(canvas, 0, 0);
  return copy;
}

export class StartImage {
  /** forwardImage(): the forward-process section's x0 as ImageData at the model's size, or null. */
  constructor({ forwardImage, onChange }) {
    this.forwardImage = forwardImage;
    this.onChange = onChange;
    const $ = (id) => document.getElementById(id);
    this.el = {
      section: $("start-image"),
      use: $("use-start-image"),
      panel: $("start-image-panel"),
      fromForward: $("start-from-forward"),
      upload: $("start-upload"),
      image: $("start-canvas"),
      mask: $("mask-canvas"),
      paint: $("paint-mask"),
      clearMask: $("mask-clear"),
      strength: $("strength"),
      strengthValue: $("strength-value"),
      status: $("start-image-status"),
    };
    this.model = null;
    this.init = null; // {canvas, png}: the starting image at the model's size
    this.source = null; // {image, from}: the picture it was made from, to make it again for another model
    this.maskPng = null; // null: nothing painted, no mask
    this.painting = false;
    this.el.use.addEventListener("change", () => this.onUse());
    this.el.fromForward.addEventListener("click", () => this.takeForward());
    this.el.upload.addEventListener("change", () => this.takeUpload());
    this.el.clearMask.addEventListener("click", () => this.clearMask());
    this.el.paint.addEventListener("change", () => this.el.mask.classList.toggle("painting", this.el.paint.checked));
    this.el.strength.addEventListener("input", () => this.showStrength());
    for (const type of ["pointerdown", "pointermove", "pointerup", "pointercancel", "pointerleave"]) {
      this.el.mask.addEventListener(type, (event) => this.onPointer(event));
    }
    this.showStrength();
  }

  /** Shown only when the server takes a starting image (GET /config says how large one may be). */
  setConfig(config) {
    this.maxBytes = config.limits.max_init_image_bytes ?? null;
    this.el.section.hidden = this.maxBytes == null;
  }

  /**
   * The visitor's image and mask outlive a change of model: kept as they are for a model of the same
   * size and channels, made again from the chosen picture (and the mask scaled) for another.
   */
  setModel(model) {
    const before = this.model;
    this.model = model;
    if (!model || (before && model.image_size === before.image_size && model.channels === before.channels)) return;
    if (this.source) {
      this.setImage(toModelCanvas(this.source.image, model.image_size, model.channels), this.source.from, { keepMask: true });
      return;
    }
    for (const canvas of [this.el.image, this.el.mask]) canvas.width = canvas.height = model.image_size;
    this.init = null;
    this.clearMask();
    if (this.el.use.checked) this.takeForward();
  }

  get active() {
    return this.el.use.checked && !this.el.section.hidden;
  }

  showStrength() {
    this.el.strengthValue.textContent = Number(this.el.strength.value).toFixed(2);
  }

  onUse() {
    this.el.panel.hidden = !this.el.use.checked;
    if (this.el.use.checked && !this.init) this.takeForward();
    this.onChange?.();
  }

  /** `canvas` (at the model's size) becomes the starting image; keepMask: the painted mask, scaled to it. */
  async setImage(canvas, from, { keepMask = false } = {}) {
    const painted = keepMask && this.maskPng ? copyCanvas(this.el.mask) : null;
    this.init = { canvas, png: await canvasPng(canvas) };
    drawCrisp(this.el.image, canvas, { minSize: 224 });
    this.el.mask.width = this.el.image.width;
    this.el.mask.height = this.el.image.height;
    this.clearMask();
    if (painted) {
      this.el.mask.getContext("2d").drawImage(painted, 0, 0, this.el.mask.width, this.el.mask.height);
      await this.storeMask();
    }
    this.el.status.textContent = `Starting from ${from}, ${canvas.width}×${canvas.height}.`;
    this.onChange?.();
  }

  async takeForward() {
    const pixels = this.forwardImage();
    if (!pixels || !this.model) return;
    const canvas = document.createElement("canvas");
    canvas.width = pixels.width;
    canvas.height = pixels.height;
    canvas.getContext("2d").putImageData(pixels, 0, 0);
    this.source = { image: canvas, from: "the forward-process image" };
    await this.setImage(toModelCanvas(canvas, this.model.image_size, this.model.channels), this.source.from);
  }

  async takeUpload() {
    const file = this.el.upload.files?.[0];
    if (!file || !this.model) return;
    try {
      const bitmap = await createImageBitmap(file);
      this.source = { image: bitmap, from: `“${file.name}”` };
      await this.setImage(toModelCanvas(bitmap, this.model.image_size, this.model.channels), this.source.from);
    } catch {
      this.el.status.textContent = `“${file.name}” is not an image this browser can read.`;
    }
  }

  clearMask() {
    const ctx = this.el.mask.getContext("2d");
    ctx.clearRect(0, 0, this.el.mask.width, this.el.mask.height);
    this.maskPng = null;
    this.onChange?.();
  }

  /** Paint with a round brush a fifth of the image wide, in the overlay's own (enlarged) pixels. */
  onPointer(event) {
    if (!this.el.paint.checked) return;
    if (event.type === "pointerdown") {
      this.painting = true;
      this.el.mask.setPointerCapture?.(event.pointerId);
    }
    if (!this.painting) return;
    if (event.type === "pointerup" || event.type === "pointercancel" || event.type === "pointerleave") {
      this.painting = false;
      this.lastPoint = null;
      this.storeMask();
      return;
    }
    event.preventDefault();
    const rect = this.el.mask.getBoundingClientRect();
    const point = [
      ((event.clientX - rect.left) * this.el.mask.width) / rect.width,
      ((event.clientY - rect.top) * this.el.mask.height) / rect.height,
    ];
    // a stroke from the last point, not a dot per event: a fast finger sends few of them
    const from = event.type === "pointerdown" ? point : (this.lastPoint ?? point);
    const ctx = this.el.mask.getContext("2d");
    ctx.strokeStyle = "rgb(255 0 0)";
    ctx.lineWidth = this.el.mask.width / 5;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...from);
    ctx.lineTo(...point);
    ctx.stroke();
    this.lastPoint = point;
  }

  /** The overlay as the server reads a mask: the model's size, white where painted, black elsewhere. */
  async storeMask() {
    const size = this.model.image_size;
    const mask = document.createElement("canvas");
    mask.width = mask.height = size;
    const ctx = mask.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, size, size);
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(this.el.mask, 0, 0, size, size);
    const pixels = ctx.getImageData(0, 0, size, size);
    const d = pixels.data;
    let painted = 0;
    for (let i = 0; i < d.length; i += 4) {
      const on = d[i] >= 128; // the red of the overlay, where it covers at least half the pixel
      d[i] = d[i + 1] = d[i + 2] = on ? 255 : 0;
      painted += on;
    }
    ctx.putImageData(pixels, 0, 0);
    this.maskPng = painted ? await canvasPng(mask) : null;
    this.el.mask.dataset.painted = String(painted);
    this.onChange?.();
  }

  /** What a request gets: {init_image, strength, mask?}, or {} when no starting image is used. */
  values() {
    if (!this.active) return {};
    return { init_image: this.init?.png ?? null, strength: this.el.strength.value, mask: this.maskPng };
  }
}
