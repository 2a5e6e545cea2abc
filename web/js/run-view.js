// One live panel: x_t and predicted x0 canvases, progress, timing, messages, the final result and
// a filmstrip to scrub back through. It only displays; runner.js feeds it what the server says.
//
// For tests and for anyone curious, the panel's state is mirrored in data-* attributes:
//   data-state (idle|running|stopping|done|cancelled|error), data-step, data-total, data-frames-drawn,
//   and data-queue-position while the run waits for a place on the server.

import { formatDuration, plural, remainingSeconds } from "./estimate.js";
import { FrameKeeper } from "./frames.js";
import { clearCanvas, decodePng, drawCrisp, gridLayout, pngDataUrl } from "./pixels.js";
import { canRecordVideo, recordVideo } from "./video.js";
import { cellAt, zoom } from "./zoom.js";

const FILMSTRIP_SLOTS = 20;

const X0_GUESS = "predicted x̂<sub>0</sub>: the model's current guess";
const X0_FINAL = "x<sub>0</sub>: the final images (nothing left to predict)";

function formatSeconds(ms) {
  return ms < 10000 ? `${(ms / 1000).toFixed(2)} s` : `${(ms / 1000).toFixed(1)} s`;
}

export class RunView {
  /**
   * container: an element to fill with a clone of #run-view-template. onBranch(step): offered as
   * "Branch from this step" under the filmstrip of a finished run, with the step of the frame shown.
   */
  constructor(container, { title = "Live view", placeholder = null, onBranch = null } = {}) {
    const template = document.getElementById("run-view-template");
    this.root = template.content.firstElementChild.cloneNode(true);
    container.replaceChildren(this.root);
    const $ = (selector) => this.root.querySelector(selector);
    this.el = {
      title: $(".rv-title"),
      showX0: $(".rv-show-x0"),
      xt: $(".rv-xt"),
      x0: $(".rv-x0"),
      xtCaption: $(".rv-xt-caption"),
      x0Caption: $(".rv-x0-caption"),
      progress: $(".rv-progress"),
      step: $(".rv-step"),
      t: $(".rv-t"),
      elapsed: $(".rv-elapsed"),
      remaining: $(".rv-remaining"),
      fps: $(".rv-fps"),
      frames: $(".rv-frames"),
      message: $(".rv-message"),
      result: $(".rv-result"),
      download: $(".rv-download"),
      downloadLarge: $(".rv-download-large"),
      zoom: $(".rv-zoom"),
      video: $(".rv-video"),
      videoLink: $(".rv-video-link"),
      eachLinks: $(".rv-each-links"),
      seed: $(".rv-seed"),
      filmstrip: $(".rv-filmstrip"),
      scrub: $(".rv-scrub"),
      scrubValue: $(".rv-scrub-value"),
      thumbs: $(".rv-thumbs"),
      branch: $(".rv-branch"),
    };
    this.onBranch = onBranch;
    this.el.branch.addEventListener("click", () => this.onBranch?.(this.filmstrip[Number(this.el.scrub.value)].step));
    this.el.title.textContent = title;
    if (placeholder) this.root.querySelector(".rv-placeholder span").textContent = placeholder;
    this.el.showX0.addEventListener("change", () => {
      this.root.classList.toggle("hide-x0", !this.el.showX0.checked);
    });
    this.el.scrub.addEventListener("input", () => this.showFilmstripFrame(Number(this.el.scrub.value)));
    this.el.thumbs.addEventListener("keydown", (event) => this.onFilmstripKey(event));
    this.el.zoom.addEventListener("click", () => this.openZoom(0));
    this.el.video.addEventListener("click", () => this.makeVideo());
    this.el.xt.addEventListener("click", (event) => this.zoomAt(event));
    this.timer = null;
    this.largeUrl = null;
    this.videoUrl = null;
    this.reset();
  }

  set state(value) {
    this.root.dataset.state = value;
  }

  get state() {
    return this.root.dataset.state;
  }

  reset() {
    clearInterval(this.timer);
    this.state = "idle";
    this.request = null;
    this.total = null;
    this.keeper = null;
    this.framesDrawn = 0;
    this.drawnStep = 0;
    this.firstDrawAt = null;
    this.lastDrawAt = null;
    this.startedAt = null;
    this.samplingSince = null; // when the server started sampling (its start message)
    this.lastStep = 0;
    this.estimateS = null;
    this.el.remaining.textContent = "";
    this.filmstrip = [];
    this.result = null;
    this.startMessage = null;
    this.queue = null; // {position, until}: waiting for a place on the server, about until then
    delete this.root.dataset.queuePosition;
    this.imageSize = null; // of the final images, once decoded
    this.root.classList.remove("zoomable");
    this.root.dataset.framesDrawn = "0";
    this.root.dataset.step = "0";
    this.root.dataset.total = "0";
  }

