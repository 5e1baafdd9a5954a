// Cognito sign-in without an SDK: the page talks to the Cognito user-pool JSON API directly
// (InitiateAuth with USER_PASSWORD_AUTH, then REFRESH_TOKEN_AUTH). No SDK means no build step
// and no CDN, and the same code works against moto's Cognito locally and AWS in production.
//
// Tokens live in sessionStorage: a reload keeps the user signed in, closing the tab does not,
// and they never appear in URLs or logs.

const STORAGE_KEY = "offload.session";
// Refresh a little before the ID token expires, so a request never leaves with a token that
// dies on the way.
const EXPIRY_MARGIN_MS = 60_000;

/** A Cognito error, with its short type (e.g. "NotAuthorizedException") and message. */
export class CognitoError extends Error {
  constructor(type, message) {
    super(message);
    this.name = "CognitoError";
    this.type = type;
  }

  /** What the user reads: "Incorrect username or password. (NotAuthorizedException)". */
  get display() {
    return this.type ? `${this.message} (${this.type})` : this.message;
  }
}

/** The claims of a JWT, read without verifying it (the API verifies; the page only needs
 * `exp` and a name to show). */
export function jwtClaims(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = payload + "=".repeat((4 - (payload.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return {};
  }
}

/** Cognito wants a new password before it issues tokens (first sign-in). */
export class NewPasswordRequired extends Error {
  constructor(username, session) {
    super("choose a new password to finish signing in");
    this.name = "NewPasswordRequired";
    this.username = username;
    this.session = session;
  }
}

export class Auth {
  /** @param {{clientId: string, cognitoEndpoint: string}} config */
  constructor(config) {
    this.clientId = config.clientId;
    this.endpoint = config.cognitoEndpoint;
    this.session = loadSession();
    this.refreshing = null; // one refresh at a time, shared by every caller that needs it
    this.onSignedOut = () => {}; // set by the app: called when the session cannot be renewed
  }

  get signedIn() {
    return this.session !== null;
  }

  /** The user's display name and id (`sub`), from the ID token. */
  get user() {
    if (!this.session) return null;
    const claims = jwtClaims(this.session.idToken);
    return {
      sub: claims.sub || "",
      // A pool that signs in by e-mail has a generated id as cognito:username: prefer e-mail.
      name: claims.email || claims["cognito:username"] || claims.sub || "",
    };
  }

  async signIn(username, password) {
    const answer = await this.call("InitiateAuth", {
      AuthFlow: "USER_PASSWORD_AUTH",
      ClientId: this.clientId,
      AuthParameters: { USERNAME: username, PASSWORD: password },
    });
    this.finish(answer, username);
  }

  /** Answer NEW_PASSWORD_REQUIRED: the first sign-in of a user an administrator invited
   * (docs/deploy.md, "First user") with a temporary password. */
  async setNewPassword(challenge, newPassword) {
    const answer = await this.call("RespondToAuthChallenge", {
      ChallengeName: "NEW_PASSWORD_REQUIRED",
      ClientId: this.clientId,
      Session: challenge.session,
      ChallengeResponses: { USERNAME: challenge.username, NEW_PASSWORD: newPassword },
    });
    this.finish(answer, challenge.username);
  }

  finish(answer, username) {
    if (answer.ChallengeName === "NEW_PASSWORD_REQUIRED") {
      // A pool that signs in by e-mail knows the user by a generated id, which Cognito sends
      // as USER_ID_FOR_SRP: the challenge's answer names that id, not the e-mail typed in.
      // (moto sends no USER_ID_FOR_SRP here and accepts the e-mail: the local stack.)
      const userId = answer.ChallengeParameters?.USER_ID_FOR_SRP || username;
      throw new NewPasswordRequired(userId, answer.Session);
    }
    if (!answer.AuthenticationResult) {
      // e.g. SOFTWARE_TOKEN_MFA: this page does not implement MFA sign-in.
      throw new CognitoError(
        answer.ChallengeName || "Challenge",
        `Cognito asks for ${answer.ChallengeName || "a challenge"}, which this page does not ` +
          "support",
      );
    }
    this.store(answer.AuthenticationResult, null);
  }

  /** Forget the tokens locally, and ask Cognito to revoke the refresh token (best effort:
   * the user is signed out of this page whatever Cognito answers). */
  signOut() {
    const refreshToken = this.session?.refreshToken;
    this.session = null;
    sessionStorage.removeItem(STORAGE_KEY);
    if (refreshToken) {
      this.call("RevokeToken", { Token: refreshToken, ClientId: this.clientId }).catch(() => {});
    }
  }

  /** A valid ID token, refreshed first when it is about to expire. */
  async idToken() {
    if (!this.session) throw new CognitoError("NotSignedIn", "not signed in");
    if (Date.now() > this.session.expiresAt - EXPIRY_MARGIN_MS) await this.refresh();
    return this.session.idToken;
  }

  /** Exchange the refresh token for a new ID token. Concurrent callers share one request.
   * A refresh token that no longer works signs the user out. */
  refresh() {
    if (!this.refreshing) {
      this.refreshing = this.doRefresh().finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  async doRefresh() {
    const session = this.session;
    if (!session?.refreshToken) {
      this.expire();
      throw new CognitoError("NotSignedIn", "your session has ended; please sign in again");
    }
    let answer;
    try {
      answer = await this.call("InitiateAuth", {
        AuthFlow: "REFRESH_TOKEN_AUTH",
        ClientId: this.clientId,
        AuthParameters: { REFRESH_TOKEN: session.refreshToken },
      });
    } catch (err) {
      // Only Cognito refusing the token ends the session; a network blip does not.
      if (err instanceof CognitoError && err.type === "NotAuthorizedException") this.expire();
      throw err;
    }
    // A refresh answer has no new refresh token: keep the one we have.
    this.store(answer.AuthenticationResult, session.refreshToken);
  }

  expire() {
    this.signOut();
    this.onSignedOut("your session has ended; please sign in again");
  }

  store(result, refreshToken) {
    const idToken = result.IdToken;
    const exp = jwtClaims(idToken).exp;
    this.session = {
      idToken,
      refreshToken: result.RefreshToken || refreshToken,
      // The token's own `exp` is authoritative; ExpiresIn is the fallback.
      expiresAt: exp ? exp * 1000 : Date.now() + (result.ExpiresIn || 3600) * 1000,
    };
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(this.session));
  }

  /** One call to the Cognito user-pool API (the AWS JSON 1.1 protocol). */
  async call(action, body) {
    let response;
    try {
      response = await fetch(this.endpoint, {
        method: "POST",
        headers: {
          "Content-Type": "application/x-amz-json-1.1",
          "X-Amz-Target": `AWSCognitoIdentityProviderService.${action}`,
        },
        body: JSON.stringify(body),
        cache: "no-store",
      });
    } catch {
      throw new CognitoError("NetworkError", "could not reach the sign-in service");
    }
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      // `__type` may carry a namespace ("com.amazonaws...#NotAuthorizedException").
      const type = String(answer.__type || `HTTP ${response.status}`).split("#").pop();
      throw new CognitoError(type, answer.message || answer.Message || "sign-in failed");
    }
    return answer;
  }
}

function loadSession() {
  try {
    const session = JSON.parse(sessionStorage.getItem(STORAGE_KEY));
    return session?.idToken ? session : null;
  } catch {
    return null;
  }
}
