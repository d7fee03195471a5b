// The admin API (/api/v1/ on the page's own origin) and the console's credentials, which serve
// both the API (HTTP Basic) and the console's MQTT connection.

const KEY = 'rallymq-console';

/** The user and password signed in with, kept for this tab only. */
export const credentials = {
  get() {
    try {
      return JSON.parse(sessionStorage.getItem(KEY)) || null;
    } catch {
      return null;
    }
  },
  set(user, password) {
    sessionStorage.setItem(KEY, JSON.stringify({ user, password }));
  },
  clear() {
    sessionStorage.removeItem(KEY);
  },
};

/** A refused or failed API call: `status` and the API's `code` ("NOT_FOUND"...). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const listeners = new Set();

/** Calls `fn(error)` when the API asks for credentials (401) or refuses them (403). */
export function onDenied(fn) {
  listeners.add(fn);
}

function basic(user, password) {
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  return `Basic ${btoa(String.fromCharCode(...bytes))}`;
}

/** `path` under /api/v1/ with `query` (empty values left out). */
export function apiPath(path, query = {}) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== '') params.set(name, value);
  }
  const search = params.toString();
  return `/api/v1/${path}${search ? `?${search}` : ''}`;
}

/** A path segment, percent-encoded (a client id may hold '/', '%', anything). */
export const segment = (text) => encodeURIComponent(text);

/**
 * Calls the API; resolves with the parsed JSON (null for 204), rejects with an ApiError.
 * `X-Requested-With` tells the broker to leave Basic out of its 401 challenge, so that the
 * browser does not open its own dialog over the console's.
 */
export async function api(path, { method = 'GET', query, body } = {}) {
  const headers = { 'X-Requested-With': 'rallymq-console' };
  const signedIn = credentials.get();
  if (signedIn) headers.Authorization = basic(signedIn.user, signedIn.password);
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(apiPath(path, query), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (response.ok) return data;
  const error = new ApiError(response.status, data?.code || 'ERROR', data?.message || response.statusText);
  // A refusal of credentials since replaced (a request still in flight at sign-in) asks nothing.
  const current = JSON.stringify(credentials.get()) === JSON.stringify(signedIn);
  if ((response.status === 401 || response.status === 403) && current) listeners.forEach((fn) => fn(error));
  throw error;
}

/** Deletes the retained message of `topic` (each level percent-encoded: a level may hold '%'). */
export function deleteRetained(topic) {
  return api(`retained/${topic.split('/').map(segment).join('/')}`, { method: 'DELETE' });
}
