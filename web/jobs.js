// The signed-in user's jobs: GET /jobs polled every POLL_MS while the page is visible (a
// hidden tab costs the API nothing), rendered as table rows that are updated in place so a
// poll does not steal focus or flicker.

import { el, fileName, formatBytes, formatTime } from "./dom.js";
import { nameOf } from "./store.js";

const POLL_MS = 2000;
const PAGE = 20;

export class JobList {
  /**
   * @param {{api: import("./api.js").Api, tbody: HTMLElement, more: HTMLButtonElement,
   *   empty: HTMLElement, error: HTMLElement, announce: (text: string) => void}} options
   */
  constructor({ api, tbody, more, empty, error, announce }) {
    this.api = api;
    this.tbody = tbody;
    this.more = more;
    this.empty = empty;
    this.error = error;
    this.announce = announce;
    this.first = []; // the newest page, replaced by every poll
    this.older = []; // pages the user asked for with "Load older jobs"
    this.cursor = null; // where the next older page starts
    this.rows = new Map(); // job id -> {row, signature}
    this.timer = null;
    this.running = false;
    this.loaded = false; // first answer seen: state changes after it are announced
    this.onVisibility = () => this.schedule(0);
    more.addEventListener("click", () => this.loadMore());
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
    this.first = [];
    this.older = [];
    this.cursor = null;
    this.loaded = false;
    this.rows.clear();
    this.tbody.replaceChildren();
    this.error.textContent = "";
  }

  /** Poll after `ms` (0: now), unless the page is hidden: visibilitychange restarts it. */
  schedule(ms) {
    clearTimeout(this.timer);
    if (!this.running || document.visibilityState !== "visible") return;
    this.timer = setTimeout(() => this.poll(), ms);
  }

  async poll() {
    try {
      const page = await this.api.get(`/jobs?limit=${PAGE}`);
      if (!this.running) return;
      this.first = page.jobs;
      if (!this.older.length) this.cursor = page.nextCursor;
      this.error.textContent = "";
      this.render();
    } catch (err) {
      // Shown next to the list, not announced: a poll error repeats every 2 s.
      if (this.running) this.error.textContent = `Could not refresh the jobs: ${err.message}`;
    }
    this.schedule(POLL_MS);
  }

  async loadMore() {
    if (!this.cursor) return;
    this.more.disabled = true;
    try {
      const page = await this.api.get(`/jobs?limit=${PAGE}&cursor=${encodeURIComponent(this.cursor)}`);
      this.older.push(...page.jobs);
      this.cursor = page.nextCursor;
      this.render();
    } catch (err) {
      this.announce(`Could not load older jobs: ${err.message}`);
    } finally {
      this.more.disabled = false;
    }
  }

  async retry(job, button) {
    button.disabled = true;
    try {
      const queued = await this.api.post(`/jobs/${encodeURIComponent(job.id)}/retry`);
      // Show the answer (state "queued") now rather than at the next poll.
      for (const list of [this.first, this.older]) {
        const i = list.findIndex((item) => item.id === queued.id);
        if (i >= 0) list[i] = { ...list[i], ...queued };
      }
      this.render();
      this.announce(`Job ${job.name} for ${fileLabel(job)} is queued again.`);
    } catch (err) {
      this.announce(`Could not retry job ${job.name}: ${err.message}`);
      button.disabled = false;
    }
    this.schedule(0);
  }

  render() {
    // The newest page wins for a job on both lists (it was fetched last).
    const seen = new Set(this.first.map((job) => job.id));
    const jobs = [...this.first, ...this.older.filter((job) => !seen.has(job.id))];
    const rows = jobs.map((job) => this.rowFor(job));
    // Reorder only when needed: moving a row that has focus would lose it.
    const current = [...this.tbody.children];
    if (rows.length !== current.length || rows.some((row, i) => row !== current[i])) {
      this.tbody.replaceChildren(...rows);
    }
    for (const id of this.rows.keys()) if (!jobs.some((job) => job.id === id)) this.rows.delete(id);
    this.empty.hidden = jobs.length > 0;
    this.more.hidden = !this.cursor;
    this.loaded = true;
  }

