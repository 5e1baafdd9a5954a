// The signed-in user's uploads, one card each, with their pipeline inside: GET /uploads polled
// every POLL_MS while the page is visible (a hidden tab costs the API nothing). A card shows
// the upload's final state first (processed with its result.json link, or failed with the step
// and the reason), then a row per step and the finalize job (jobs.js). Cards are rebuilt only
// when their upload changed, so a poll does not steal focus or flicker.

import { el, fileName, formatBytes, formatTime } from "./dom.js";
import { buildRow, safeLinks } from "./jobs.js";
import { VisiblePoll } from "./poll.js";
import { nameOf } from "./store.js";

const POLL_MS = 2000;
const PAGE = 20;
const FINAL = ["processed", "failed", "rejected", "aborted"];

/** What the state badge of an upload says. */
const STATE_TEXT = {
  pending: "waiting for the file",
  uploaded: "received",
  queued: "processing",
  processed: "processed",
  failed: "failed",
  rejected: "rejected",
  aborted: "aborted",
};

export class UploadList {
  /**
   * @param {{api: import("./api.js").Api, list: HTMLElement, more: HTMLButtonElement,
   *   empty: HTMLElement, error: HTMLElement, announce: (text: string) => void}} options
   */
  constructor({ api, list, more, empty, error, announce }) {
    this.api = api;
    this.list = list;
    this.more = more;
    this.empty = empty;
    this.error = error;
    this.announce = announce;
    this.first = []; // the newest page, replaced by every poll
    this.older = []; // pages the user asked for with "Load older uploads"
    this.cursor = null; // where the next older page starts
    this.cards = new Map(); // upload id -> {card, signature, finished}
    this.polling = new VisiblePoll(() => this.poll());
    this.loaded = false; // first answer seen: uploads finishing after it are announced
    more.addEventListener("click", () => this.loadMore());
  }

  start() {
    this.polling.start();
  }

  stop() {
    this.polling.stop();
    this.first = [];
    this.older = [];
    this.cursor = null;
    this.loaded = false;
    this.cards.clear();
    this.list.replaceChildren();
    this.error.textContent = "";
  }


  async poll() {
    try {
      const page = await this.api.get(`/uploads?limit=${PAGE}`);
      if (!this.polling.running) return;
      this.first = page.uploads;
      if (!this.older.length) this.cursor = page.nextCursor;
      this.error.textContent = "";
      this.render();
    } catch (err) {
      // Shown next to the list, not announced: a poll error repeats every 2 s.
      if (this.polling.running) this.error.textContent = `Could not refresh the uploads: ${err.message}`;
    }
    this.polling.schedule(POLL_MS);
  }

  async loadMore() {
    if (!this.cursor) return;
    this.more.disabled = true;
    try {
      const page = await this.api.get(`/uploads?limit=${PAGE}&cursor=${encodeURIComponent(this.cursor)}`);
      this.older.push(...page.uploads);
      this.cursor = page.nextCursor;
      this.render();
    } catch (err) {
      this.announce(`Could not load older uploads: ${err.message}`);
    } finally {
      this.more.disabled = false;
    }
  }

  async retry(upload, job, button) {
    button.disabled = true;
    try {
      await this.api.post(`/jobs/${encodeURIComponent(job.id)}/retry`);
      this.announce(`Step ${job.name} of ${label(upload)} is queued again.`);
    } catch (err) {
      this.announce(`Could not retry step ${job.name}: ${err.message}`);
      button.disabled = false;
    }
    this.polling.schedule(0); // the answer's state shows at once rather than at the next tick
  }

  render() {
    // The newest page wins for an upload on both lists (it was fetched last).
    const seen = new Set(this.first.map((upload) => upload.id));
    const uploads = [...this.first, ...this.older.filter((upload) => !seen.has(upload.id))];
    const cards = uploads.map((upload) => this.cardFor(upload));
    // Reorder only when needed: moving a card that has focus would lose it.
    const current = [...this.list.children];
    if (cards.length !== current.length || cards.some((card, i) => card !== current[i])) {
      this.list.replaceChildren(...cards);
    }
    for (const id of this.cards.keys()) {
      if (!uploads.some((upload) => upload.id === id)) this.cards.delete(id);
    }
    this.empty.hidden = uploads.length > 0;
    this.more.hidden = !this.cursor;
    this.loaded = true;
  }

