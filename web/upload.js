// The upload engine: one UploadTask per file, no DOM. The API hands out presigned URLs and the
// bytes go straight to S3:
// - small files: one presigned multipart/form-data POST (the signed policy pins key, type and
//   exact size);
// - large files: S3 multipart upload, PARALLEL_PARTS parts at a time, each part retried with a
//   fresh URL, then POST /uploads/{id}/complete with every part's ETag.
// A multipart upload is recorded in localStorage (store.js) so it can be resumed after a reload:
// GET /uploads/{id} says which parts S3 already has, and only the others are sent.
//
// XMLHttpRequest is used for the S3 transfers only because fetch cannot report upload progress.

import { ApiError } from "./api.js";
import { forgetUpload, rememberName, saveUpload } from "./store.js";

export const PARALLEL_PARTS = 4; // parts in flight per file
const MAX_TRANSFERS = 6; // S3 requests in flight for the whole page (browsers allow ~6 per host)
const TRIES = 3; // attempts per part (and per API call of the upload flow)
const BACKOFF_MS = 1000; // first retry delay, doubled each time, with jitter
const URL_MARGIN_MS = 60_000; // a part URL this close to `expiresAt` is replaced before use
const DEFAULT_URL_BATCH = 100; // the API's default OFFLOAD_PART_URL_BATCH
// Upload states with the object in S3 (processed / failed: its pipeline ended too).
const PAST_PENDING = ["uploaded", "queued", "processed", "failed"];

/** A failed request to S3: status 0 when there was no answer. */
export class TransferError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "TransferError";
    this.status = status;
  }

  get transient() {
    return this.status === 0 || this.status === 408 || this.status === 429 || this.status >= 500;
  }
}

/** An error that no retry can fix (e.g. the bucket's CORS hides the ETag header). */
class FatalError extends Error {}

function abortError() {
  return new DOMException("aborted", "AbortError");
}

const isAbort = (err) => err?.name === "AbortError";

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError());
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(abortError());
      },
      { once: true },
    );
  });
}

/** At most `limit` functions running at once; the others wait their turn in order. */
class Limiter {
  constructor(limit) {
    this.free = limit;
    this.waiting = [];
  }

  async run(fn, signal) {
    if (this.free > 0) this.free--;
    else await new Promise((resolve) => this.waiting.push(resolve));
    try {
      if (signal?.aborted) throw abortError();
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    }
  }
}

const transfers = new Limiter(MAX_TRANSFERS);

/** One request to S3 with upload progress. Resolves with the finished XHR on 2xx. */
function transfer({ method, url, body, signal, onProgress }) {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(abortError());
    const xhr = new XMLHttpRequest();
    const onAbort = () => xhr.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    const done = () => signal.removeEventListener("abort", onAbort);
    xhr.open(method, url);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    };
    xhr.onload = () => {
      done();
      if (xhr.status >= 200 && xhr.status < 300) return resolve(xhr);
      reject(new TransferError(xhr.status, s3Message(xhr)));
    };
    xhr.onerror = () => {
      done();
      reject(new TransferError(0, "network error while sending to S3"));
    };
    xhr.onabort = () => {
      done();
      reject(abortError());
    };
    xhr.send(body);
  });
}

/** S3 answers errors in XML: show its Code and Message, not the whole document. */
function s3Message(xhr) {
  const text = xhr.responseText || "";
  const code = /<Code>([^<]*)<\/Code>/.exec(text)?.[1];
  const message = /<Message>([^<]*)<\/Message>/.exec(text)?.[1];
  if (code || message) return `S3 refused the upload: ${[code, message].filter(Boolean).join(": ")}`;
  return `S3 answered HTTP ${xhr.status}`;
}

/**
 * The upload of one file. States (also the row's data-state): uploading, completing, done,
 * failed, cancelled. `onChange(task)` is called on every change, progress included.
 */
