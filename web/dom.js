// Small DOM helpers. Text always goes in through textContent / attributes, never innerHTML:
// file names, API messages and job results are untrusted.

/** el("a", {href, class: "x", dataset: {id}}, "text", child) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

/** A file name on one line, cut with an ellipsis by CSS (`.filename`) when it does not fit; the
 * whole name stays in the text (copy, screen readers) and in the tooltip. */
export function fileName(tag, name, attrs = {}) {
  return el(tag, { ...attrs, class: ["filename", attrs.class].filter(Boolean).join(" "), title: name }, name);
}

const UNITS = ["B", "KB", "MB", "GB", "TB"];

/** 1536 -> "1.5 KB" (powers of 1024, the way file sizes are usually shown). */
export function formatBytes(bytes) {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${UNITS[unit]}`;
}

/** ISO timestamp -> the user's local date and time. */
export function formatTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}
