// The page: wires sign-in, the transfers, resumable uploads and the uploads' cards together.
// The work itself is in auth.js (Cognito), api.js (the API), upload.js (S3 transfers),
// store.js (what survives a reload), uploads.js (a card per upload) and jobs.js (its steps).

import { Api, loadConfig } from "./api.js";
import { Auth, CognitoError, NewPasswordRequired } from "./auth.js";
import { el, fileName, formatBytes, formatTime } from "./dom.js";
import { findSavedUpload, forgetUpload, sameFile, savedUploads } from "./store.js";
import { UploadTask } from "./upload.js";
import { ExportList, exportTable } from "./exports.js";
import { UploadList } from "./uploads.js";

const $ = (id) => document.getElementById(id);
const button = (text, testid, attrs = {}) =>
  el("button", { type: "button", "data-testid": testid, ...attrs }, text);

const STATE_TEXT = {
  uploading: "uploading",
  completing: "finishing",
  done: "uploaded",
  failed: "failed",
  cancelled: "cancelled",
};

let auth;
let api;
let exports; // the exports asked for (GET /jobs?name=export)
let processing; // the uploads' cards (GET /uploads)
const rows = new Map(); // UploadTask -> its <li>, in the order files were picked

/** Say something in the live region (read out by screen readers). */
function announce(text, kind = "info") {
  const status = $("status");
  status.textContent = text;
  status.dataset.kind = kind;
}

async function main() {
  let config;
  try {
    config = await loadConfig();
  } catch (err) {
    announce(`This page is not configured: ${err.message}`, "error");
    return;
  }
  auth = new Auth(config);
  auth.onSignedOut = (reason) => showSignedOut(reason);
  api = new Api(config.apiBase, auth);
  processing = new UploadList({
    api,
    list: $("processing"),
    more: $("processing-more"),
    empty: $("processing-empty"),
    error: $("processing-error"),
    announce,
  });
  const { table, body } = exportTable();
  $("exports-table").replaceChildren(table);
  exports = new ExportList({
    api,
    form: $("export-form"),
    list: body,
    empty: $("exports-empty"),
    error: $("exports-error"),
    announce,
  });

  $("signin-form").addEventListener("submit", signIn);
  $("new-password-form").addEventListener("submit", setNewPassword);
  $("signout-button").addEventListener("click", () => {
    auth.signOut();
    showSignedOut("Signed out.");
  });
  $("file-input").addEventListener("change", (event) => {
    const files = [...event.target.files];
    event.target.value = ""; // picking the same file again must fire "change" again
    startFiles(files);
  });
  wireDropZone($("drop-zone"));
  window.addEventListener("beforeunload", (event) => {
    // Leaving mid-upload loses the transfer in flight (multipart uploads can be resumed).
    if ([...rows.keys()].some((task) => !task.finished)) event.preventDefault();
  });

  if (auth.signedIn) showSignedIn();
  else showSignedOut();
}

// --- session ---------------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const submit = $("signin-button");
  const error = $("signin-error");
  submit.disabled = true;
  error.textContent = "";
  announce("Signing in…");
  try {
    await auth.signIn($("username").value.trim(), $("password").value);
    $("password").value = "";
    showSignedIn();
  } catch (err) {
    $("password").value = "";
    if (err instanceof NewPasswordRequired) {
      askNewPassword(err);
      return;
    }
    const message = err instanceof CognitoError ? err.display : String(err.message || err);
    error.textContent = `Sign-in failed: ${message}`;
    announce(`Sign-in failed: ${message}`, "error");
  } finally {
    submit.disabled = false;
  }
}

let pendingChallenge = null; // the NEW_PASSWORD_REQUIRED answer being completed

function askNewPassword(challenge) {
  pendingChallenge = challenge;
  $("signin-form").hidden = true;
  $("new-password-form").hidden = false;
  $("new-password-error").textContent = "";
  announce("This is your first sign-in: choose a new password.");
  $("new-password").focus();
}

