// What the page asks of the server: the token, JSON endpoints and the
// `/ws` stream. The token is kept in session storage and sent only in an
// `Authorization` header or the WebSocket's first message, never in a URL
// (URLs end up in logs, history and Referer headers).

const TOKEN_KEY = 'runtap.token';

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (t) => sessionStorage.setItem(TOKEN_KEY, t),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** An answer other than 2xx: `status` and the server's `code`. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

async function request(method, path, body) {
  const headers = { Authorization: `Bearer ${token.get() || ''}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok) throw new ApiError(res.status, json && json.code, json && json.message);
  return json;
}

/** `?host=` for a run at a gateway. */
export function hostQuery(host) {
  return host ? `?host=${encodeURIComponent(host)}` : '';
}

export const api = {
  me: () => request('GET', '/me'),
  runs: () => request('GET', '/runs'),
  run: (id, host) => request('GET', `/runs/${encodeURIComponent(id)}${hostQuery(host)}`),
  hosts: () => request('GET', '/hosts'),
  cancel: (id, host) => request('POST', `/runs/${encodeURIComponent(id)}/cancel${hostQuery(host)}`, { reason: 'cancelled from the dashboard' }),

  /** The run's raw output as a Blob (the header carries the token, so no plain link). */
  async log(id, host) {
    const res = await fetch(`/runs/${encodeURIComponent(id)}/log${hostQuery(host)}`, { headers: { Authorization: `Bearer ${token.get() || ''}` } });
    if (!res.ok) throw new ApiError(res.status, null, `download failed: HTTP ${res.status}`);
    return res.blob();
  },
};

/**
 * One `/ws` connection with its subscriptions, reconnecting with backoff.
 * `subscribe(msg)` is re-sent after a reconnect; for a run subscribed by
 * name, from the last seq seen, so nothing is lost or shown twice.
 * Handlers: onEvent(ev), onMessage(msg) for the rest, onState(state).
 */
export class Stream {
  constructor({ onEvent, onMessage = () => {}, onState = () => {} }) {
    this.onEvent = onEvent;
    this.onMessage = onMessage;
    this.onState = onState;
    this.subs = new Map(); // key -> subscribe message
    this.lastSeq = new Map(); // `${host}\n${runId}` -> seq
    this.retry = 0;
    this.closed = false;
    this.connect();
  }

  connect() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${scheme}//${location.host}/ws`);
    this.ws = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: 'auth', token: token.get() || '' }));
      for (const msg of this.subs.values()) ws.send(JSON.stringify(this.resume(msg)));
    };
    ws.onmessage = (m) => this.receive(m.data);
    ws.onclose = (e) => {
      if (this.closed) return;
      if (e.code === 4401) {
        this.onState('unauthorized');
        return;
      }
      this.onState('reconnecting');
      const delay = Math.min(10000, 250 * 2 ** this.retry++);
      setTimeout(() => this.connect(), delay);
    };
  }

  resume(msg) {
    if (msg.runId.endsWith('*')) return msg;
    const seen = this.lastSeq.get(`${msg.host || ''}\n${msg.runId}`);
    return seen ? { ...msg, since: seen } : msg;
  }

  receive(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (typeof msg.seq === 'number') {
      const key = `${msg.host || ''}\n${msg.runId}`;
      const seen = this.lastSeq.get(key) || 0;
      if (msg.seq <= seen) return; // already shown before a reconnect
      this.lastSeq.set(key, msg.seq);
      this.onEvent(msg);
      return;
    }
    if (msg.type === 'authenticated') {
      this.retry = 0;
      this.onState('live');
    }
    this.onMessage(msg);
  }

  subscribe(msg) {
    const full = { type: 'subscribe', ...msg };
    this.subs.set(`${msg.host || ''}\n${msg.runId}`, full);
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(this.resume(full)));
  }

  close() {
    this.closed = true;
    this.ws.close(1000);
  }
}