  /**
   * A run was requested: clear the panel and start the clock. estimateS: the seconds of sampling it
   * should take (estimate.js), or null; the time left is counted down from it until the run's own
   * pace is known.
   */
  begin(request, { streaming = true, estimateS = null } = {}) {
    this.reset();
    this.request = request;
    this.streaming = streaming;
    this.estimateS = estimateS;
    this.state = "running";
    this.startedAt = performance.now();
    if (!streaming) this.samplingSince = this.startedAt; // no start message comes
    this.el.result.hidden = true;
    this.el.filmstrip.hidden = true;
    this.el.branch.hidden = true;
    this.el.thumbs.replaceChildren();
    this.el.progress.max = request.steps;
    this.el.progress.removeAttribute("value"); // indeterminate until the first frame
    this.el.elapsed.removeAttribute("title"); // the server's time of the previous run
    this.el.step.textContent = `step 0/${request.steps}`;
    this.el.t.textContent = "t = –";
    this.el.fps.textContent = "– fps";
    this.el.frames.textContent = "0 frames";
    this.el.xtCaption.innerHTML = "x<sub>t</sub>: the current sample";
    this.el.x0Caption.innerHTML = X0_GUESS;
    this.clear();
    this.message(streaming ? "Connecting…" : "Sampling on the server; this mode shows only the final image…");
    this.timer = setInterval(() => this.tick(), 100);
    this.tick();
  }

  tick() {
    if (this.startedAt == null) return;
    this.el.elapsed.textContent = formatSeconds(performance.now() - this.startedAt);
    this.showQueue();
    this.showRemaining();
  }

  showRemaining() {
    const total = this.total ?? this.request?.steps;
    const elapsedS = this.samplingSince == null ? 0 : (performance.now() - this.samplingSince) / 1000;
    const left = remainingSeconds({ step: this.lastStep, total, elapsedS, estimateS: this.estimateS });
    const waiting = this.samplingSince == null;
    this.el.remaining.textContent =
      left == null ? "" : waiting ? `${formatDuration(left)} of sampling` : `${formatDuration(left)} left`;
    this.root.dataset.remainingS = left == null ? "" : left.toFixed(1);
  }

  /** {type:"queued", position, eta_s}: the run waits for a place; the estimate counts down in between. */
  queued(msg) {
    const until = msg.eta_s == null ? null : performance.now() + msg.eta_s * 1000;
    this.queue = { position: msg.position, until };
    this.root.dataset.queuePosition = String(msg.position);
    this.showQueue();
  }

  showQueue() {
    if (!this.queue || this.state !== "running") return;
    const { position, until } = this.queue;
    const ahead = position === 0 ? "next in line" : `${position} ahead`;
    const seconds = until == null ? null : Math.ceil((until - performance.now()) / 1000);
    const wait = seconds == null ? "" : seconds > 0 ? `, about ${seconds} s` : ", any moment now";
    const text = `Waiting: ${ahead}${wait}. The server is sampling other runs.`;
    if (this.el.message.textContent !== text) this.message(text);
  }

  message(text, kind = "info") {
    this.el.message.textContent = text;
    this.el.message.dataset.kind = kind;
    // Errors interrupt a screen reader; progress notes wait their turn.
    this.el.message.setAttribute("aria-live", kind === "error" ? "assertive" : "polite");
  }

  /** {type:"start", total, seed, every, image_size, ...} */
  start(msg) {
    this.queue = null;
    delete this.root.dataset.queuePosition;
    this.total = msg.total;
    this.seed = msg.seed;
    this.startMessage = msg;
    this.samplingSince = performance.now();
    this.keeper = new FrameKeeper(msg.total, FILMSTRIP_SLOTS);
    this.root.dataset.total = String(msg.total);
    this.el.progress.max = msg.total;
    this.el.progress.value = 0;
    this.el.step.textContent = `step 0/${msg.total}`;
    const every = msg.every && msg.every > 1 ? `, a frame every ${msg.every} steps` : "";
    this.message(`Sampling ${msg.n ?? ""} image${msg.n === 1 ? "" : "s"} with seed ${msg.seed}${every}…`);
  }