export class UploadTask {
  /**
   * @param {{api: import("./api.js").Api, owner: string, file: File,
   *   saved?: import("./store.js").SavedUpload | null, onChange: (task: UploadTask) => void}} options
   */
  constructor({ api, owner, file, saved = null, onChange }) {
    this.api = api;
    this.owner = owner;
    this.file = file;
    this.onChange = onChange;
    this.id = saved?.id || null;
    this.upload = null; // the API's answer to POST /uploads (or GET when resuming)
    this.multipart = Boolean(saved); // only multipart uploads are saved for resuming
    this.partSize = saved?.partSize || 0;
    this.partCount = saved?.partCount || 0;
    this.urlBatch = saved?.urlBatch || DEFAULT_URL_BATCH;
    this.etags = new Map(); // partNumber -> ETag of every part S3 has
    this.urls = new Map(); // partNumber -> {url, expiresAt}
    this.inflight = new Map(); // partNumber -> bytes sent so far of parts in flight
    this.doneBytes = 0; // bytes of the parts in `etags`
    this.state = "uploading";
    this.error = null; // why it failed, for the user
    this.note = null; // a passing remark (retrying, resumed, ...)
    this.gone = false; // the API's upload can no longer be used: a retry starts a new one
    this.controller = null;
  }

  /** Bytes S3 has (or is receiving right now) of this file. */
  get loaded() {
    let sum = this.doneBytes;
    for (const bytes of this.inflight.values()) sum += bytes;
    return Math.min(sum, this.file.size);
  }

  get finished() {
    return ["done", "failed", "cancelled"].includes(this.state);
  }

  /** Start (or, after a failure, restart) the upload. Never throws: failures end in state
   * "failed" with `error` set. */
  async start() {
    this.controller = new AbortController();
    const signal = this.controller.signal;
    this.error = null;
    this.setState("uploading");
    try {
      if (this.gone) this.resetToNew();
      if (this.multipart && this.id) {
        await this.reconcile(signal);
      } else if (!this.upload || this.postExpired()) {
        // A single upload's POST cannot be re-signed: abort the old upload, start a new one.
        if (this.id) this.api.delete(`/uploads/${this.id}`).catch(() => {});
        await this.create(signal);
      }
      if (this.state !== "uploading") return; // reconcile found it finished or gone
      if (this.multipart) {
        await this.sendParts(signal);
        this.setState("completing");
        await this.complete(signal);
      } else {
        await this.sendSingle(signal);
      }
      if (signal.aborted) return; // cancelled in the last moment: cancel() says what happened
      this.finish("done");
    } catch (err) {
      if (signal.aborted && this.state === "cancelled") return;
      if (isAbort(err)) return; // stopped by stop(): the saved entry stays for a later resume
      this.inflight.clear();
      this.note = null; // "trying again" is over
      this.error = err.message || String(err);
      this.setState("failed");
    }
  }

  /** Cancel: abort every request in flight, then abort the upload in the API (which deletes
   * the parts S3 holds). */
  async cancel() {
    if (this.finished && this.state !== "failed") return;
    this.setState("cancelled");
    this.controller?.abort();
    this.inflight.clear();
    if (!this.id) return; // POST /uploads never answered: nothing to abort (the reconciler
    // expires an upload the API created but we never heard of)
    try {
      await this.withRetries("abort", () => this.api.delete(`/uploads/${this.id}`));
      forgetUpload(this.id);
      this.note = null;
    } catch (err) {
      if (err instanceof ApiError && err.status === 409) {
        // The object reached S3 before the cancel did: it is uploaded, and will be processed.
        forgetUpload(this.id);
        this.note = "too late to cancel: the file had already reached S3";
        this.finish("done");
        return;
      }
      this.note = `cancelled here, but the API could not abort the upload: ${err.message}`;
    }
    this.changed();
  }

  /** Stop sending without aborting the upload (sign-out): it stays resumable. */
  stop() {
    this.controller?.abort();
  }

  // --- the steps -------------------------------------------------------------------------

  async create(signal) {
    const body = {
      filename: this.file.name,
      size: this.file.size,
      // Browsers leave `type` empty when they do not know it; the API accepts octet-stream
      // by default. A type the API refuses is reported as is, not disguised.
      contentType: this.file.type || "application/octet-stream",
    };
    const upload = await this.withRetries(
      "starting the upload",
      () => this.api.post("/uploads", body, { signal }),
      signal,
    );
    this.upload = upload;
    this.id = upload.id;
    rememberName(upload.id, this.file.name);
    this.multipart = upload.type === "multipart";
    if (!this.multipart) return this.changed();
    this.partSize = upload.partSize;
    this.partCount = upload.partCount;
    // The API does not announce its batch size; a first batch shorter than the part count is it.
    if (upload.partUrls.length < upload.partCount) this.urlBatch = upload.partUrls.length;
    this.keepUrls(upload.partUrls, upload.expiresAt);
    saveUpload({
      id: upload.id,
      owner: this.owner,
      name: this.file.name,
      size: this.file.size,
      lastModified: this.file.lastModified,
      type: body.contentType,
      partSize: this.partSize,
      partCount: this.partCount,
      urlBatch: this.urlBatch,
      createdAt: upload.createdAt || new Date().toISOString(),
    });
    this.changed();
  }