async function setNewPassword(event) {
  event.preventDefault();
  const submit = $("new-password-button");
  const error = $("new-password-error");
  error.textContent = "";
  if ($("new-password").value !== $("new-password-again").value) {
    error.textContent = "The two passwords differ.";
    return;
  }
  submit.disabled = true;
  try {
    await auth.setNewPassword(pendingChallenge, $("new-password").value);
    pendingChallenge = null;
    $("new-password-form").reset();
    $("new-password-form").hidden = true;
    $("signin-form").hidden = false;
    showSignedIn();
  } catch (err) {
    const message = err instanceof CognitoError ? err.display : String(err.message || err);
    error.textContent = `Could not set the password: ${message}`;
    announce(`Could not set the password: ${message}`, "error");
  } finally {
    submit.disabled = false;
  }
}

function showSignedIn() {
  $("signin-section").hidden = true;
  $("app-section").hidden = false;
  $("user-bar").hidden = false;
  $("user-name").textContent = auth.user.name;
  // The header names the user; the status line says what to do next (naming them again
  // showed "Signed in as" twice).
  announce("Choose files to upload, or drop them below.");
  renderResumable();
  processing.start();
  exports.start();
}

function showSignedOut(reason = "") {
  // Transfers stop; multipart uploads stay saved and can be resumed after signing in again.
  for (const task of rows.keys()) task.stop();
  rows.clear();
  $("uploads").replaceChildren();
  $("resumable").replaceChildren();
  processing.stop();
  exports.stop();
  $("app-section").hidden = true;
  $("user-bar").hidden = true;
  $("signin-section").hidden = false;
  $("signin-error").textContent = reason && reason !== "Signed out." ? reason : "";
  announce(reason || "Please sign in.");
  $("username").focus();
}

// --- uploads ---------------------------------------------------------------------------------

function wireDropZone(zone) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    startFiles([...event.dataTransfer.files]);
  });
}

function startFiles(files) {
  for (const file of files) {
    // A file that matches an unfinished upload continues it rather than starting over.
    startUpload(file, findSavedUpload(auth.user.sub, file));
  }
}

function startUpload(file, saved) {
  if (saved && [...rows.keys()].some((task) => task.id === saved.id && !task.finished)) {
    announce(`${file.name} is already being uploaded.`);
    return;
  }
  const task = new UploadTask({ api, owner: auth.user.sub, file, saved, onChange: renderTask });
  const row = buildUploadRow(task);
  rows.set(task, row);
  $("uploads").prepend(row);
  renderTask(task);
  announce(saved ? `Resuming ${file.name}.` : `Uploading ${file.name}.`);
  run(task, () => task.start());
  renderResumable();
}

/** Run a step of a task, then tell the user how it ended. */
async function run(task, step) {
  await step();
  renderResumable();
  const name = task.file.name;
  if (task.state === "done") {
    announce(`${name} uploaded${task.note ? ` (${task.note})` : ""}.`);
    processing.schedule(0); // its card appears soon: look now rather than at the next tick
  } else if (task.state === "failed") {
    announce(`${name} failed: ${task.error}`, "error");
  } else if (task.state === "cancelled") {
    announce(`${name} cancelled${task.note ? `: ${task.note}` : ""}.`);
  }
}

function buildUploadRow(task) {
  const name = task.file.name;
  const cancel = button("Cancel", "cancel-upload", { class: "secondary" });
  const retry = button("Retry", "retry-upload", { hidden: true });
  const remove = button("Remove", "remove-upload", { class: "secondary", hidden: true });
  cancel.addEventListener("click", () => run(task, () => task.cancel()));
  retry.addEventListener("click", () => run(task, () => task.start()));
  remove.addEventListener("click", () => {
    rows.get(task)?.remove();
    rows.delete(task);
  });
  return el(
    "li",
    { class: "upload-row", "data-testid": "upload-row" },
    el(
      "div",
      { class: "row-head" },
      fileName("span", name),
      el("span", { class: "badge", "data-role": "state" }),
    ),
    el("progress", { max: task.file.size || 1, value: 0, "aria-label": `Upload progress of ${name}` }),
    el(
      "div",
      { class: "row-foot" },
      el("span", { class: "small", "data-role": "bytes" }),
      el("span", { class: "small muted", "data-role": "note" }),
    ),
    el("p", { class: "error small", "data-role": "error" }),
    el("div", { class: "actions" }, retry, cancel, remove),
  );
}

