// One generated image, large: a dialog over the page with the image at full resolution (256-pixel
// images are shrunk in the grid), the previous and next image (buttons or ← →), and a download.
// Esc or the close button closes it; the focus then returns to where it was.

import { pngDataUrl } from "./pixels.js";

export class Zoom {
  constructor(dialog) {
    this.dialog = dialog;
    const $ = (selector) => dialog.querySelector(selector);
    this.el = {
      image: $(".zoom-image"),
      caption: $(".zoom-caption"),
      previous: $(".zoom-previous"),
      next: $(".zoom-next"),
      download: $(".zoom-download"),
      close: $(".zoom-close"),
    };
    this.images = [];
    this.index = 0;
    this.name = "image";
    this.el.previous.addEventListener("click", () => this.show(this.index - 1));
    this.el.next.addEventListener("click", () => this.show(this.index + 1));
    this.el.close.addEventListener("click", () => dialog.close());
    dialog.addEventListener("keydown", (event) => {
      if (event.key === "ArrowLeft") this.show(this.index - 1);
      if (event.key === "ArrowRight") this.show(this.index + 1);
    });
    // a click on the backdrop (outside the dialog's box) closes it too
    dialog.addEventListener("click", (event) => {
      if (event.target === dialog) dialog.close();
    });
  }

  /** images: base64 PNGs; index: the one to show first; name: the download's file name stem. */
  open(images, index = 0, name = "image") {
    if (!images?.length) return;
    this.images = images;
    this.name = name;
    this.show(index);
    if (!this.dialog.open) this.dialog.showModal();
    this.el.close.focus();
  }

  show(index) {
    const n = this.images.length;
    this.index = (index + n) % n;
    const url = pngDataUrl(this.images[this.index]);
    this.el.image.src = url;
    this.el.image.alt = `Generated image ${this.index + 1} of ${n}`;
    this.el.image.onload = () => {
      const size = this.el.image.naturalWidth;
      // small images keep their pixels square when enlarged; large ones are drawn smoothly
      this.el.image.classList.toggle("pixelated", size < 128);
      this.el.caption.textContent = `Image ${this.index + 1} of ${n} · ${size}×${this.el.image.naturalHeight} pixels`;
      this.dialog.dataset.size = String(size);
    };
    this.el.download.href = url;
    this.el.download.download = `${this.name}-${this.index + 1}.png`;
    this.el.previous.disabled = this.el.next.disabled = n < 2;
    this.dialog.dataset.index = String(this.index);
  }
}

let pageZoom = null;

/** The page's one zoom dialog (#zoom), shared by every run view. */
export function zoom() {
  pageZoom ??= new Zoom(document.getElementById("zoom"));
  return pageZoom;
}

/**
 * Which image of a grid a click at (x, y) in CSS pixels of `canvas` landed on, or null for the
 * padding between them. The canvas shows a grid of `n` images of `size` pixels, laid out as `layout`
 * (pixels.gridLayout), drawn over the canvas's whole box.
 */
export function cellAt(canvas, x, y, layout, size, n) {
  const rect = canvas.getBoundingClientRect();
  const gridWidth = Number(canvas.dataset.sourceWidth);
  const gridHeight = Number(canvas.dataset.sourceHeight);
  const gx = (x * gridWidth) / rect.width;
  const gy = (y * gridHeight) / rect.height;
  const step = size + layout.padding;
  const col = Math.floor((gx - layout.padding) / step);
  const row = Math.floor((gy - layout.padding) / step);
  const inside = gx - layout.padding - col * step < size && gy - layout.padding - row * step < size;
  const index = row * layout.columns + col;
  return inside && col >= 0 && col < layout.columns && row >= 0 && index < n ? index : null;
}
