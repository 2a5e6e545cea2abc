// Wiring: load the models, connect the form to the live view, and keep the other sections in step.

import { getConfig, getModels } from "./api.js";
import { Compare } from "./compare.js";
import { Controls, describeRun, validateSettings } from "./controls.js";
import { Examples } from "./examples.js";
import { ForwardView } from "./forward-view.js";
import { loadSession, RunHistory, saveSession, storedRequest } from "./history.js";
import { startRun } from "./runner.js";
import { RunView } from "./run-view.js";
import { Share } from "./share.js";
import { StartImage } from "./start-image.js";

const form = document.getElementById("generate-form");
const generateButton = document.getElementById("generate");
const stopButton = document.getElementById("stop");
const pageError = document.getElementById("page-error");
const LAST_RUN_KEY = "ddpm-demo.last-run"; // the live view's last result, for a reload or Back (sessionStorage)

const controls = new Controls(form);
const mainView = new RunView(document.getElementById("main-view"), { title: "Live view" });
const branchViews = document.getElementById("branch-views");
const branchNotice = document.getElementById("branch-notice");
const forward = new ForwardView();
const startImage = new StartImage({ forwardImage: () => forward.x0, onChange: () => share.refresh() });
controls.startImage = startImage;
const runHistory = new RunHistory(document.getElementById("history"), {
  onReuseSeed: (seed) => {
    controls.useSeed(seed);
    document.getElementById("seed").focus();
  },
  samplerInfo: (name) => controls.config?.samplers.find((s) => s.name === name) ?? null,
});
const examples = new Examples(controls, { onRunFinished: (request, result) => recordRun(request, result) });
const compare = new Compare(controls, { onRunFinished: (request, result, how) => recordRun(request, result, how) });

let currentRun = null;
let lastRun = null; // {request, seed} of the run the live view shows
let branch = null; // {from, at_step}: the next run continues lastRun from that step

/** "Branch from this step": the next Generate replays the run on screen to `step`, then goes on with the form's settings. */
function chooseBranch(step) {
  branch = { from: { ...lastRun.request, seed: lastRun.seed }, at_step: step };
  branchNotice.replaceChildren(
    `Generate now branches the run with seed ${lastRun.seed} at step ${step}: change the sampler, steps, class or guidance, or keep them to get the same images. `,
  );
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "link-button";
  cancel.textContent = "Cancel the branch";
  cancel.addEventListener("click", () => {
    branch = null;
    branchNotice.hidden = true;
    setRunning(false);
  });
  branchNotice.append(cancel);
  branchNotice.hidden = false;
  setRunning(false); // Generate now says it branches
  // the notice sits with the settings, far below the filmstrip on a phone: show it, as the settings are next
  bringIntoView(branchNotice, "center");
  generateButton.focus({ preventScroll: true });
}

/**
 * A branch request: the form's sampler, steps, parameters, class and guidance, from the original's
 * start (its model, images and seed; its starting image and interpolation are inherited, so left out).
 */
function branchRequest(request) {
  const { init_image, strength, mask, interpolate_to, ...settings } = request;
  const { from, at_step } = branch;
  return { ...settings, model: from.model, n: from.n, seed: from.seed, branch: { from, at_step } };
}

/** Two requests that differ at most in their seed and streaming give the same images for one seed. */
function sameSettings(a, b) {
  const settings = ({ seed, every, ...rest }) => JSON.stringify(rest);
  return settings(a) === settings(b);
}

const share = new Share({
  // The form's settings; with an empty seed box, the seed of the run on screen if the form still matches it.
  current() {
    if (!controls.config) return null;
    const { request, errors } = validateSettings(controls.values(), controls.model, controls.config);
    if (errors.length) return null;
    const shown = request.seed == null && lastRun && sameSettings(lastRun.request, request) ? lastRun.seed : null;
    return { request, seed: request.seed ?? shown };
  },
  linkFor: (request, seed) => controls.linkFor(request, seed),
});
for (const type of ["input", "change"]) form.addEventListener(type, () => share.refresh());

function recordRun(request, result, { sideBySide = false } = {}) {
  runHistory.add(request, result, controls.models.find((m) => m.name === request.model), { sideBySide });
  // two runs sharing the server each run slower than one alone: no measure of its speed
  if (result.elapsed_ms != null && !sideBySide) controls.recordTiming(request, result.elapsed_ms);
  // the server's sampling loop has just measured its speed again: the next estimate uses that
  getModels().then(
    (models) => controls.updateSpeeds(models),
    () => {}, // an unreachable server shows itself at the next run; the estimate keeps its last figure
  );
}

function setRunning(running) {
  // Disabling the focused button would drop a keyboard user's focus on the page's body: hand it over.
  const focusWasOn = document.activeElement;
  generateButton.disabled = running || !controls.model;
  stopButton.disabled = !running;
  if (running && focusWasOn === generateButton) stopButton.focus();
  if (!running && focusWasOn === stopButton && !generateButton.disabled) generateButton.focus();
  generateButton.textContent = running ? "Generating…" : branch ? "Generate the branch" : "Generate";
  form.setAttribute("aria-busy", String(running));
}

