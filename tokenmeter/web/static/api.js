// serve's API as the page calls it: the bearer token from the tab's session storage in the Authorization
// header (never in a URL), JSON in and out, and the API's own refusal message when it says no.

export const TOKEN_KEY = "tokenmeter.api-token";

// The API token was refused (401 with WWW-Authenticate: Bearer): the page asks for it again.
export class Unauthorized extends Error {}

// Any other refusal (400, 401 without a person, 403, 404, 409, 503): the API's message and status.
export class Refused extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export async function request(path, { method = "GET", body } = {}) {
  const headers = { authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, { method, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body) });
  // A 401 for the token carries WWW-Authenticate; the credits routes' 401 for a missing person does not.
  if (response.status === 401 && response.headers.has("www-authenticate")) {
    throw new Unauthorized("the API token was refused");
  }
  return response;
}

export async function api(path, options) {
  const response = await request(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Refused(response.status, body.error || `HTTP ${response.status}`);
  return body;
}