  /** {type:"frame", step, total, t, x_t, x0}: decode both grids, then draw unless a newer one won. */
  async frame(msg) {
    this.keeper?.offer({ step: msg.step, t: msg.t, xt: msg.x_t, x0: msg.x0 });
    this.lastStep = Math.max(this.lastStep, msg.step);
    this.el.progress.max = msg.total;
    this.el.progress.value = msg.step;
    this.el.step.textContent = `step ${msg.step}/${msg.total}`;
    this.el.t.textContent = msg.t >= 0 ? `t = ${msg.t}` : "t = 0 (done)";
    this.root.dataset.step = String(msg.step);
    let images;
    try {
      images = await Promise.all([decodePng(msg.x_t), msg.x0 ? decodePng(msg.x0) : null]);
    } catch {
      this.message("A frame from the server could not be decoded; waiting for the next one.", "warn");
      return;
    }
    // Decoding is asynchronous: a slow frame must not paint over a newer one or the final image.
    if (this.state !== "running" && this.state !== "stopping") return;
    if (msg.step <= this.drawnStep) return;
    this.drawnStep = msg.step;
    drawCrisp(this.el.xt, images[0]);
    if (images[1]) drawCrisp(this.el.x0, images[1]);
    const now = performance.now();
    this.firstDrawAt ??= now;
    this.lastDrawAt = now;
    this.framesDrawn += 1;
    this.root.dataset.framesDrawn = String(this.framesDrawn);
    this.el.frames.textContent = `${this.framesDrawn} frame${this.framesDrawn === 1 ? "" : "s"}`;
    this.el.xt.setAttribute("aria-label", `x_t at step ${msg.step} of ${msg.total}, timestep ${msg.t}`);
    if (this.framesDrawn >= 2) {
      const fps = ((this.framesDrawn - 1) * 1000) / Math.max(1, this.lastDrawAt - this.firstDrawAt);
      this.el.fps.textContent = `${fps.toFixed(fps < 10 ? 1 : 0)} fps`;
    }
    if (this.state === "running" && msg.step === 1) this.message("Denoising…");
  }

  stall(seconds) {
    if (this.state === "running" && !this.queue) {
      this.message(`No word from the server for ${seconds} s; it may be busy with other runs. Press Stop to give up.`, "warn");
    }
  }

  stopping() {
    this.state = "stopping";
    this.message("Stopping…");
  }

  /** {grid, images, seed, elapsed_ms} (from the WebSocket's "done" or POST /sample). */
  async finish(result) {
    clearInterval(this.timer);
    this.el.remaining.textContent = "";
    const clientMs = performance.now() - this.startedAt;
    const total = this.total ?? this.request.steps;
    this.seed = result.seed ?? this.seed;
    this.result = result;
    const grid = await decodePng(result.grid);
    drawCrisp(this.el.xt, grid);
    drawCrisp(this.el.x0, grid);
    this.el.progress.max = total;
    this.el.progress.value = total;
    this.el.step.textContent = `step ${total}/${total}`;
    this.el.t.textContent = "t = 0 (done)";
    this.root.dataset.step = String(total);
    this.root.dataset.total = String(total);
    this.el.elapsed.textContent = formatSeconds(clientMs);
    if (result.elapsed_ms != null) this.el.elapsed.title = `the server spent ${formatSeconds(result.elapsed_ms)} sampling`;
    this.el.xtCaption.innerHTML = "x<sub>0</sub>: the final images";
    this.el.x0Caption.innerHTML = X0_FINAL;
    this.el.xt.setAttribute("aria-label", `The final ${result.images?.length ?? ""} generated images`);
    this.showResult(result, grid);
    this.buildFilmstrip(result);
    this.state = "done";
    this.el.branch.hidden = !this.onBranch; // a branch replays a finished run
    if (result.images?.length) {
      this.imageSize = (await decodePng(result.images[0])).width;
      this.root.classList.toggle("zoomable", this.state === "done");
    }
    const server = result.elapsed_ms != null ? ` (${formatSeconds(result.elapsed_ms)} on the server)` : "";
    this.message(`Done: ${plural(total, "step")} in ${formatSeconds(clientMs)}${server}.`, "success");
  }

  /** A finished run shown again after a reload or Back (main.js keeps it in sessionStorage): its result, no frames. */
  async restore(request, result) {
    this.begin(request, { streaming: false });
    await this.finish(result);
    if (result.elapsed_ms != null) this.el.elapsed.textContent = formatSeconds(result.elapsed_ms);
    this.message(`Your last run, ${plural(request.steps, "step")} from seed ${result.seed}, kept from before this page was reloaded or left.`, "success");
  }