/** On a phone the live view and the settings are a screen apart: show `element`, or the visitor sees nothing happen. */
function bringIntoView(element, block = "start") {
  const rect = element.getBoundingClientRect();
  if (rect.top > window.innerHeight * 0.6 || rect.bottom < 0) {
    const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    element.scrollIntoView({ block, behavior: smooth ? "smooth" : "auto" });
  }
}

async function generate() {
  if (currentRun) return;
  const settings = controls.read();
  if (!settings) return;
  if (branch) {
    runBranch(branchRequest(settings.request));
    return;
  }
  const { request, stream } = settings;
  const outcome = await runInView(request, mainView, stream);
  if (outcome.status === "done") {
    const seed = outcome.result.seed ?? mainView.seed;
    controls.showSeedUsed(seed);
    recordRun({ ...request, seed }, outcome.result);
    lastRun = { request, seed };
    const { grid, images, elapsed_ms } = outcome.result;
    saveSession(LAST_RUN_KEY, { request: storedRequest(request), result: { grid, images, seed, elapsed_ms } });
    share.refresh();
    // The address bar now reproduces this run: copy it to share these exact images.
    history.replaceState(null, "", controls.linkFor(request, seed) + window.location.hash);
    forward.setGenerated({
      images: outcome.result.images ?? [],
      frames: mainView.filmstrip,
      n: request.n,
      imageSize: controls.models.find((m) => m.name === request.model)?.image_size ?? 28,
      frameSize: mainView.startMessage?.preview_size,
    });
  } else if (mainView.seed != null) {
    controls.showSeedUsed(mainView.seed);
  }
}

/** A branch runs into a view of its own, beside the original (which stays in the live view). */
async function runBranch(request) {
  const box = document.createElement("div");
  branchViews.prepend(box);
  const title = `Branch at step ${request.branch.at_step}: ${describeRun(request, controls.config)}`;
  const outcome = await runInView(request, new RunView(box, { title }));
  if (outcome.status === "done") recordRun(request, outcome.result);
}

/** The one run of the main form at a time, into `view`: Generate is Stop until it ends. */
async function runInView(request, view, stream) {
  // the form may change while the run goes: the view names the run it shows
  if (view === mainView) view.el.title.textContent = `Live view: ${request.model}, ${describeRun(request, controls.config)}`;
  const run = startRun(request, view, { stream, estimateS: controls.estimateFor(request)?.seconds ?? null });
  currentRun = run;
  setRunning(true);
  bringIntoView(view.root);
  const outcome = await run.finished;
  currentRun = null;
  setRunning(false);
  return outcome;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  generate();
});
stopButton.addEventListener("click", () => currentRun?.stop());
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && (currentRun || compare.running || examples.running)) {
    currentRun?.stop();
    compare.stop();
    examples.stop();
  }
});

// Leaving the page closes its connections, and the server stops a run whose client has gone: ask first.
window.addEventListener("beforeunload", (event) => {
  if (currentRun || compare.running || examples.running) event.preventDefault();
});

controls.onModelChanged((model) => {
  branch = null; // a branch belongs to a run of the model shown before
  setRunning(Boolean(currentRun));
  compare.setModel(model);
  examples.setModel(model);
  forward.setModel(model);
  startImage.setModel(model);
  branchNotice.hidden = true;
});

async function loadModels() {
  try {
    // the server's samplers, limits and defaults first: the form is built from them
    const [config, models] = await Promise.all([getConfig(), getModels()]);
    controls.setConfig(config);
    compare.setConfig(config);
    startImage.setConfig(config);
    // A server that takes starting images takes branches too (one release of the API).
    mainView.onBranch = config.limits.max_init_image_bytes == null ? null : chooseBranch;
    controls.setModels(models);
    controls.applyLink(window.location.search);
    share.refresh();
    runHistory.restore();
    const last = loadSession(LAST_RUN_KEY);
    if (last && !currentRun) {
      mainView.el.title.textContent = `Live view: ${last.request.model}, ${describeRun(last.request, config)}`;
      mainView.restore(last.request, last.result);
    }
    if (models.length === 0) {
      pageError.textContent =
        "The server has no models loaded. Put a checkpoint (.safetensors) in its checkpoints folder and restart it.";
      pageError.hidden = false;
    } else {
      pageError.hidden = true;
    }
  } catch (error) {
    pageError.replaceChildren(`Could not load the server's settings and models: ${error.message} `);
    const retry = document.createElement("button");
    retry.type = "button";
    retry.className = "secondary";
    retry.textContent = "Try again";
    retry.addEventListener("click", loadModels);
    pageError.append(retry);
    pageError.hidden = false;
  }
  document.body.dataset.ready = "true"; // for tests: the page has finished loading what it can
}

loadModels();
