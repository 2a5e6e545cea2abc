// Runs one sampling request into one RunView: streamed over the WebSocket, or as a single POST
// when streaming is off or the WebSocket cannot connect at all (a proxy that blocks it, say).

import { ApiError, postSample, streamSample } from "./api.js";

/**
 * Start a run. `request` is the contract's JSON (with `every` when streaming); `estimateS` the seconds
 * of sampling it should take, if known.
 * Returns {stop(), finished}: `finished` resolves to {status: "done"|"cancelled"|"error", result?, error?}
 * and never rejects, so callers can always tidy up.
 */
export function startRun(request, view, { stream = true, estimateS = null } = {}) {
  let settle;
  const finished = new Promise((resolve) => {
    settle = resolve;
  });
  let stopper = () => {};

  const viaPost = (note) => {
    const controller = new AbortController();
    view.begin(request, { streaming: false, estimateS });
    if (note) view.message(note, "warn");
    stopper = () => controller.abort();
    const { every, ...body } = request; // POST /sample has no frames to space out
    postSample(body, { signal: controller.signal }).then(
      async (result) => {
        await view.finish(result);
        settle({ status: "done", result });
      },
      (error) => {
        if (error.name === "AbortError") {
          view.cancelled({ step: 0, abandoned: true });
          settle({ status: "cancelled" });
        } else {
          view.fail(error);
          settle({ status: "error", error });
        }
      },
    );
  };

  const viaStream = () => {
    view.begin(request, { streaming: true, estimateS });
    let started = false;
    const handle = streamSample(request, {
      onQueued: (msg) => view.queued(msg),
      onStart: (msg) => {
        started = true;
        view.start(msg);
      },
      onFrame: (msg) => view.frame(msg),
      onDone: async (msg) => {
        try {
          await view.finish(msg);
          settle({ status: "done", result: msg });
        } catch (error) {
          view.fail(new ApiError(`Could not show the result: ${error.message}`));
          settle({ status: "error", error });
        }
      },
      onCancelled: (msg) => {
        view.cancelled(msg);
        settle({ status: "cancelled" });
      },
      onError: (error) => {
        if (error.kind === "connect" && !started && !stopped) {
          // No live stream at all: the final image is still worth having.
          viaPost("The live stream could not connect; fetching the final image in one request instead…");
          return;
        }
        view.fail(error);
        settle({ status: "error", error });
      },
      onStall: (seconds) => view.stall(seconds),
    });
    stopper = () => {
      view.stopping();
      handle.cancel();
    };
  };

  let stopped = false;
  if (stream) viaStream();
  else viaPost();

  return {
    stop() {
      stopped = true;
      stopper();
    },
    finished,
  };
}
