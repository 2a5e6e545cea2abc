// The filmstrip's memory: a run can stream up to a thousand frames, but a visitor scrubs through a
// handful. Keep about `slots` frames spread evenly over the run, plus always the latest one.

export class FrameKeeper {
  /** total: the number of steps of the run; slots: how many evenly spaced frames to keep. */
  constructor(total, slots = 20) {
    this.total = Math.max(1, total);
    this.slots = Math.max(1, slots);
    this.bySlot = new Map(); // slot index → the first frame that arrived in that slot
    this.latest = null;
  }

  /** Slot of a step: steps 1..total split into `slots` equal ranges. */
  slotOf(step) {
    const clamped = Math.min(Math.max(step, 1), this.total);
    return Math.min(this.slots - 1, Math.floor(((clamped - 1) * this.slots) / this.total));
  }

  /** Offer a frame {step, ...}. Frames may skip steps (the server drops stale ones); that is fine. */
  offer(frame) {
    const slot = this.slotOf(frame.step);
    if (!this.bySlot.has(slot)) this.bySlot.set(slot, frame);
    if (!this.latest || frame.step >= this.latest.step) this.latest = frame;
  }

  /** The kept frames, oldest first, ending with the latest. */
  frames() {
    const kept = [...this.bySlot.values()];
    if (this.latest && !kept.includes(this.latest)) kept.push(this.latest);
    return kept.sort((a, b) => a.step - b.step);
  }

  get size() {
    return this.frames().length;
  }
}
