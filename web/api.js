// The page's runtime configuration and the upload/status API client.
//
// Nothing here names a host: config.json (next to index.html) says where the API and Cognito
// are, so the same files work behind the local gateway and on S3/CloudFront.

/** Load config.json from the page's own folder. */
export async function loadConfig() {
  const response = await fetch("config.json", { cache: "no-store" });
  if (!response.ok) throw new Error(`config.json: HTTP ${response.status}`);
  const config = await response.json();
  for (const field of ["apiBase", "clientId", "cognitoEndpoint"]) {
    if (typeof config[field] !== "string" || !config[field]) {
      throw new Error(`config.json: "${field}" is missing`);
    }
  }
  return config;
}

/** An API error: the HTTP status (0 when the request never got an answer), the API's
 * message, and the request field at fault when the API names one. */
export class ApiError extends Error {
  constructor(status, message, field = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.field = field;
  }

  /** Worth trying again later: no answer, throttled, or the API's backends were out of reach. */
  get transient() {
    return this.status === 0 || this.status === 429 || this.status >= 500;
  }
}

export class Api {
  /** @param {string} apiBase @param {import("./auth.js").Auth} auth */
  constructor(apiBase, auth) {
    this.base = apiBase.replace(/\/+$/, "");
    this.auth = auth;
  }

  get(path, options) {
    return this.request("GET", path, undefined, options);
  }

  post(path, body, options) {
    return this.request("POST", path, body ?? {}, options);
  }

  delete(path, options) {
    return this.request("DELETE", path, undefined, options);
  }

  /** Send one request with the user's ID token; on 401, refresh the token once and try again
   * (the token may have expired between our check and the API's). */
  async request(method, path, body, { signal } = {}) {
    let response = await this.send(method, path, body, signal, await this.auth.idToken());
    if (response.status === 401) {
      await this.auth.refresh();
      response = await this.send(method, path, body, signal, await this.auth.idToken());
      if (response.status === 401) this.auth.expire();
    }
    const answer = await response.json().catch(() => null);
    if (!response.ok) {
      throw new ApiError(
        response.status,
        answer?.message || `the API answered HTTP ${response.status}`,
        answer?.field || null,
      );
    }
    return answer;
  }

  async send(method, path, body, signal, token) {
    const headers = { Authorization: token }; // the raw ID token: the authorizer wants no "Bearer"
    if (body !== undefined) headers["Content-Type"] = "application/json";
    try {
      return await fetch(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: "no-store",
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      // fetch gives no detail on purpose (a CORS refusal looks the same as no network).
      throw new ApiError(0, "could not reach the API (network down, or CORS not allowing this page)");
    }
  }
}