  /** Resume: ask the API which parts S3 already has, and keep those whose size is right. */
  async reconcile(signal) {
    const upload = await this.withRetries(
      "checking the upload",
      () => this.api.get(`/uploads/${this.id}`, { signal }),
      signal,
    );
    this.upload = upload;
    // completed: S3 has the object and its event is on the way (the row is still pending).
    if (PAST_PENDING.includes(upload.state) || upload.completed) {
      forgetUpload(this.id);
      this.note = "S3 already has this file";
      return this.finish("done");
    }
    if (upload.state !== "pending" || upload.type !== "multipart" || !upload.multipartOpen) {
      forgetUpload(this.id);
      this.gone = true;
      throw new Error(
        upload.state === "pending"
          ? "S3 no longer has this multipart upload (it expired); retry to upload again"
          : `the upload is ${upload.state}${upload.error ? ` (${upload.error})` : ""}; retry to upload again`,
      );
    }
    this.partSize = upload.partSize;
    this.partCount = upload.partCount;
    this.etags.clear();
    this.doneBytes = 0;
    for (const part of upload.uploadedParts) {
      // A part of the wrong size (cut short) is sent again; S3 replaces it.
      if (part.size === this.partBytes(part.partNumber)) {
        this.etags.set(part.partNumber, part.etag);
        this.doneBytes += part.size;
      }
    }
    if (this.etags.size) this.note = `resumed: ${this.etags.size} of ${this.partCount} parts already in S3`;
    this.changed();
  }

  async sendSingle(signal) {
    const { url, fields } = this.upload.post;
    await this.withRetries(
      "sending the file",
      () =>
        transfers.run(async () => {
          const form = new FormData();
          for (const [name, value] of Object.entries(fields)) form.append(name, value);
          form.append("file", this.file); // S3 ignores every field after the file: it goes last
          this.inflight.set(1, 0);
          try {
            await transfer({
              method: "POST",
              url,
              body: form,
              signal,
              // `total` counts the form's own bytes too: scale to the file's size.
              onProgress: (loaded, total) => this.progress(1, (loaded / total) * this.file.size),
            });
          } finally {
            this.inflight.delete(1);
          }
          this.doneBytes = this.file.size;
        }, signal),
      signal,
      (err) => err.transient, // a 403 is the signed policy refusing the file: no use retrying
    );
  }

  async sendParts(signal) {
    const queue = [];
    for (let n = 1; n <= this.partCount; n++) if (!this.etags.has(n)) queue.push(n);
    this.queue = queue;
    let failure = null;
    // A failed part stops the others (the upload is failed anyway); what the user sees is the
    // first real error, not the aborts it caused.
    const stopOthers = new AbortController();
    signal.addEventListener("abort", () => stopOthers.abort(), { once: true });
    const partSignal = stopOthers.signal;
    const worker = async () => {
      while (!failure && queue.length) {
        const n = queue.shift();
        try {
          await this.sendPart(n, partSignal);
        } catch (err) {
          failure ??= err;
          stopOthers.abort();
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(PARALLEL_PARTS, queue.length) }, worker));
    if (failure) throw signal.aborted ? abortError() : failure;
  }

  async sendPart(n, signal) {
    const start = (n - 1) * this.partSize;
    const blob = this.file.slice(start, start + this.partBytes(n));
    await this.withRetries(
      `part ${n}`,
      (attempt) =>
        transfers.run(async () => {
          // A retry always gets a fresh URL: the old one may have expired or been refused.
          const url = await this.partUrl(n, attempt > 1, signal);
          this.inflight.set(n, 0);
          let xhr;
          try {
            xhr = await transfer({
              method: "PUT",
              url,
              body: blob,
              signal,
              onProgress: (loaded) => this.progress(n, loaded),
            });
          } finally {
            this.inflight.delete(n);
          }
          const etag = xhr.getResponseHeader("ETag");
          if (!etag) {
            throw new FatalError(
              "S3 took the part but its ETag header is unreadable: the bucket's CORS must expose ETag",
            );
          }
          this.etags.set(n, etag);
          this.doneBytes += blob.size;
          this.changed();
        }, signal),
      signal,
      (err) => !(err instanceof FatalError) && (!(err instanceof ApiError) || err.transient),
    );
  }