function renderTask(task) {
  const row = rows.get(task);
  if (!row) return;
  const part = (role) => row.querySelector(`[data-role=${role}]`);
  if (task.id) row.dataset.uploadId = task.id;
  row.dataset.state = task.state;
  const badge = part("state");
  badge.textContent = STATE_TEXT[task.state];
  badge.className = `badge state-${task.state}`;
  const size = task.file.size;
  const loaded = task.loaded;
  const percent = size ? Math.floor((loaded / size) * 100) : 100;
  row.querySelector("progress").value = size ? loaded : 1;
  part("bytes").textContent = `${formatBytes(loaded)} of ${formatBytes(size)} (${percent}%)`;
  part("note").textContent = task.note || "";
  part("error").textContent = task.state === "failed" ? task.error : "";
  const [retry, cancel, remove] = row.querySelector(".actions").children;
  retry.hidden = task.state !== "failed";
  cancel.hidden = !["uploading", "completing", "failed"].includes(task.state);
  cancel.disabled = task.state === "completing"; // S3 is assembling the object: too late
  remove.hidden = !["done", "cancelled"].includes(task.state);
}

// --- resumable uploads -------------------------------------------------------------------------

/** Saved multipart uploads no task on this page is working on. */
function renderResumable() {
  if (!auth.signedIn) return;
  const busy = new Set([...rows.keys()].filter((task) => task.id).map((task) => task.id));
  const entries = savedUploads(auth.user.sub).filter((entry) => !busy.has(entry.id));
  $("resumable").replaceChildren(...entries.map(buildResumeRow));
  $("resume-section").hidden = entries.length === 0;
}

function buildResumeRow(entry, index) {
  const inputId = `resume-file-${index}`;
  const input = el("input", { id: inputId, type: "file", "data-testid": "resume-file" });
  input.addEventListener("change", () => {
    const file = input.files[0];
    input.value = "";
    if (!file) return;
    if (!sameFile(entry, file)) {
      announce(
        `${file.name} is not the file this upload started with (${entry.name}, ` +
          `${formatBytes(entry.size)}, modified ${formatTime(new Date(entry.lastModified).toISOString())}).`,
        "error",
      );
      return;
    }
    startUpload(file, entry);
  });
  const discard = button("Discard", "discard-upload", { class: "secondary" });
  discard.addEventListener("click", () => discardSaved(entry, discard));
  return el(
    "li",
    { class: "upload-row", "data-testid": "resume-row", dataset: { uploadId: entry.id } },
    el(
      "div",
      { class: "row-head" },
      fileName("span", entry.name),
      el(
        "span",
        { class: "small muted" },
        `${formatBytes(entry.size)}, started ${formatTime(entry.createdAt)}`,
      ),
    ),
    el(
      "div",
      { class: "actions" },
      el("label", { for: inputId, class: "small" }, "Pick ", fileName("span", entry.name), " again to resume"),
      input,
      discard,
    ),
  );
}

/** Abort a saved upload in the API and forget it. */
async function discardSaved(entry, control) {
  control.disabled = true;
  try {
    await api.delete(`/uploads/${encodeURIComponent(entry.id)}`);
    announce(`Discarded the unfinished upload of ${entry.name}.`);
  } catch (err) {
    // 404: the upload is gone; 409: it was completed after all. Either way nothing to resume.
    if (err.status !== 404 && err.status !== 409) {
      announce(`Could not discard ${entry.name}: ${err.message}`, "error");
      control.disabled = false;
      return;
    }
    announce(`Removed ${entry.name} from the unfinished uploads.`);
  }
  forgetUpload(entry.id);
  renderResumable();
}

main();