  /** The row of a job: rebuilt when the job changed, otherwise kept (links refreshed). */
  rowFor(job) {
    // Presigned link URLs change on every answer; they do not make a job "changed".
    const signature = JSON.stringify({ ...job, links: (job.links || []).map((l) => l.name) });
    const known = this.rows.get(job.id);
    if (known && known.signature === signature) {
      const anchors = known.row.querySelectorAll("a[data-link]");
      safeLinks(job).forEach((link, i) => anchors[i]?.setAttribute("href", link.url));
      return known.row;
    }
    if (known && this.loaded && known.state !== job.state && ["completed", "failed"].includes(job.state)) {
      this.announce(`Job ${job.name} for ${fileLabel(job)} ${job.state}.`);
    }
    const row = buildRow(job, (button) => this.retry(job, button));
    if (known) known.row.replaceWith(row);
    this.rows.set(job.id, { row, signature, state: job.state });
    return row;
  }
}

/** Presigned S3 URLs are http(s); anything else (javascript:, data:) is not made a link. */
function safeLinks(job) {
  return (job.links || []).filter((link) => /^https?:\/\//i.test(link.url));
}

function fileLabel(job) {
  return job.filename || nameOf(job.uploadId) || `upload ${job.uploadId}`;
}

function buildRow(job, onRetry) {
  const percent = job.state === "completed" ? 100 : Math.max(0, Math.min(100, Number(job.progress) || 0));
  const name = job.filename || nameOf(job.uploadId);
  // data-label: the column's name, shown before the cell when the row is a card.
  const cell = (column, label, ...children) =>
    el("td", { role: "cell", class: `col-${column}`, "data-label": label }, ...children);
  return el(
    "tr",
    {
      role: "row",
      "data-testid": "job-row",
      dataset: { jobId: job.id, jobName: job.name, uploadId: job.uploadId, state: job.state },
    },
    cell("job", null, el("strong", {}, job.name), el("div", { class: "muted small" }, formatTime(job.createdAt))),
    cell(
      "file",
      null,
      name ? fileName("div", name) : null,
      el("div", { class: "muted small mono", title: "upload id" }, job.uploadId),
    ),
    cell("state", null, el("span", { class: `badge state-${job.state}` }, job.state)),
    cell(
      "progress",
      null,
      el("progress", {
        max: 100,
        value: percent,
        "aria-label": `Progress of job ${job.name} for ${fileLabel(job)}`,
      }),
      el("span", { class: "small" }, ` ${percent}%`),
    ),
    cell("attempts", "Attempts", `${job.attempts ?? 0} / ${job.maxAttempts ?? "?"}`),
    cell("result", "Result", ...details(job, onRetry)),
  );
}

function details(job, onRetry) {
  const parts = [];
  const links = safeLinks(job);
  if (links.length) {
    parts.push(
      el(
        "ul",
        { class: "links" },
        ...links.map((link) =>
          el(
            "li",
            {},
            fileName("a", link.name, { href: link.url, "data-link": "", target: "_blank", rel: "noopener" }),
          ),
        ),
      ),
    );
  }
  if (job.outputsArchived) {
    const text = "Outputs archived: ask an administrator to restore them";
    parts.push(el("p", { class: "archived" }, text));
  }
  if (job.result && typeof job.result === "object") parts.push(resultSummary(job.result));
  if (job.error && (job.state === "failed" || job.state === "retrying")) {
    parts.push(el("p", { class: "job-error" }, job.error));
  }
  if (job.state === "failed") {
    const button = el("button", { type: "button", "data-testid": "retry-job", class: "secondary" }, "Retry");
    button.addEventListener("click", () => onRetry(button));
    parts.push(button);
  }
  return parts;
}

/** A processor's result as key/value pairs: results differ per job name, so nothing here
 * depends on one processor; sizes only get a friendlier form next to the raw number. */
function resultSummary(result) {
  const list = el("dl", { class: "result" });
  for (const [key, value] of Object.entries(result)) {
    let text = typeof value === "object" && value !== null ? JSON.stringify(value) : String(value);
    if (typeof value === "number" && /size|bytes/i.test(key)) text = `${formatBytes(value)} (${value} bytes)`;
    list.append(el("dt", {}, key), el("dd", { class: "mono" }, text));
  }
  return list;
}
