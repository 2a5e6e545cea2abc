// The server's public contract, and nothing else: GET /config, GET /models, GET /models/{name}/schedule,
// POST /sample and WS /ws/sample. Every failure becomes an ApiError whose message a visitor can read.
//
// URLs are relative to the page (not to "/"), so the demo also works behind a proxy under a prefix.

/** A failed request, with a message written for people and the facts a caller may act on. */
export class ApiError extends Error {
  constructor(message, { status = null, retryAfter = null, kind = "server" } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status; // HTTP status, or null for network/WebSocket failures
    this.retryAfter = retryAfter; // seconds, from a 503's Retry-After header
    // "server" | "input" | "busy" (the server's queue is full) | "limit" (this browser has its most runs)
    // | "network" | "connect" (a WebSocket that never opened)
    this.kind = kind;
  }
}

/** FastAPI's `detail` is a string, or a list of {loc, msg} for validation errors: make it one sentence. */
export function describeDetail(detail) {
  if (detail == null) return "";
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail
      .map((d) => {
        if (typeof d === "string") return d;
        // loc is like ["body", "steps"]: keep the field name, which is what the visitor typed into
        const loc = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
        const msg = d.msg || JSON.stringify(d);
        return loc ? `${loc}: ${msg}` : msg;
      })
      .join("; ");
  }
  if (typeof detail === "object" && detail.msg) return detail.msg;
  return JSON.stringify(detail);
}

function apiUrl(path) {
  return new URL(path, document.baseURI).href;
}

async function errorFromResponse(response) {
  let detail = "";
  try {
    const body = await response.json();
    detail = describeDetail(body.detail ?? body);
  } catch {
    detail = response.statusText;
  }
  if (response.status === 429) {
    return new ApiError(limitMessage(detail), { status: 429, kind: "limit" });
  }
  if (response.status === 503) {
    const retryAfter = Number.parseInt(response.headers.get("Retry-After") ?? "", 10);
    const wait = Number.isFinite(retryAfter) ? ` Try again in ${retryAfter} s.` : " Try again in a moment.";
    return new ApiError(`The server is full${detail ? ` (${detail})` : ""}.${wait}`, {
      status: 503,
      retryAfter: Number.isFinite(retryAfter) ? retryAfter : null,
      kind: "busy",
    });
  }
  if (response.status === 422 || response.status === 400) {
    return new ApiError(`The server rejected the settings: ${detail}`, { status: response.status, kind: "input" });
  }
  if (response.status === 504) {
    return new ApiError(`The run took too long and the server stopped it${detail ? ` (${detail})` : ""}.`, {
      status: 504,
    });
  }
  return new ApiError(`The server answered ${response.status}${detail ? `: ${detail}` : ""}`, {
    status: response.status,
  });
}

/**
 * fetch + JSON, with a deadline: a server that accepts the connection but never answers must not
 * leave the page waiting forever. `signal` (the visitor's Stop) aborts with an AbortError.
 */
async function request(path, { timeoutMs = 20000, signal, ...init } = {}) {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, timeoutMs);
  const onAbort = () => controller.abort();
  signal?.addEventListener("abort", onAbort);
  let response;
  try {
    response = await fetch(apiUrl(path), { ...init, signal: controller.signal });
    if (!response.ok) throw await errorFromResponse(response);
    return await response.json();
  } catch (err) {
    if (err instanceof ApiError) throw err;
    if (timedOut) {
      throw new ApiError(`The server did not answer within ${Math.round(timeoutMs / 1000)} s.`, { kind: "network" });
    }
    if (err.name === "AbortError") throw err;
    if (err instanceof SyntaxError) throw new ApiError("The server's answer was not the JSON this page expects.");
    throw new ApiError("Cannot reach the server. Is it still running?", { kind: "network" });
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  }
}

/**
 * {limits: {max_n, max_steps, max_guidance, max_seed}, defaults: {model, sampler, steps, n, guidance},
 *  samplers: [{name, title, description, default_steps, evals_per_step,
 *              params: [{name, type, default, minimum, maximum, choices, description}]}]}
 */
export function getConfig() {
  return request("config");
}

/** [{name, dataset, image_size, channels, num_classes, class_names, timesteps, schedule, device,
 *    default_sampler, default_steps}] */
export function getModels() {
  return request("models");
}

/** {name, schedule, timesteps, alphas_cumprod: [ᾱ_0 … ᾱ_{T-1}]} */
export function getSchedule(name) {
  return request(`models/${encodeURIComponent(name)}/schedule`);
}

/** One request, no frames: {images, grid, seed, model, sampler, steps, params, elapsed_ms}. */
export function postSample(req, { signal } = {}) {
  return request("sample", {
    timeoutMs: 300000, // a DDPM run can take minutes on a CPU; the server has its own limit below this
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(req),
    signal,
  });
}

/** `sentence`, then the server's own words when they add something to it. */
function withDetail(sentence, detail) {
  const adds = detail && !sentence.toLowerCase().includes(detail.toLowerCase().replace(/\.$/, ""));
  return adds ? `${sentence} The server says: ${detail.replace(/\.?$/, ".")}` : sentence;
}

function limitMessage(detail) {
  return `${withDetail("This browser already has as many runs going or waiting as the server allows.", detail)} Wait for one to finish, or stop one, then try again.`;
}

