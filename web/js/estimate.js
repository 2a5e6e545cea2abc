// How long a run will take, before it starts and while it runs.
//
// A run's cost is counted in UNet rows (one image through the network once): steps × the sampler's
// evaluations a step × images, twice that when guidance mixes a conditional and an unconditional
// prediction (not for a student that takes w as an input: GET /models' guidance_input). The server's
// time per row for a model comes from GET /models (`seconds_per_row`, measured by the server) when it
// publishes one, else from this browser's earlier runs of that model (remembered across visits), else
// there is no estimate. Pure but for the storage it is given.

const STORAGE_KEY = "ddpm-demo.seconds-per-row";

/**
 * The steps a run takes (docs/api.md): SDEdit takes the last ceil(steps × strength) of its grid
 * (the product rounded to 9 digits first, as the server does: 10 × 0.3 is 3), and a branch replays
 * its at_step steps of the original first.
 */
export function stepsTaken(request) {
  const strength = request.init_image ? (request.strength ?? 1) : 1;
  return Math.ceil(Number((request.steps * strength).toFixed(9))) + (request.branch?.at_step ?? 0);
}

/** UNet rows a request costs (a guidance-distilled student takes w as an input: one row a guided image). */
export function rowsOf(request, sampler, model) {
  const guided =
    !model?.guidance_input && Boolean(model?.num_classes) && request.label != null && request.guidance != null && request.guidance !== 1;
  return stepsTaken(request) * (sampler?.evals_per_step ?? 1) * request.n * (guided ? 2 : 1);
}

/** "1 step", "2 steps". */
export function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

/** "under a second", "about 4 s", "about 2.5 min". */
export function formatDuration(seconds) {
  if (seconds < 1) return "under a second";
  if (seconds < 60) return `about ${Math.round(seconds)} s`;
  return `about ${(seconds / 60).toFixed(1)} min`;
}

/** Seconds per row for each model: the server's figure first, then what this browser measured. */
export class SpeedBook {
  constructor(storage = globalThis.localStorage ?? null) {
    this.storage = storage;
    this.measured = new Map(Object.entries(this.load()));
  }

  load() {
    try {
      return JSON.parse(this.storage?.getItem(STORAGE_KEY) ?? "{}") ?? {};
    } catch {
      return {}; // unreadable or blocked storage: start afresh
    }
  }

  /** A finished run that had the server to itself: `rows` rows in `elapsedMs` of server time. */
  record(modelName, rows, elapsedMs) {
    if (!(rows > 0 && elapsedMs > 0)) return;
    this.measured.set(modelName, elapsedMs / 1000 / rows);
    try {
      this.storage?.setItem(STORAGE_KEY, JSON.stringify(Object.fromEntries(this.measured)));
    } catch {
      // a full or blocked storage only costs the next visit its estimate
    }
  }

  /** {secondsPerRow, source: "server" | "measured"} for `model`, or null when nothing is known. */
  rate(model) {
    if (!model) return null;
    if (model.seconds_per_row > 0) return { secondsPerRow: model.seconds_per_row, source: "server" };
    const measured = this.measured.get(model.name);
    return measured > 0 ? { secondsPerRow: measured, source: "measured" } : null;
  }

  /** {seconds, source} a request should take on the server, or null. */
  estimate(request, sampler, model) {
    const rate = this.rate(model);
    return rate && { seconds: rate.secondsPerRow * rowsOf(request, sampler, model), source: rate.source };
  }
}

/**
 * Seconds left in a run at `step` of `total`, `elapsedS` after it started sampling: its own pace once
 * it has taken a step (that is what this run gets from the server now), else the estimate it started with.
 */
export function remainingSeconds({ step, total, elapsedS, estimateS = null }) {
  if (step > 0) return (elapsedS / step) * (total - step);
  return estimateS == null ? null : Math.max(0, estimateS - elapsedS);
}
