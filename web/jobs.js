// One job of an upload's pipeline (a step, or its finalize job) as a table row: state,
// progress, attempts, result links, a summary of its result, its error and, when it failed, a
// Retry button. The rows sit in their upload's card (uploads.js); the same markup is a table
// row on a wide screen and a small card on a narrow one (style.css).

import { el, fileName, formatBytes, formatTime } from "./dom.js";

/** Presigned S3 URLs are http(s); anything else (javascript:, data:) is not made a link. */
export function safeLinks(job) {
  return (job.links || []).filter((link) => /^https?:\/\//i.test(link.url));
}

/** The row of one job of the upload `label` names (for the progress bar's accessible name). */
export function buildRow(job, label, onRetry) {
  const percent = job.state === "completed" ? 100 : Math.max(0, Math.min(100, Number(job.progress) || 0));
  // data-label: the column's name, shown before the cell when the row is a card.
  const cell = (column, name, ...children) =>
    el("td", { role: "cell", class: `col-${column}`, "data-label": name }, ...children);
  return el(
    "tr",
    {
      role: "row",
      "data-testid": "job-row",
      class: job.superseded ? "superseded" : null,
      dataset: {
        jobId: job.id,
        jobName: job.name,
        ...(job.uploadId ? { uploadId: job.uploadId } : {}), // none for an export
        state: job.state,
        superseded: job.superseded ? "true" : "false",
      },
    },
    cell("job", null, el("strong", {}, job.name), el("div", { class: "muted small" }, formatTime(job.createdAt))),
    cell(
      "state",
      null,
      el("span", { class: `badge state-${job.state}` }, job.state),
      // A job of an older version of its upload's object: its result describes bytes the
      // upload no longer holds. On a line of its own, so the badge never has to widen.
      job.superseded ? el("div", { class: "small muted", "data-role": "superseded" }, "superseded") : null,
    ),
    cell(
      "progress",
      null,
      el("progress", {
        max: 100,
        value: percent,
        "aria-label": `Progress of ${job.name} for ${label}`,
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
  if (job.state === "failed" && !job.superseded) {
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