  async complete(signal) {
    const parts = [...this.etags]
      .sort(([a], [b]) => a - b)
      .map(([partNumber, etag]) => ({ partNumber, etag }));
    try {
      await this.withRetries(
        "completing the upload",
        () => this.api.post(`/uploads/${this.id}/complete`, { parts }, { signal }),
        signal,
      );
    } catch (err) {
      // 409 after a retry may mean our first attempt did complete it (its answer was lost).
      if (!(err instanceof ApiError && err.status === 409)) throw err;
      const upload = await this.api.get(`/uploads/${this.id}`, { signal });
      const completed = PAST_PENDING.includes(upload.state) || upload.completed === true;
      if (!completed) {
        forgetUpload(this.id);
        this.gone = true;
        throw err;
      }
    }
  }

  // --- helpers -----------------------------------------------------------------------------

  partBytes(n) {
    return Math.min(this.partSize, this.file.size - (n - 1) * this.partSize);
  }

  postExpired() {
    return this.upload?.expiresAt && Date.parse(this.upload.expiresAt) - Date.now() < URL_MARGIN_MS;
  }

  /** Forget an upload the API can no longer use, so start() creates a new one. */
  resetToNew() {
    this.id = null;
    this.upload = null;
    this.multipart = false;
    this.gone = false;
    this.etags.clear();
    this.urls.clear();
    this.doneBytes = 0;
    this.note = null;
  }

  keepUrls(partUrls, expiresAt) {
    for (const { partNumber, url } of partUrls) this.urls.set(partNumber, { url, expiresAt });
  }

  hasFreshUrl(n) {
    const entry = this.urls.get(n);
    return Boolean(entry) && Date.parse(entry.expiresAt) - Date.now() > URL_MARGIN_MS;
  }

  /** The URL to PUT part n to. URLs are fetched in batches (the part asked for plus the next
   * parts waiting), and only one batch request is in flight per upload. */
  async partUrl(n, fresh, signal) {
    if (fresh) this.urls.delete(n);
    while (!this.hasFreshUrl(n)) {
      if (!this.urlRequest) {
        const numbers = [n, ...this.queue.filter((m) => !this.hasFreshUrl(m))];
        this.urlRequest = this.requestUrls(numbers, signal).finally(() => {
          this.urlRequest = null;
        });
      }
      await this.urlRequest;
    }
    return this.urls.get(n).url;
  }

  async requestUrls(numbers, signal) {
    for (;;) {
      const batch = numbers.slice(0, this.urlBatch);
      try {
        const answer = await this.api.post(
          `/uploads/${this.id}/parts`,
          { partNumbers: batch },
          { signal },
        );
        return this.keepUrls(answer.partUrls, answer.expiresAt);
      } catch (err) {
        // The API's batch limit may be lower than we guessed: ask for fewer.
        if (err instanceof ApiError && err.field === "partNumbers" && batch.length > 1) {
          this.urlBatch = Math.max(1, Math.floor(batch.length / 2));
          continue;
        }
        throw err;
      }
    }
  }

  /** Run `fn(attempt)` up to TRIES times, waiting longer after each failure. */
  async withRetries(label, fn, signal, retryable = (err) => !(err instanceof ApiError) || err.transient) {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn(attempt);
      } catch (err) {
        if (isAbort(err) || attempt >= TRIES || !retryable(err)) throw err;
        this.note = `${label} failed (${err.message}); trying again`;
        this.changed();
        const delay = BACKOFF_MS * 2 ** (attempt - 1) * (0.5 + Math.random());
        await sleep(delay, signal);
      }
    }
  }

  progress(n, bytes) {
    this.inflight.set(n, bytes);
    this.changed();
  }

  finish(state) {
    if (state === "done" && this.id) forgetUpload(this.id);
    this.inflight.clear();
    if (state === "done") this.doneBytes = this.file.size;
    this.setState(state);
  }

  setState(state) {
    this.state = state;
    this.changed();
  }

  changed() {
    this.onChange(this);
  }
}