// Why a WebSocket closed, in words (RFC 6455's codes): people cannot act on "code 1012".
const CLOSE_REASONS = {
  1000: "the server closed it",
  1001: "the server is going away",
  1006: "the connection dropped without a word from the server",
  1011: "the server hit an error",
  1012: "the server is restarting",
  1013: "the server is overloaded",
  1014: "a proxy in between got a bad answer",
};

export function closeReason(code) {
  return CLOSE_REASONS[code] ?? "it closed unexpectedly";
}

/** An error the stream reported, worded by its kind (server.errors.FAILURES) or else its close code. */
export function streamError(detail, code, kind = null) {
  const text = detail || "no reason given";
  if (kind === "client_limit") return new ApiError(limitMessage(detail), { kind: "limit" });
  if (kind === "busy" || code === 1013) {
    return new ApiError(`The server is full (${text}). Try again in a few seconds.`, { kind: "busy" });
  }
  if (code === 1011) return new ApiError(`Sampling failed on the server: ${text}`, { kind: "server" });
  if (code === 1001) return new ApiError(withDetail("The server is shutting down.", detail), { kind: "server" });
  return new ApiError(`The server rejected the settings: ${text}`, { kind: "input" });
}

/**
 * Stream one sampling run over WS /ws/sample.
 *
 * handlers: onQueued(msg) — {position, eta_s} while the run waits for a place on the server, at first
 *           and whenever its position changes —, onStart(msg), onFrame(msg), onDone(msg),
 *           onCancelled(msg), onError(ApiError),
 *           onStall(secondsSilent) — called when the server has said nothing for a while, so the
 *           page can say so instead of hanging silently.
 * Exactly one of onDone / onCancelled / onError is called, once.
 * Returns {cancel()}: asks the server to stop; if it does not confirm, the socket is closed.
 */
export function streamSample(req, handlers, { stallMs = 15000, cancelGraceMs = 5000 } = {}) {
  const url = new URL("ws/sample", document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";

  let socket;
  let opened = false;
  let finished = false;
  let lastStep = 0;
  let total = null;
  let stallTimer = null;
  let cancelTimer = null;
  let silentSince = performance.now();
  let pendingError = null; // the detail of an "error" message, until the close code arrives
  let pendingKind = null; // and its kind
  let errorTimer = null;

  const finish = (kind, payload) => {
    if (finished) return;
    finished = true;
    clearInterval(stallTimer);
    clearTimeout(cancelTimer);
    clearTimeout(errorTimer);
    if (kind === "done") handlers.onDone?.(payload);
    else if (kind === "cancelled") handlers.onCancelled?.(payload);
    else handlers.onError?.(payload);
    // The server closes after done/cancelled/error; close our side too in case it does not.
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close(1000);
  };

  try {
    socket = new WebSocket(url.href);
  } catch (err) {
    queueMicrotask(() =>
      finish("error", new ApiError(`Cannot open a WebSocket to ${url.href}: ${err.message}`, { kind: "network" })),
    );
    return { cancel() {} };
  }

  socket.onopen = () => {
    opened = true;
    silentSince = performance.now();
    socket.send(JSON.stringify(req));
  };

  socket.onmessage = (event) => {
    silentSince = performance.now();
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch {
      finish("error", new ApiError("The server sent a message that is not JSON."));
      return;
    }
    switch (msg.type) {
      case "queued":
        handlers.onQueued?.(msg);
        break;
      case "start":
        total = msg.total;
        handlers.onStart?.(msg);
        break;
      case "frame":
        lastStep = msg.step;
        handlers.onFrame?.(msg);
        break;
      case "done":
        finish("done", msg);
        break;
      case "cancelled":
        finish("cancelled", msg);
        break;
      case "error":
        // The close code that follows says why (1008 bad input, 1013 busy, 1011 failed): wait for it
        // briefly, but never for long.
        pendingError = describeDetail(msg.detail) || "unknown error";
        pendingKind = msg.kind ?? null;
        errorTimer = setTimeout(() => finish("error", streamError(pendingError, null, pendingKind)), 1500);
        break;
      default:
        break; // unknown message types are ignored, so the server can add some later
    }
  };

  socket.onerror = () => {
    // Browsers give no detail here on purpose; onclose follows and says what happened.
  };

  socket.onclose = (event) => {
    if (finished) return;
    if (pendingError != null || event.code === 1008 || event.code === 1011 || event.code === 1013 || event.code === 1001) {
      finish("error", streamError(pendingError ?? event.reason, event.code, pendingKind));
    } else if (!opened) {
      finish("error", new ApiError("Cannot reach the server (the live stream did not connect).", { kind: "connect" }));
    } else {
      const where = total ? ` at step ${lastStep}/${total}` : "";
      finish(
        "error",
        new ApiError(`Lost the connection to the server${where}: ${closeReason(event.code)}. Is the server still running?`, {
          kind: "network",
        }),
      );
    }
  };

  stallTimer = setInterval(() => {
    const silent = performance.now() - silentSince;
    if (!finished && silent >= stallMs) handlers.onStall?.(Math.round(silent / 1000));
  }, 1000);

  return {
    cancel() {
      if (finished) return;
      if (socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ type: "cancel" }));
        // A server that never confirms must not leave the page waiting forever.
        cancelTimer = setTimeout(() => finish("cancelled", { type: "cancelled", step: lastStep, unconfirmed: true }), cancelGraceMs);
      } else {
        finish("cancelled", { type: "cancelled", step: lastStep, unconfirmed: true });
      }
    },
  };
}