  /** The card of an upload: rebuilt when it changed, otherwise kept (link URLs refreshed). */
  cardFor(upload) {
    // Presigned link URLs change on every answer; they do not make an upload "changed".
    const signature = JSON.stringify(upload, (key, value) => (key === "url" ? undefined : value));
    const known = this.cards.get(upload.id);
    if (known && known.signature === signature) {
      const fresh = [...safeLinks(upload), ...allJobs(upload).flatMap(safeLinks)];
      known.card.querySelectorAll("a[data-link]").forEach((anchor, i) => {
        if (fresh[i]) anchor.setAttribute("href", fresh[i].url);
      });
      return known.card;
    }
    const finished = Boolean(upload.pipeline?.finished) || FINAL.includes(upload.state);
    if (known && this.loaded && finished && !known.finished) this.announce(finishedText(upload));
    const card = buildCard(upload, (job, button) => this.retry(upload, job, button));
    if (known) known.card.replaceWith(card);
    this.cards.set(upload.id, { card, signature, finished });
    return card;
  }
}

/** What the status line says when an upload is done: its final state (and the failing step),
 * or, for an upload from before pipelines (it stays "queued"), that its jobs are. */
function finishedText(upload) {
  if (!FINAL.includes(upload.state)) return `The jobs of ${label(upload)} are finished.`;
  const why = upload.state === "failed" && upload.failedStep ? ` at ${upload.failedStep}` : "";
  return `${label(upload)} ${upload.state}${why}.`;
}

function label(upload) {
  return upload.filename || nameOf(upload.id) || `upload ${upload.id}`;
}

/** The steps, then the finalize job (it runs last). */
function allJobs(upload) {
  const pipeline = upload.pipeline || {};
  return [...(pipeline.steps || []), ...(pipeline.finalize ? [pipeline.finalize] : [])];
}

function buildCard(upload, onRetry) {
  const name = label(upload);
  const jobs = allJobs(upload);
  const size = upload.sizeActual ?? upload.size;
  return el(
    "li",
    {
      class: "upload-card",
      "data-testid": "upload-card",
      dataset: { uploadId: upload.id, state: upload.state, finished: String(Boolean(upload.pipeline?.finished)) },
    },
    el(
      "div",
      { class: "row-head" },
      fileName("h3", name, { class: "upload-name" }),
      el("span", { class: `badge final state-${upload.state}`, "data-role": "final-state" }, STATE_TEXT[upload.state] || upload.state),
    ),
    el(
      "p",
      { class: "muted small" },
      `${formatBytes(size || 0)}, ${formatTime(upload.createdAt)}`,
      upload.finishedAt ? ` — finished ${formatTime(upload.finishedAt)}` : "",
    ),
    ...outcome(upload),
    jobs.length
      ? el(
          "table",
          { class: "jobs", role: "table", "aria-label": `Steps of ${name}` },
          el(
            "thead",
            { role: "rowgroup" },
            el(
              "tr",
              { role: "row" },
              ...[
                ["job", "Step"],
                ["state", "State"],
                ["progress", "Progress"],
                ["attempts", "Attempts"],
                ["result", "Result"],
              ].map(([column, text]) => el("th", { scope: "col", role: "columnheader", class: `col-${column}` }, text)),
            ),
          ),
          el("tbody", { role: "rowgroup" }, ...jobs.map((job) => buildRow(job, name, (button) => onRetry(job, button)))),
        )
      : el("p", { class: "muted small" }, upload.state === "pending" ? "Waiting for the file." : "No steps yet."),
  );
}

/** The final state, prominent: the result link, or the failing step and its reason. */
function outcome(upload) {
  const parts = [];
  const links = safeLinks(upload);
  if (links.length) {
    parts.push(
      el(
        "p",
        { class: "result-link" },
        "Result: ",
        ...links.map((link) =>
          fileName("a", link.name, {
            href: link.url,
            "data-link": "",
            "data-testid": "result-link",
            target: "_blank",
            rel: "noopener",
          }),
        ),
      ),
    );
  }
  if (upload.outputsArchived) {
    parts.push(el("p", { class: "archived" }, "Result archived: ask an administrator to restore it"));
  }
  if (upload.state === "failed") {
    const step = upload.failedStep ? `Step ${upload.failedStep} failed` : "A step failed";
    parts.push(el("p", { class: "upload-error", "data-role": "upload-error" }, `${step}: ${upload.error || "no reason given"}`));
  } else if (upload.error) {
    parts.push(el("p", { class: "upload-error", "data-role": "upload-error" }, upload.error));
  }
  return parts;
}