  showResult(result, gridImage) {
    const r = this.request;
    const name = `${r.model}-${r.sampler}${r.steps}-seed${this.seed}`;
    this.el.download.href = pngDataUrl(result.grid);
    this.el.download.download = `${name}.png`;
    this.el.downloadLarge.download = `${name}-large.png`;
    // An enlarged copy with crisp pixels: 28-pixel digits are hard to see at their true size.
    const big = document.createElement("canvas");
    drawCrisp(big, gridImage, { minSize: 1024 });
    big.toBlob((blob) => {
      if (this.largeUrl) URL.revokeObjectURL(this.largeUrl);
      this.largeUrl = URL.createObjectURL(blob);
      this.el.downloadLarge.href = this.largeUrl;
    }, "image/png");
    this.el.seed.textContent = `seed ${this.seed}`;
    const links = (result.images ?? []).map((png, i) => {
      const link = document.createElement("a");
      link.href = pngDataUrl(png);
      link.download = `${name}-${i + 1}.png`;
      link.textContent = String(i + 1);
      link.setAttribute("aria-label", `Download image ${i + 1}`);
      return link;
    });
    this.el.eachLinks.replaceChildren(...links);
    this.el.video.hidden = !canRecordVideo();
    this.el.video.disabled = false;
    this.el.video.textContent = "Make a video (WebM)";
    this.el.videoLink.hidden = true;
    this.el.result.hidden = false;
  }

  /** The filmstrip as a WebM video, offered as a download once it is recorded (a few seconds). */
  async makeVideo() {
    const frames = this.filmstrip.map((frame) => frame.xt);
    const request = this.request;
    this.el.video.disabled = true;
    this.el.video.textContent = "Recording the video…";
    let blob;
    try {
      blob = await recordVideo(frames);
    } catch (error) {
      this.el.video.disabled = false;
      this.el.video.textContent = "Make a video (WebM)";
      this.message(`The browser could not record the video: ${error.message}`, "warn");
      return;
    }
    if (this.request !== request) return; // a new run has started meanwhile
    if (this.videoUrl) URL.revokeObjectURL(this.videoUrl);
    this.videoUrl = URL.createObjectURL(blob);
    this.el.videoLink.href = this.videoUrl;
    this.el.videoLink.download = this.el.download.download.replace(/\.png$/, ".webm");
    this.el.videoLink.dataset.bytes = String(blob.size);
    this.el.video.hidden = true;
    this.el.videoLink.hidden = false;
    this.el.videoLink.focus(); // the button that had the focus is gone
  }

  buildFilmstrip(result) {
    const frames = this.keeper ? this.keeper.frames() : [];
    const total = this.total ?? this.request.steps;
    if (!frames.length || frames.at(-1).step < total) {
      frames.push({ step: total, t: 0, xt: result.grid, x0: result.grid, final: true });
    }
    this.setFilmstrip(frames);
  }

  setFilmstrip(frames) {
    this.filmstrip = frames;
    if (frames.length < 2) {
      this.el.filmstrip.hidden = true;
      return;
    }
    const thumbs = frames.map((frame, index) => {
      const button = document.createElement("div");
      button.className = "rv-thumb";
      button.setAttribute("role", "option");
      button.setAttribute("aria-label", `Step ${frame.step}`);
      const img = document.createElement("img");
      img.src = pngDataUrl(frame.xt);
      img.alt = "";
      const caption = document.createElement("span");
      caption.textContent = frame.step === (this.total ?? frame.step) ? "final" : `${frame.step}`;
      button.append(img, caption);
      button.addEventListener("click", () => {
        this.el.scrub.value = String(index);
        this.showFilmstripFrame(index);
      });
      return button;
    });
    this.el.thumbs.replaceChildren(...thumbs);
    this.el.scrub.max = String(frames.length - 1);
    this.el.scrub.value = String(frames.length - 1);
    this.el.filmstrip.hidden = false;
    this.markThumb(frames.length - 1);
  }

