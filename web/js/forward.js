// The forward process, computed in the browser on pixel data:
//   q(x_t | x_0) = N(√ᾱ_t · x_0, (1 − ᾱ_t) I),  i.e.  x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε,  ε ~ N(0, I)
// Pixels map to [-1, 1] as the model sees them (0 → -1, 255 → +1). Pure functions, no DOM.

/** A small seeded PRNG (mulberry32): the same seed gives the same ε, so moving t keeps the noise. */
export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `count` standard normal samples (Box–Muller). */
export function gaussianNoise(count, seed) {
  const random = mulberry32(seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const u = 1 - random(); // (0, 1]: log(u) stays finite
    const v = random();
    const r = Math.sqrt(-2 * Math.log(u));
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < count) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

const toSigned = (byte) => byte / 127.5 - 1;
const toByte = (x) => Math.round((Math.min(1, Math.max(-1, x)) + 1) * 127.5);

/**
 * x_t for RGBA pixels `x0` (Uint8ClampedArray). `eps` holds one value per pixel when `gray`
 * (the same noise in R, G and B, so a gray image stays gray) or three per pixel otherwise.
 * Returns a new RGBA Uint8ClampedArray; values are clamped to [-1, 1] for display only.
 */
export function qSample(x0, eps, alphaBar, gray) {
  const signal = Math.sqrt(alphaBar);
  const noise = Math.sqrt(1 - alphaBar);
  const out = new Uint8ClampedArray(x0.length);
  const pixels = x0.length / 4;
  for (let p = 0; p < pixels; p++) {
    for (let c = 0; c < 3; c++) {
      const e = gray ? eps[p] : eps[p * 3 + c];
      out[p * 4 + c] = toByte(signal * toSigned(x0[p * 4 + c]) + noise * e);
    }
    out[p * 4 + 3] = 255;
  }
  return out;
}

/** ε itself as an image (as x_t would look with no signal left). */
export function noiseImage(eps, pixels, gray) {
  const out = new Uint8ClampedArray(pixels * 4);
  for (let p = 0; p < pixels; p++) {
    for (let c = 0; c < 3; c++) out[p * 4 + c] = toByte(gray ? eps[p] : eps[p * 3 + c]);
    out[p * 4 + 3] = 255;
  }
  return out;
}

/** ᾱ_t of DDPM's linear schedule (β from 1e-4 to 0.02, rescaled for T ≠ 1000), as model/schedule.py. */
export function linearAlphasCumprod(timesteps) {
  const scale = 1000 / timesteps;
  const start = 1e-4 * scale;
  const end = 0.02 * scale;
  const out = new Float64Array(timesteps);
  let prod = 1;
  for (let t = 0; t < timesteps; t++) {
    const beta = timesteps === 1 ? start : start + ((end - start) * t) / (timesteps - 1);
    prod *= 1 - beta;
    out[t] = prod;
  }
  return out;
}

/** ᾱ_t of the cosine schedule (Nichol & Dhariwal 2021), with β clipped at 0.999, as model/schedule.py. */
export function cosineAlphasCumprod(timesteps, s = 0.008) {
  const f = (t) => Math.cos(((t / timesteps + s) / (1 + s)) * (Math.PI / 2)) ** 2;
  const out = new Float64Array(timesteps);
  let prod = 1;
  for (let t = 0; t < timesteps; t++) {
    const beta = Math.min(0.999, 1 - f(t + 1) / f(t));
    prod *= 1 - beta;
    out[t] = prod;
  }
  return out;
}

/** A fallback when the server's schedule cannot be fetched: the same formulas, by name. */
export function alphasCumprodByName(name, timesteps) {
  if (name === "linear") return linearAlphasCumprod(timesteps);
  if (name === "cosine") return cosineAlphasCumprod(timesteps);
  return null;
}

/** The numbers the page prints beside the slider. */
export function noiseLevels(alphaBar) {
  return {
    signal: Math.sqrt(alphaBar), // weight of x_0
    noise: Math.sqrt(1 - alphaBar), // weight of ε
    snr: alphaBar / (1 - alphaBar), // signal-to-noise ratio ᾱ / (1 − ᾱ)
  };
}
