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

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** 1536 -> "1.5 KiB": binary units with binary names, by the same rules as the CLI's
 * `human_bytes` (offload_cli/progress.py) so both print the same text for the same size:
 * whole bytes below 1 KiB, then one decimal, TiB at most; a tie rounds to even (Python's
 * format does, `toFixed` would round 1.25 up). */
export function formatBytes(bytes) {
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${roundHalfEven(value, unit === 0 ? 0 : 1)} ${UNITS[unit]}`;
}

/** `value` with `digits` decimals, an exact tie rounded to the even digit. A size divided by
 * powers of 1024 is a binary fraction, so `value * 10 ** digits` is exact and a tie shows. */
function roundHalfEven(value, digits) {
  const scale = 10 ** digits;
  const scaled = value * scale;
  const floor = Math.floor(scaled);
  if (scaled - floor !== 0.5) return value.toFixed(digits);
  return ((floor % 2 === 0 ? floor : floor + 1) / scale).toFixed(digits);
}

/** ISO timestamp -> the user's local date and time. */
export function formatTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}
