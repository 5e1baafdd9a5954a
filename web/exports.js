// Exports: the jobs a user asks for by name (POST /jobs, today `export`: the caller's jobs of a
// period as a CSV), followed like every job. The form asks for one; the list is
// GET /jobs?name=export, polled every POLL_MS while the page is visible and until every export
// on it is finished, each export a row of the same markup as an upload's steps (jobs.js), with
// its CSV link once completed.

import { el } from "./dom.js";
import { buildRow } from "./jobs.js";
import { VisiblePoll } from "./poll.js";

const POLL_MS = 2000;
const FINISHED = ["completed", "failed"];

/** `yyyy-mm-dd` of a Date, in UTC (the API's days are UTC days). */
function day(date) {
  return date.toISOString().slice(0, 10);
}

export class ExportList {
  /**
   * @param {{api: import("./api.js").Api, form: HTMLFormElement, list: HTMLElement,
   *   empty: HTMLElement, error: HTMLElement, announce: (text: string) => void}} options
   */
  constructor({ api, form, list, empty, error, announce }) {
    this.api = api;
    this.form = form;
    this.list = list;
    this.empty = empty;
    this.error = error;
    this.announce = announce;
    this.polling = new VisiblePoll(() => this.poll());
    const today = new Date();
    form.elements.from.value = day(new Date(today.getTime() - 30 * 86400000));
    form.elements.to.value = day(today);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.request();
    });
  }

  start() {
    this.polling.start();
  }

  stop() {
    this.polling.stop();
    this.list.replaceChildren();
    this.error.textContent = "";
  }


  async request() {
    const button = this.form.querySelector("button");
    const params = { from: this.form.elements.from.value, to: this.form.elements.to.value };
    button.disabled = true;
    try {
      await this.api.post("/jobs", { name: "export", params });
      this.announce(`Export of ${params.from} to ${params.to} requested.`);
    } catch (err) {
      this.announce(`Could not request the export: ${err.message}`);
    } finally {
      button.disabled = false;
    }
    this.polling.schedule(0);
  }

  async retry(job, button) {
    button.disabled = true;
    try {
      await this.api.post(`/jobs/${encodeURIComponent(job.id)}/retry`);
      this.announce("The export is queued again.");
    } catch (err) {
      this.announce(`Could not retry the export: ${err.message}`);
      button.disabled = false;
    }
    this.polling.schedule(0);
  }

  async poll() {
    let pending = false;
    try {
      const page = await this.api.get("/jobs?name=export&limit=20");
      if (!this.polling.running) return;
      this.error.textContent = "";
      this.render(page.jobs);
      pending = page.jobs.some((job) => !FINISHED.includes(job.state));
    } catch (err) {
      if (this.polling.running) this.error.textContent = `Could not refresh the exports: ${err.message}`;
      pending = true;
    }
    // Nothing in flight: no poll until the next request (or the page becomes visible again).
    if (pending) this.polling.schedule(POLL_MS);
  }

  render(jobs) {
    const rows = jobs.map((job) => buildRow(job, "export", (button) => this.retry(job, button)));
    this.list.replaceChildren(...rows);
    this.empty.hidden = jobs.length > 0;
  }
}

/** The table the export rows go in (the same columns as an upload's steps). */
export function exportTable() {
  const header = [
    ["job", "Job"],
    ["state", "State"],
    ["progress", "Progress"],
    ["attempts", "Attempts"],
    ["result", "Result"],
  ].map(([column, text]) => el("th", { scope: "col", role: "columnheader", class: `col-${column}` }, text));
  const body = el("tbody", { role: "rowgroup", id: "exports" });
  const table = el(
    "table",
    { class: "jobs", role: "table", "aria-label": "Exports" },
    el("thead", { role: "rowgroup" }, el("tr", { role: "row" }, ...header)),
    body,
  );
  return { table, body };
}
