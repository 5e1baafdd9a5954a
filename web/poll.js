// A poll that runs only while the page is visible (a hidden tab costs the API nothing) and
// starts again at once when the page comes back: the uploads' cards and the exports use it.

export class VisiblePoll {
  /** @param {() => void} poll called at each tick; it schedules the next one itself */
  constructor(poll) {
    this.poll = poll;
    this.timer = null;
    this.running = false;
    this.onVisibility = () => this.schedule(0);
  }

  start() {
    this.running = true;
    document.addEventListener("visibilitychange", this.onVisibility);
    this.schedule(0);
  }

  stop() {
    this.running = false;
    clearTimeout(this.timer);
    document.removeEventListener("visibilitychange", this.onVisibility);
  }

  /** Poll after `ms` (0: now), unless stopped or the page is hidden. */
  schedule(ms) {
    clearTimeout(this.timer);
    if (!this.running || document.visibilityState !== "visible") return;
    this.timer = setTimeout(() => this.poll(), ms);
  }
}
