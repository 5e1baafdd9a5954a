// What survives a page reload, in localStorage:
// - unfinished multipart uploads (enough to resume: the upload id, how to recognise the file
//   when the user picks it again, and how it is cut into parts). Browsers cannot keep a file
//   handle across reloads, so the user re-picks the file and we match name + size + mtime.
// - a small map upload id -> file name, so the job list can name files (jobs carry only the
//   upload id).
// Entries are kept per user (Cognito `sub`): another user on the same browser sees none of them.

const UPLOADS_KEY = "offload.uploads";
const NAMES_KEY = "offload.names";
const MAX_NAMES = 500; // oldest names go first; they only make the job list friendlier

function read(key) {
  try {
    return JSON.parse(localStorage.getItem(key)) || {};
  } catch {
    return {};
  }
}

function write(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    // Storage full or disabled: resume will not be offered, uploading still works.
  }
}

/** @typedef {{id: string, owner: string, name: string, size: number, lastModified: number,
 *   type: string, partSize: number, partCount: number, urlBatch: number, createdAt: string}}
 *   SavedUpload */

/** @returns {SavedUpload[]} the user's unfinished uploads, oldest first */
export function savedUploads(owner) {
  return Object.values(read(UPLOADS_KEY))
    .filter((entry) => entry.owner === owner)
    .sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

/** @param {SavedUpload} entry */
export function saveUpload(entry) {
  const all = read(UPLOADS_KEY);
  all[entry.id] = entry;
  write(UPLOADS_KEY, all);
}

export function forgetUpload(id) {
  const all = read(UPLOADS_KEY);
  if (id in all) {
    delete all[id];
    write(UPLOADS_KEY, all);
  }
}

/** The saved upload this file is the same as, if any. */
export function findSavedUpload(owner, file) {
  return savedUploads(owner).find((entry) => sameFile(entry, file)) || null;
}

export function sameFile(entry, file) {
  return (
    entry.name === file.name && entry.size === file.size && entry.lastModified === file.lastModified
  );
}

export function rememberName(uploadId, name) {
  const names = read(NAMES_KEY);
  delete names[uploadId]; // re-insert at the end: insertion order is the age order
  names[uploadId] = name;
  const ids = Object.keys(names);
  for (const old of ids.slice(0, Math.max(0, ids.length - MAX_NAMES))) delete names[old];
  write(NAMES_KEY, names);
}

export function nameOf(uploadId) {
  return read(NAMES_KEY)[uploadId] || null;
}