  /** ← → (↑ ↓) step through the strip, Home and End jump to its ends; the focus follows the frame shown. */
  onFilmstripKey(event) {
    const last = this.filmstrip.length - 1;
    const current = Number(this.el.scrub.value);
    const moves = { ArrowLeft: current - 1, ArrowUp: current - 1, ArrowRight: current + 1, ArrowDown: current + 1, Home: 0, End: last };
    if (!(event.key in moves)) return;
    event.preventDefault();
    const index = Math.min(last, Math.max(0, moves[event.key]));
    this.el.scrub.value = String(index);
    this.showFilmstripFrame(index);
    this.el.thumbs.children[index]?.focus();
  }

  markThumb(index) {
    const frame = this.filmstrip[index];
    const total = this.total ?? this.request?.steps;
    const text =
      frame.final || frame.step === total ? `final (step ${frame.step}/${total})` : `step ${frame.step}/${total}, t = ${frame.t}`;
    this.el.scrubValue.textContent = text;
    this.el.scrub.setAttribute("aria-valuetext", text);
    // One Tab stop for the whole strip (roving tabindex): the arrow keys move within it.
    this.el.thumbs.querySelectorAll(".rv-thumb").forEach((thumb, i) => {
      thumb.setAttribute("aria-selected", String(i === index));
      thumb.tabIndex = i === index ? 0 : -1;
    });
  }

  async showFilmstripFrame(index) {
    const frame = this.filmstrip[index];
    if (!frame) return;
    this.markThumb(index);
    const [xt, x0] = await Promise.all([decodePng(frame.xt), frame.x0 ? decodePng(frame.x0) : null]);
    if (Number(this.el.scrub.value) !== index) return; // the visitor has already moved on
    drawCrisp(this.el.xt, xt);
    if (x0) drawCrisp(this.el.x0, x0);
    const total = this.total ?? this.request.steps;
    const isFinal = frame.final || frame.step === total;
    this.root.classList.toggle("zoomable", Boolean(isFinal && this.imageSize));
    this.el.xtCaption.innerHTML = isFinal
      ? "x<sub>0</sub>: the final images"
      : `x<sub>t</sub> at step ${frame.step}/${total} (t = ${frame.t})`;
    this.el.x0Caption.innerHTML = isFinal ? X0_FINAL : `predicted x̂<sub>0</sub>: the model's guess at step ${frame.step}`;
    this.el.progress.value = frame.step;
    this.el.step.textContent = `step ${frame.step}/${total}`;
    this.el.t.textContent = isFinal ? "t = 0 (done)" : `t = ${frame.t}`;
  }

  /** A click on the final grid enlarges the image under the pointer. */
  zoomAt(event) {
    if (!this.root.classList.contains("zoomable")) return;
    const n = this.result.images.length;
    const { sourceWidth, sourceHeight } = this.el.xt.dataset;
    const layout = gridLayout(Number(sourceWidth), Number(sourceHeight), n, this.imageSize);
    const index = layout && cellAt(this.el.xt, event.offsetX, event.offsetY, layout, this.imageSize, n);
    if (index != null) this.openZoom(index);
  }

  openZoom(index) {
    if (!this.result?.images?.length) return;
    zoom().open(this.result.images, index, this.el.download.download.replace(/\.png$/, ""));
  }

  /** A run that ended early: the bar stops where the run stopped (an indeterminate bar would keep moving). */
  endProgress() {
    clearInterval(this.timer);
    this.el.remaining.textContent = "";
    this.el.progress.value = this.drawnStep;
  }

  cancelled(msg) {
    this.endProgress();
    this.state = "cancelled";
    const total = this.total ?? this.request?.steps ?? "?";
    const step = msg?.step ?? this.drawnStep;
    if (msg?.abandoned) {
      // A single POST cannot be cancelled: only the waiting stops.
      this.message("Stopped waiting. The server may still finish this run, but its result will not be shown.", "warn");
    } else {
      const note = msg?.unconfirmed ? " (the server did not confirm; the connection was closed)" : "";
      const hint = this.keeper?.size ? " Scrub back through the frames below." : "";
      this.message(`Stopped at step ${step}/${total}${note}.${hint}`, "warn");
      // the server may have taken a step or two past the last frame drawn: the stats say where it stopped
      this.el.step.textContent = `step ${step}/${total}`;
      this.root.dataset.step = String(step);
    }
    if (this.keeper) this.setFilmstrip(this.keeper.frames());
  }

  fail(error) {
    this.endProgress();
    this.state = "error";
    this.message(error.message || String(error), "error");
    if (this.keeper) this.setFilmstrip(this.keeper.frames());
  }

  clear() {
    clearCanvas(this.el.xt);
    clearCanvas(this.el.x0);
  }
}
