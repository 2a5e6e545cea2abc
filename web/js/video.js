// A run as a short video: the filmstrip's frames (noise to image), drawn with crisp pixels into a
// canvas that a MediaRecorder turns into WebM. No library: the browser encodes it.

import { decodePng } from "./pixels.js";

export function canRecordVideo() {
  return typeof MediaRecorder === "function" && MediaRecorder.isTypeSupported?.("video/webm") === true;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * frames: base64 PNG grids, oldest first. Each is shown for 1/fps s, the last one for `holdS` more.
 * Resolves to a video/webm Blob. The video is at least `minSize` pixels a side (whole-number scale).
 */
export async function recordVideo(frames, { fps = 8, holdS = 1, minSize = 480 } = {}) {
  const images = await Promise.all(frames.map(decodePng));
  // Frames may be previews smaller than the final grid: the first one sets the size, the rest fit into it.
  const scale = Math.max(1, Math.ceil(minSize / Math.max(images[0].width, images[0].height)));
  const canvas = document.createElement("canvas");
  canvas.width = images[0].width * scale;
  canvas.height = images[0].height * scale;
  const ctx = canvas.getContext("2d");
  const draw = (image) => {
    ctx.imageSmoothingEnabled = image.width > images[0].width; // enlarged crisp, shrunk smooth
    ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  };
  draw(images[0]); // a stream starts from what the canvas holds
  const stream = canvas.captureStream(fps);
  const recorder = new MediaRecorder(stream, { mimeType: "video/webm" });
  const chunks = [];
  recorder.ondataavailable = (event) => {
    if (event.data.size) chunks.push(event.data);
  };
  const stopped = new Promise((resolve) => {
    recorder.onstop = resolve;
  });
  recorder.start();
  for (const image of images) {
    draw(image);
    await sleep(1000 / fps);
  }
  await sleep(holdS * 1000);
  recorder.stop();
  await stopped;
  for (const track of stream.getTracks()) track.stop();
  return new Blob(chunks, { type: "video/webm" });
}
