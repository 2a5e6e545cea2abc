// Pixels: base64 PNGs from the server → bitmaps → canvases drawn with crisp (unsmoothed) pixels,
// plus the few measurements the page needs (grid layout, "is this image blank?").

export function pngDataUrl(base64) {
  return `data:image/png;base64,${base64}`;
}

/** Decode a raw-base64 PNG. Resolves to something drawImage accepts (ImageBitmap, or an <img>). */
export async function decodePng(base64) {
  if (typeof createImageBitmap === "function") {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return createImageBitmap(new Blob([bytes], { type: "image/png" }));
  }
  const img = new Image();
  img.src = pngDataUrl(base64);
  await img.decode();
  return img;
}

function naturalSize(image) {
  return { width: image.naturalWidth ?? image.width, height: image.naturalHeight ?? image.height };
}

/**
 * Draw `image` filling `canvas`, scaled by a whole number with nearest-neighbour sampling, so every
 * model pixel becomes a sharp square. The backing store is `scale`× the image so that downloads
 * and screenshots stay crisp too; CSS (`image-rendering: pixelated`) handles the display size.
 * An image that needs no enlarging (scale 1) gets the class "smooth": the page shrinks it.
 */
export function drawCrisp(canvas, image, { minSize = 480, maxScale = 16 } = {}) {
  const { width, height } = naturalSize(image);
  const scale = Math.max(1, Math.min(maxScale, Math.ceil(minSize / Math.max(width, height))));
  if (canvas.width !== width * scale || canvas.height !== height * scale) {
    canvas.width = width * scale;
    canvas.height = height * scale;
  }
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  canvas.dataset.sourceWidth = String(width);
  canvas.dataset.sourceHeight = String(height);
  // an image at least minSize wide (a grid of 256-pixel images) is shrunk to fit: smooth it instead
  canvas.classList.toggle("smooth", scale === 1);
}

export function clearCanvas(canvas) {
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

/** Standard deviation of a canvas's gray levels: 0 for a blank (single-colour) image. */
export function pixelStd(canvas) {
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  let sum = 0;
  let sumSq = 0;
  const n = data.length / 4;
  for (let i = 0; i < data.length; i += 4) {
    const v = (data[i] + data[i + 1] + data[i + 2]) / 3;
    sum += v;
    sumSq += v * v;
  }
  const mean = sum / n;
  return Math.sqrt(Math.max(0, sumSq / n - mean * mean));
}

/**
 * Where the cells of a grid image lie: the server tiles n images of size×size with equal padding
 * (torchvision's make_grid). Rather than hard-code its column count and padding, find the layout
 * that explains the grid's width and height. Returns {columns, rows, padding} or null.
 */
export function gridLayout(gridWidth, gridHeight, n, size) {
  // The server's choice (ceil(√n) a row) first, then every other column count.
  const first = Math.min(n, Math.max(1, Math.ceil(Math.sqrt(n))));
  const candidates = [first, ...Array.from({ length: n }, (_, i) => i + 1).filter((c) => c !== first)];
  for (const columns of candidates) {
    const found = layoutFor(columns);
    if (found) return found;
  }
  return null;

  function layoutFor(columns) {
    const rows = Math.ceil(n / columns);
    const padding = (gridWidth - columns * size) / (columns + 1);
    if (!Number.isInteger(padding) || padding < 0) return null;
    if (rows * size + (rows + 1) * padding !== gridHeight) return null;
    return { columns, rows, padding };
  }
}

/** Copy cell `index` of a grid image into `canvas` (crisp). */
export function drawGridCell(canvas, image, layout, index, size, options = {}) {
  const col = index % layout.columns;
  const row = Math.floor(index / layout.columns);
  const x = layout.padding + col * (size + layout.padding);
  const y = layout.padding + row * (size + layout.padding);
  const cell = document.createElement("canvas");
  cell.width = size;
  cell.height = size;
  cell.getContext("2d").drawImage(image, x, y, size, size, 0, 0, size, size);
  drawCrisp(canvas, cell, options);
}
