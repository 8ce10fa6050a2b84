// pushpull's browser client: one ES module, no dependencies.
//
// Every transport a browser can reach — WebSocket, Server-Sent Events and chunked streaming
// (both read with fetch and a ReadableStream), long polling and polling — behind one API with
// the Rust client's semantics: a subscription starts from a cursor, resumes after a drop from
// the last delivery with nothing lost and nothing repeated, and reports what it could not get
// as a gap. `auto` opens a real subscription over each transport in turn and keeps the first
// that works.
//
//   import { connect } from '/pushpull/pushpull.js';
//   const client = await connect({ url: 'https://push.example.com', transport: 'auto' });
//   const sub = client.subscribe('ticker', { after: 'latest' });
//   sub.on('message', (m) => console.log(m.offset, m.data));
//   sub.on('gap', (g) => console.warn('missed', g.first, g.last));
//   await client.publish('ticker', '42.17');
//
// The wire protocols are in docs/protocol/ of the pushpull repository.

/** The transports `auto` tries, in order: the cheapest push first, polling last. */
export const AUTO_ORDER = ['ws', 'sse', 'stream', 'longpoll', 'poll'];

/** Every transport this client speaks. */
export const TRANSPORTS = [...AUTO_ORDER];

const PROBE_TOPIC = 'pushpull.probe';

/** An error with the kind the server (or this client) gave it. */
export class PushpullError extends Error {
  constructor(kind, message, { status, retryable = false, retryAfter, transport, cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = 'PushpullError';
    /** `bad_request`, `invalid_topic`, `unauthorized`, `forbidden`, `connect`, `closed`, … */
    this.kind = kind;
    /** The HTTP status or WebSocket close code, when one said so. */
    this.status = status;
    /** Whether trying again later may work. */
    this.retryable = retryable;
    /** How long the server asked to wait before trying again, in milliseconds. */
    this.retryAfter = retryAfter;
    /** The transport that met it. */
    this.transport = transport;
  }
}

// ---------------------------------------------------------------------------------------------
// Cursors and continuity

/** `{ epoch, offset }` of a cursor `EPOCH-OFFSET`, or null for `beginning`/`latest`. */
export function parseCursor(cursor) {
  if (typeof cursor !== 'string') return null;
  // As the server reads them: an epoch without a dash, a dash, decimal digits.
  const parts = /^([^-]+)-(\d+)$/.exec(cursor);
  if (!parts) return null;
  const offset = Number(parts[2]);
  if (!Number.isSafeInteger(offset)) return null;
  return { epoch: parts[1], offset };
}

/**
 * How `delivery` relates to `position` (the cursor of the last delivery handed over):
 * 'next' (hand it over), 'repeat' (seen already: drop it) or 'skip' (something in between
 * was lost on the way: read again from the position). The rules of the Rust client.
 */
export function continuity(position, delivery) {
  const at = parseCursor(position);
  if (!at) return 'next';
  const to = parseCursor(delivery.cursor);
  if (!to) return 'skip';
  if (to.epoch === at.epoch && to.offset <= at.offset) return 'repeat';
  if (delivery.type === 'message') {
    return to.epoch === at.epoch && delivery.offset === at.offset + 1 ? 'next' : 'skip';
  }
  if (delivery.reason === 'retention') {
    return to.epoch === at.epoch && delivery.first === at.offset + 1 ? 'next' : 'skip';
  }
  return delivery.previousEpoch === at.epoch ? 'next' : 'skip';
}

/** Whether `text` is a cursor set (`@…`): the resume token of a connection of many topics. */
export function isCursorSet(text) {
  return typeof text === 'string' && text.startsWith('@');
}

/**
 * The positions (topic → cursor) of a cursor set `@EPOCH,KEY~POS,…`, written relative to the
 * connection's selectors `keys` (topic names and `PREFIX*`): KEY is a selector's index, or for
 * a topic a prefix found, the index, `*` and the rest of the name; POS is an offset in EPOCH,
 * or a whole cursor.
 */
export function parseCursorSet(text, keys) {
  if (!isCursorSet(text)) throw new PushpullError('invalid_cursor', `a cursor set starts with '@', got ${JSON.stringify(text)}`);
  const [epoch, ...entries] = text.slice(1).split(',');
  const positions = new Map();
  for (const entry of entries) {
    const tilde = entry.indexOf('~');
    const key = entry.slice(0, tilde);
    const pos = entry.slice(tilde + 1);
    const star = key.indexOf('*');
    const selector = keys[Number(star < 0 ? key : key.slice(0, star))];
    if (tilde < 0 || selector === undefined) {
      throw new PushpullError('invalid_cursor', `the cursor set entry ${JSON.stringify(entry)} names no selector`);
    }
    const topic = star < 0 ? selector : selector.slice(0, -1) + key.slice(star + 1);
    positions.set(topic, /^\d+$/.test(pos) ? `${epoch}-${pos}` : pos);
  }
  return positions;
}

/** The text of `positions` (topic → cursor) relative to the selectors `keys`. */
export function encodeCursorSet(positions, keys) {
  const counts = new Map();
  for (const cursor of positions.values()) {
    const at = parseCursor(cursor);
    if (at) counts.set(at.epoch, (counts.get(at.epoch) ?? 0) + 1);
  }
  let common = '';
  for (const [epoch, count] of counts) if (count > (counts.get(common) ?? 0)) common = epoch;
  let out = `@${common}`;
  for (const [topic, cursor] of positions) {
    let key = keys.indexOf(topic);
    if (key < 0) {
      const index = keys.findIndex((k) => k.endsWith('*') && topic.startsWith(k.slice(0, -1)));
      if (index < 0) continue;
      key = `${index}*${topic.slice(keys[index].length - 1)}`;
    }
    const at = parseCursor(cursor);
    out += `,${key}~${at && at.epoch === common ? at.offset : cursor}`;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Wire forms

const utf8 = new TextEncoder();

function base64ToBytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

function bytesToBase64(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** A message or gap from the JSON of the HTTP API (pages, NDJSON, WebSocket frames). */
function fromJson(json, payload) {
  if (json.reason !== undefined) {
    return {
      type: 'gap',
      topic: json.topic,
      reason: json.reason,
      first: json.first,
      last: json.last,
      cursor: json.cursor,
      previousEpoch: json.previous_epoch,
    };
  }
  let data = payload;
  if (data === undefined) {
    data = json.data_base64 !== undefined ? base64ToBytes(json.data_base64) : (json.data ?? '');
  }
  return {
    type: 'message',
    topic: json.topic,
    cursor: json.cursor,
    offset: json.offset,
    timestamp: json.timestamp,
    event: json.event,
    contentType: json.content_type,
    data,
  };
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** `bytes` as text when they are UTF-8, else undefined. */
function asText(bytes) {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    return undefined;
  }
}

function pageFromJson(json, payloads) {
  let index = 0;
  const messages = (json.messages ?? []).map((m) => {
    if (m.size === undefined || !payloads) return fromJson(m);
    // A binary page carries every payload as bytes: text goes back to text, as in a text page.
    const bytes = payloads.subarray(index, index + m.size);
    index += m.size;
    return fromJson(m, asText(bytes) ?? bytes);
  });
  return { gap: json.gap ? fromJson(json.gap) : undefined, messages, next: json.next };
}

function isRetryableStatus(status) {
  return status === 408 || status === 425 || status === 429 ||
    (status >= 500 && status !== 501 && status !== 505);
}

function retryAfterMs(response) {
  const value = response.headers.get('retry-after');
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

/** The error a non-success response stands for, read from its JSON body when it has one. */
async function errorOf(response, transport) {
  let kind = `http_${response.status}`;
  let message = `the server answered ${response.status}`;
  try {
    const body = await response.json();
    if (body?.error?.kind) kind = body.error.kind;
    if (body?.error?.message) message = `${response.status}: ${body.error.message}`;
  } catch {
    // Not JSON (a proxy's page, say): the status says it.
  }
  return new PushpullError(kind, message, {
    status: response.status,
    retryable: isRetryableStatus(response.status),
    retryAfter: retryAfterMs(response),
    transport,
  });
}

function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

/** Exponential backoff with jitter, never sooner than the server asked. */
function backoff(attempt, options, retryAfter) {
  const ceiling = Math.min(options.maxRetryDelay, options.retryDelay * 2 ** Math.min(attempt, 16));
  const delay = ceiling / 2 + Math.random() * (ceiling / 2);
  return Math.max(delay, retryAfter ?? 0);
}

// ---------------------------------------------------------------------------------------------
// Options, tokens and HTTP

const DEFAULTS = {
  transport: 'auto',
  retryDelay: 250,
  maxRetryDelay: 10000,
  probeTimeout: 5000,
  requestTimeout: 30000,
  idleTimeout: 45000,
  longpollWait: 25,
  pollInterval: undefined, // the server's Pushpull-Poll-Interval-Ms, else 1000
  pageLimit: 100,
  token: undefined,
  multiplex: true, // every subscription of an HTTP client on one connection
  maxTopicsPerConnection: 100, // the server's http.max_topics_per_connection
  info: undefined, // what this client tells the other members of its topics' presence (JSON)
};

/** Adds what a subscribing request says about its client to presence: its `info`. */
function withInfo(query, options) {
  if (options.info !== undefined) query.set('info', JSON.stringify(options.info));
  return query;
}

/** Asks the application's token hook, and keeps the answer until the server refuses it. */
class Tokens {
  constructor(hook) {
    this.hook = hook;
    this.current = undefined;
  }

  async get() {
    if (!this.hook) return null;
    if (this.current === undefined) this.current = (await this.hook({ renew: false })) ?? null;
    return this.current;
  }

  /** A new token after the server refused `refused`; null when the hook has none. */
  async renew(refused) {
    if (!this.hook) return null;
    if (this.current !== refused && this.current !== undefined) return this.current;
    this.current = (await this.hook({ renew: true })) ?? null;
    return this.current;
  }
}

/**
 * What a client has cost so far: HTTP requests (a WebSocket upgrade is one), body and frame
 * bytes received and sent (headers are not visible to a page), and messages delivered.
 */
/** The `exp` claim of a JWT (seconds since the epoch), or undefined for anything else. */
function jwtExpiry(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, '='))).exp;
    return Number.isFinite(exp) ? exp : undefined;
  } catch {
    return undefined;
  }
}

function newStats() {
  return { requests: 0, bytesIn: 0, bytesOut: 0, messages: 0 };
}

function byteLength(body) {
  if (body === undefined || body === null) return 0;
  if (typeof body === 'string') return utf8.encode(body).length;
  return body.byteLength ?? 0;
}

class Http {
  constructor(base, options, tokens, transport, stats = newStats()) {
    this.base = base;
    this.options = options;
    this.tokens = tokens;
    this.transport = transport;
    this.stats = stats;
  }

  /** A response's body as JSON, counted. */
  async json(response) {
    const bytes = new Uint8Array(await response.arrayBuffer());
    this.stats.bytesIn += bytes.length;
    return JSON.parse(new TextDecoder().decode(bytes));
  }

  url(path) {
    return new URL(path, this.base).toString();
  }

  /** Sends a request with the token; a 401 renews it (if the hook can) and sends once more. */
  async send(method, path, { body, headers = {}, signal, timeout = this.options.requestTimeout } = {}) {
    let token = await this.tokens.get();
    for (let attempt = 0; ; attempt++) {
      const sent = { ...headers };
      if (token) sent.authorization = `Bearer ${token}`;
      // The caller's signal ends the request and its body, however long the body lasts (an
      // event stream's does); the timeout covers the wait for the response head only.
      const controller = new AbortController();
      if (signal?.aborted) controller.abort();
      signal?.addEventListener('abort', () => controller.abort(), { once: true });
      const timer = timeout ? setTimeout(() => controller.abort(), timeout) : undefined;
      let response;
      this.stats.requests += 1;
      this.stats.bytesOut += byteLength(body);
      try {
        response = await fetch(this.url(path), {
          method, body, headers: sent, signal: controller.signal, cache: 'no-store',
          credentials: 'same-origin',
        });
      } catch (cause) {
        if (signal?.aborted) throw new PushpullError('closed', 'closed', { transport: this.transport });
        const timedOut = controller.signal.aborted;
        throw new PushpullError(timedOut ? 'timeout' : 'connect',
          timedOut ? `${method} ${path}: no answer within ${timeout} ms`
            : `${method} ${path}: ${cause?.message ?? cause}`,
          { retryable: true, transport: this.transport, cause });
      } finally {
        clearTimeout(timer);
      }
      if (response.status === 401 && attempt === 0 && this.tokens.hook) {
        const renewed = await this.tokens.renew(token);
        if (renewed && renewed !== token) {
          token = renewed;
          continue;
        }
      }
      return response;
    }
  }

  /** Sends and retries what a retry can change (a dropped connection, 429, most 5xx). */
  async sendRetrying(method, path, init = {}) {
    for (let attempt = 0; ; attempt++) {
      let error;
      try {
        const response = await this.send(method, path, init);
        if (response.ok || response.status === 304) return response;
        error = await errorOf(response, this.transport);
      } catch (caught) {
        error = caught;
      }
      if (!error.retryable || attempt >= 2 || init.signal?.aborted) throw error;
      await sleep(backoff(attempt, this.options, error.retryAfter), init.signal);
    }
  }

  async publish(topic, data, { event, contentType, key } = {}) {
    const headers = { 'idempotency-key': key ?? randomKey() };
    if (event) headers['pushpull-event'] = event;
    if (contentType) headers['content-type'] = contentType;
    // Text goes as bytes: a string body would get a Content-Type the message would keep.
    const body = typeof data === 'string' ? utf8.encode(data) : data;
    const response = await this.sendRetrying('POST', `/v1/topics/${topic}`, { body, headers });
    return this.json(response);
  }

  async fetch(topic, { after = 'beginning', limit = this.options.pageLimit } = {}) {
    const query = new URLSearchParams({ after, limit: String(limit) });
    const response = await this.sendRetrying('GET', `/v1/topics/${topic}/messages?${query}`);
    return pageFromJson(await this.json(response));
  }

  async presence(topic) {
    return this.json(await this.sendRetrying('GET', `/v1/topics/${topic}/presence`));
  }

  async presenceStats(topic) {
    return this.json(await this.sendRetrying('GET', `/v1/topics/${topic}/presence/stats`));
  }
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

/**
 * One subscription: deliveries in order, from its cursor, across reconnections. Listen with
 * `on('message' | 'gap' | 'open' | 'error' | 'close', fn)`, or read with `for await`.
 */
export class Subscription {
  constructor(topic, after, transport, stats = newStats()) {
    this.topic = topic;
    this.stats = stats;
    /** The cursor of the last delivery handed over (or where the subscription starts). */
    this.cursor = after;
    this.transport = transport;
    this.closed = false;
    this.error = undefined;
    this.listeners = new Map();
    this.queue = [];
    this.waiters = [];
    this.onClose = [];
    this.opened = new Promise((resolve, reject) => {
      this.resolveOpen = resolve;
      this.rejectOpen = reject;
    });
    this.opened.catch(() => {});
    this.isOpen = false;
  }

  /**
   * Calls `listener` for every `event`; returns a function that stops it. Deliveries that
   * arrived before the first 'message' or 'gap' listener are handed to it (in order, just
   * after this call), so none is missed however late the listener comes.
   */
  on(event, listener) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(listener);
    if ((event === 'message' || event === 'gap') && this.queue.length && !this.iterating && !this.flushing) {
      this.flushing = true;
      queueMicrotask(() => {
        this.flushing = false;
        if (this.iterating) return;
        for (const delivery of this.queue.splice(0)) this.emit(delivery.type, delivery);
      });
    }
    return () => this.listeners.get(event)?.delete(listener);
  }

  listening(event) {
    return (this.listeners.get(event)?.size ?? 0) > 0;
  }

  emit(event, value) {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        listener(value);
      } catch (error) {
        setTimeout(() => { throw error; });
      }
    }
  }

  /**
   * The server said where reading starts (`beginning`/`latest` resolved): taken only while the
   * subscription has no position of its own. A resumed read starts where it asked, and an epoch
   * change comes as a gap.
   */
  started(cursor) {
    if (cursor && !parseCursor(this.cursor)) this.cursor = cursor;
    if (!this.isOpen) {
      this.isOpen = true;
      this.resolveOpen(this);
      this.emit('open', this.cursor);
    }
  }

  /** Hands `delivery` over if it comes next; 'skip' tells the transport to read again. */
  offer(delivery) {
    if (this.closed) return 'repeat';
    const relation = continuity(this.positionOf(delivery.topic), delivery);
    if (relation !== 'next') return relation;
    this.moved(delivery);
    if (delivery.type === 'message') this.stats.messages += 1;
    this.emit(delivery.type, delivery);
    const waiter = this.waiters.shift();
    if (waiter) waiter.resolve({ value: delivery, done: false });
    else if (this.iterating || !(this.listening('message') || this.listening('gap'))) {
      // Kept for a reader that iterates or listens later: listeners alone need no queue.
      this.queue.push(delivery);
    }
    return 'next';
  }

  /** Where the subscription stands on `topic`. */
  positionOf() {
    return this.cursor;
  }

  /** Records that `delivery` was handed over. */
  moved(delivery) {
    this.cursor = delivery.cursor;
  }

  /** Ends the subscription with `error` (a final one: retrying cannot help). */
  fail(error) {
    if (this.closed) return;
    this.error = error;
    this.emit('error', error);
    if (!this.isOpen) this.rejectOpen(error);
    this.finish();
  }

  /** Stops it: nothing more is delivered. */
  close() {
    if (this.closed) return;
    this.finish();
  }

  finish() {
    this.closed = true;
    for (const hook of this.onClose) hook();
    if (!this.isOpen) this.rejectOpen(this.error ?? new PushpullError('closed', 'the subscription was closed'));
    for (const waiter of this.waiters.splice(0)) {
      if (this.error) waiter.reject(this.error);
      else waiter.resolve({ value: undefined, done: true });
    }
    this.emit('close', this.error);
  }

  [Symbol.asyncIterator]() {
    this.iterating = true;
    return {
      next: () => {
        if (this.queue.length) return Promise.resolve({ value: this.queue.shift(), done: false });
        if (this.closed) {
          return this.error ? Promise.reject(this.error) : Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
      },
      return: () => {
        this.close();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

/**
 * A subscription to every topic with a prefix (`orders:*`), those created while it is open
 * included. Deliveries name their topic; its `cursor` is the cursor set of every topic it has
 * seen, to resume it with (`subscribe('orders:*', { after: sub.cursor })`).
 */
class PrefixSubscription extends Subscription {
  constructor(selector, after, transport, stats) {
    super(selector, after, transport, stats);
    this.positions = isCursorSet(after) ? parseCursorSet(after, [selector]) : new Map();
  }

  positionOf(topic) {
    return this.positions.get(topic);
  }

  moved(delivery) {
    this.positions.set(delivery.topic, delivery.cursor);
    this.cursor = encodeCursorSet(this.positions, [this.topic]);
  }

  /** Takes the set a server announced for topics it has no position for. */
  started(set) {
    if (isCursorSet(set)) {
      for (const [topic, cursor] of parseCursorSet(set, [this.topic])) {
        if (!parseCursor(this.positions.get(topic))) this.positions.set(topic, cursor);
      }
      this.cursor = encodeCursorSet(this.positions, [this.topic]);
    }
    super.started(undefined);
  }
}

/** What reads a subscription over HTTP: its requests end when the subscription closes. */
class Follower {
  constructor(http, subscription) {
    this.http = http;
    this.sub = subscription;
    this.controller = new AbortController();
    subscription.onClose.push(() => this.controller.abort());
  }

  /** The error `caught` stands for: a PushpullError as it is, anything else a network failure. */
  failure(caught) {
    return caught instanceof PushpullError ? caught
      : new PushpullError('connect', String(caught?.message ?? caught), { retryable: true, transport: this.sub.transport, cause: caught });
  }
}

/** Reads one long response (SSE or NDJSON) with fetch, reopening it from the cursor. */
class StreamReader extends Follower {
  constructor(http, subscription, { path, accept, decoder }) {
    super(http, subscription);
    this.path = path;
    this.accept = accept;
    this.makeDecoder = decoder;
    this.run();
  }

  async run() {
    const { sub, http } = this;
    const options = http.options;
    let attempt = 0;
    let reopenAfter = 0;
    while (!sub.closed) {
      let error;
      try {
        const query = withInfo(new URLSearchParams({ after: sub.cursor }), options);
        const response = await http.send('GET', `/v1/topics/${sub.topic}/${this.path}?${query}`, {
          headers: { accept: this.accept }, signal: this.controller.signal, timeout: options.requestTimeout,
        });
        await checkStream(response, this.accept.split(',')[0], sub.transport);
        const outcome = await this.read(response);
        attempt = 0;
        reopenAfter = outcome.retry ?? 0;
        if (outcome.skipped) reopenAfter = 0;
      } catch (caught) {
        if (sub.closed) return;
        error = this.failure(caught);
        if (!error.retryable) return sub.fail(error);
        sub.emit('reconnecting', error);
      }
      if (sub.closed) return;
      const delay = error ? backoff(attempt++, options, error.retryAfter) : reopenAfter;
      await sleep(delay, this.controller.signal);
    }
  }

  /** Reads a response until it ends, or a delivery skips ahead, or it goes silent too long. */
  read(response) {
    return readRecords(response, this.http, this.makeDecoder(), (record) => {
      if (this.sub.closed) return 'stop';
      if (record.start !== undefined) {
        this.sub.started(record.start);
        return 'next';
      }
      record.topic ??= this.sub.topic;
      return this.sub.offer(record);
    });
  }
}

/** A push response's status and media type are what a stream needs; else the error. */
async function checkStream(response, expected, transport) {
  if (response.status === 204) {
    throw new PushpullError('closed', 'the server asked clients to stop (204)', { status: 204, transport });
  }
  if (!response.ok) throw await errorOf(response, transport);
  const type = response.headers.get('content-type') ?? '';
  if (!type.startsWith(expected)) {
    throw new PushpullError('protocol', `expected ${expected}, got ${type || 'no content type'}`,
      { status: response.status, transport });
  }
}

/**
 * Reads a push response's records with `decoder`, handing each to `take` ('skip' or 'stop' end
 * the read), until it ends or stays silent past the idle timeout. Says the server's retry hint,
 * and whether a delivery skipped ahead.
 */
async function readRecords(response, http, decoder, take) {
  const reader = response.body.getReader();
  const text = new TextDecoder();
  let idle;
  const arm = () => {
    clearTimeout(idle);
    idle = setTimeout(() => reader.cancel('idle'), http.options.idleTimeout);
  };
  arm();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return { retry: decoder.retry };
      http.stats.bytesIn += value.byteLength;
      arm();
      for (const record of decoder.feed(text.decode(value, { stream: true }))) {
        const outcome = take(record);
        if (outcome === 'stop') return { retry: decoder.retry };
        if (outcome === 'skip') {
          reader.cancel('skip').catch(() => {});
          return { skipped: true };
        }
      }
    }
  } finally {
    clearTimeout(idle);
  }
}

/** The WHATWG event-stream format, fed text in pieces; yields starts, messages and gaps. */
export class SseDecoder {
  constructor() {
    this.buffer = '';
    this.first = true;
    this.event = this.blank();
    this.retry = undefined;
    this.pendingCr = false;
  }

  blank() {
    return { id: undefined, event: undefined, data: [], fields: {} };
  }

  *feed(chunk) {
    if (this.first && chunk.length) {
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
      this.first = false;
    }
    this.buffer += chunk;
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (!match) break;
      // A CR at the very end may be the first half of a CRLF split across chunks.
      if (match[0] === '\r' && match.index === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const record = this.line(line);
      if (record) yield record;
    }
  }

  line(line) {
    if (line === '') return this.dispatch();
    if (line.startsWith(':')) return undefined;
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    const event = this.event;
    if (name === 'data') event.data.push(value);
    else if (name === 'id') { if (!value.includes('\0')) event.id = value; }
    else if (name === 'event') event.event = value;
    else if (name === 'retry') { if (/^\d+$/.test(value)) this.retry = Number(value); }
    else event.fields[name] = value;
    return undefined;
  }

  dispatch() {
    const event = this.event;
    this.event = this.blank();
    if (event.data.length === 0) {
      // No data: the preamble (where the stream starts) or nothing at all.
      return event.id !== undefined ? { start: event.id } : undefined;
    }
    const data = event.data.join('\n');
    if (event.event === 'pushpull-gap') return fromJson(JSON.parse(data));
    const at = parseCursor(event.id);
    return {
      type: 'message',
      // Named on a stream of many topics, whose id is the cursor set after the message.
      topic: event.fields.topic,
      cursor: event.id,
      offset: at?.offset,
      timestamp: event.fields.timestamp !== undefined ? Number(event.fields.timestamp) : undefined,
      event: event.event,
      contentType: event.fields['content-type'],
      data: event.fields.encoding === 'base64' ? base64ToBytes(data) : data,
    };
  }
}

/** Newline-delimited JSON records of the chunked streaming transport. */
export class NdjsonDecoder {
  constructor() {
    this.buffer = '';
  }

  *feed(chunk) {
    this.buffer += chunk;
    let newline;
    while ((newline = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, newline);
      this.buffer = this.buffer.slice(newline + 1);
      if (!line.trim()) continue;
      const record = JSON.parse(line);
      if (record.type === 'start') yield { start: record.cursor };
      else if (record.type === 'cursors') yield { start: record.cursors };
      else if (record.type === 'message' || record.type === 'gap') yield fromJson(record);
    }
  }
}

/** Asks for pages in a loop: with `wait` (long polling) or on an interval (polling). */
class PageReader extends Follower {
  constructor(http, subscription, { wait }) {
    super(http, subscription);
    this.wait = wait;
    // Its polls keep it a member of the topic's presence, under this id.
    this.member = randomKey();
    this.run();
  }

  async run() {
    const { sub, http } = this;
    const options = http.options;
    let attempt = 0;
    let etag;
    let checked = !this.wait;
    while (!sub.closed) {
      let error;
      let pause = 0;
      try {
        const query = new URLSearchParams({ after: sub.cursor, limit: String(options.pageLimit), client: this.member });
        withInfo(query, options);
        // Long polling asks with wait=0 first: a server that cannot hold requests says so by
        // leaving out Pushpull-Wait-Ms, and this client stops instead of polling by another name.
        if (this.wait) query.set('wait', checked ? String(options.longpollWait) : '0');
        const headers = etag && !this.wait ? { 'if-none-match': etag } : {};
        const timeout = this.wait ? options.requestTimeout + options.longpollWait * 1000 : options.requestTimeout;
        const response = await http.send('GET', `/v1/topics/${sub.topic}/messages?${query}`,
          { headers, signal: this.controller.signal, timeout });
        if (!response.ok && response.status !== 304) throw await errorOf(response, sub.transport);
        if (this.wait && !checked) {
          if (response.headers.get('pushpull-wait-ms') === null) {
            throw new PushpullError('unsupported', 'long polling is not enabled there', { transport: sub.transport });
          }
          checked = true;
        }
        const interval = Number(response.headers.get('pushpull-poll-interval-ms'));
        attempt = 0;
        if (response.status === 304) {
          sub.started(sub.cursor);
          pause = options.pollInterval ?? (interval || 1000);
        } else {
          etag = response.headers.get('etag') ?? undefined;
          const page = pageFromJson(await http.json(response));
          const asked = sub.cursor;
          // An empty page resolves `beginning`/`latest` to where reading goes on; a page with
          // deliveries moves the position by handing them over.
          sub.started(!page.gap && page.messages.length === 0 ? page.next : undefined);
          let skipped = false;
          for (const delivery of page.gap ? [page.gap, ...page.messages] : page.messages) {
            delivery.topic ??= sub.topic;
            if (sub.offer(delivery) === 'skip') { skipped = true; break; }
          }
          if (!skipped && sub.cursor === asked && page.messages.length === 0 && !this.wait) {
            pause = options.pollInterval ?? (interval || 1000);
          }
        }
      } catch (caught) {
        if (sub.closed) return;
        error = this.failure(caught);
        if (!error.retryable) return sub.fail(error);
        sub.emit('reconnecting', error);
        pause = backoff(attempt++, options, error.retryAfter);
      }
      if (pause) await sleep(pause, this.controller.signal);
    }
  }
}

/**
 * Many subscriptions of one client on one connection: the transport's route for many topics
 * (`/v1/events`, `/v1/stream`, `/v1/messages`), resumed with the cursor set of every member.
 * Adding or removing a subscription reopens the connection with the new set (subscriptions
 * made in one turn of the event loop share one reopening); members go on from their positions,
 * so nothing is lost or repeated.
 */
class Mux {
  constructor(http, kind) {
    this.http = http;
    this.kind = kind; // 'events' | 'stream' | 'longpoll' | 'poll'
    this.members = new Map(); // selector → subscription
    this.fresh = new Set(); // members not yet on an opened connection
    this.running = false;
    this.scheduled = false;
    this.changed = false;
    this.request = undefined;
    // Polls keep the connection's subscriptions members of their topics under this id.
    this.member = randomKey();
  }

  add(sub) {
    const key = sub.topic;
    this.members.set(key, sub);
    this.fresh.add(sub);
    sub.onClose.push(() => {
      if (this.members.get(key) !== sub) return;
      this.members.delete(key);
      this.fresh.delete(sub);
      this.restart();
    });
    this.restart();
  }

  /** Reopens with the members as they are, once this turn of the event loop is over. */
  restart() {
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      this.changed = true;
      this.request?.abort();
      if (!this.running && this.members.size) this.run();
    });
  }

  /** The query naming every member, from its position or its start. */
  query(keys) {
    const params = new URLSearchParams();
    const positions = new Map();
    let resumed = false;
    for (const key of keys) {
      const sub = this.members.get(key);
      if (isCursorSet(sub.cursor)) {
        for (const [topic, cursor] of parseCursorSet(sub.cursor, [key])) positions.set(topic, cursor);
        resumed = true;
        params.append('topic', key);
      } else if (parseCursor(sub.cursor)) {
        positions.set(key, sub.cursor);
        resumed = true;
        params.append('topic', key);
      } else {
        params.append('topic', `${key}@${sub.cursor}`);
      }
    }
    if (resumed) params.set('after', encodeCursorSet(positions, keys));
    return params;
  }

  async run() {
    this.running = true;
    const options = this.http.options;
    let attempt = 0;
    while (this.members.size) {
      this.changed = false;
      const controller = new AbortController();
      this.request = controller;
      const keys = [...this.members.keys()];
      let pause = 0;
      try {
        pause = await this.once(keys, controller.signal);
        attempt = 0;
      } catch (caught) {
        if (this.changed || !this.members.size) continue;
        const error = caught instanceof PushpullError ? caught
          : new PushpullError('connect', String(caught?.message ?? caught), { retryable: true, transport: this.http.transport, cause: caught });
        if (!error.retryable) {
          // Refused for what was just added (a topic the token does not grant, say): those
          // end, the rest go on. Refused for everything: all end.
          const ending = this.fresh.size && this.fresh.size < this.members.size ? [...this.fresh] : [...this.members.values()];
          for (const sub of ending) sub.fail(error);
          continue;
        }
        for (const sub of this.members.values()) sub.emit('reconnecting', error);
        pause = backoff(attempt++, options, error.retryAfter);
      }
      if (pause && !this.changed) await sleep(pause, controller.signal);
    }
    this.running = false;
  }

  /** The members of `keys` are on an opened connection: the set announced places them. */
  started(keys, announced) {
    const set = announced ? parseCursorSet(announced, keys) : new Map();
    for (const key of keys) {
      const sub = this.members.get(key);
      if (!sub) continue;
      this.fresh.delete(sub);
      sub.started(sub instanceof PrefixSubscription ? announced : set.get(key));
    }
  }

  /** Hands a delivery to its member; 'skip' asks for a reopening. */
  offer(keys, delivery) {
    const sub = this.members.get(delivery.topic)
      ?? (keys.length === 1 && keys[0].endsWith('*') ? this.members.get(keys[0]) : undefined);
    return sub ? sub.offer(delivery) : 'repeat';
  }

  /** One request: a stream read until it ends, or one page. Returns the pause before the next. */
  async once(keys, signal) {
    const options = this.http.options;
    const query = this.query(keys);
    const paged = this.kind === 'longpoll' || this.kind === 'poll';
    let timeout = options.requestTimeout;
    withInfo(query, options);
    if (paged) {
      query.set('limit', String(options.pageLimit));
      query.set('client', this.member);
      if (this.kind === 'longpoll') {
        // Members new to the connection are answered at once (it opens them); then held.
        const wait = this.fresh.size ? 0 : options.longpollWait;
        query.set('wait', String(wait));
        timeout += wait * 1000;
      }
    }
    // On SSE the client keeps the set itself: each event's id is its message's own cursor.
    if (this.kind === 'events') query.set('event_ids', 'message');
    const path = { events: '/v1/events', stream: '/v1/stream' }[this.kind] ?? '/v1/messages';
    const accept = { events: 'text/event-stream', stream: 'application/x-ndjson' }[this.kind] ?? 'application/json';
    const response = await this.http.send('GET', `${path}?${query}`, { headers: { accept }, signal, timeout });
    await checkStream(response, accept, this.http.transport);
    if (paged) {
      if (this.kind === 'longpoll' && response.headers.get('pushpull-wait-ms') === null) {
        throw new PushpullError('unsupported', 'long polling is not enabled there', { transport: this.http.transport });
      }
      const json = await this.http.json(response);
      let delivered = 0;
      for (const delivery of [...(json.gaps ?? []), ...json.messages].map((d) => fromJson(d))) {
        if (this.offer(keys, delivery) === 'skip') return 0;
        delivered += 1;
      }
      this.started(keys, json.next);
      const interval = Number(response.headers.get('pushpull-poll-interval-ms'));
      return delivered === 0 && this.kind === 'poll' ? options.pollInterval ?? (interval || 1000) : 0;
    }
    return this.read(keys, response, signal);
  }

  /** Reads a stream until it ends, a delivery skips ahead, or it goes silent too long. */
  async read(keys, response, signal) {
    const decoder = this.kind === 'events' ? new SseDecoder() : new NdjsonDecoder();
    const outcome = await readRecords(response, this.http, decoder, (record) => {
      if (signal.aborted) return 'stop';
      if (record.start !== undefined) {
        this.started(keys, record.start);
        return 'next';
      }
      if (record.type === 'message' && isCursorSet(record.cursor)) {
        // An SSE id is the set after the message: the message's cursor is its topic's.
        record.cursor = parseCursorSet(record.cursor, keys).get(record.topic);
        record.offset = parseCursor(record.cursor)?.offset;
      }
      return this.offer(keys, record);
    });
    return outcome.skipped ? 0 : outcome.retry ?? 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Clients

class HttpTransportClient {
  constructor(name, base, options, tokens) {
    this.transport = name;
    this.stats = newStats();
    this.http = new Http(base, options, tokens, name, this.stats);
    this.options = options;
    this.subscriptions = new Set();
    this.muxes = [];
  }

  publish(topic, data, options) {
    return this.http.publish(topic, data, options);
  }

  fetch(topic, options) {
    return this.http.fetch(topic, options);
  }

  presence(topic) {
    return this.http.presence(topic);
  }

  presenceStats(topic) {
    return this.http.presenceStats(topic);
  }

  subscribe(topic, { after = 'latest' } = {}) {
    const prefix = topic.endsWith('*');
    const sub = prefix ? new PrefixSubscription(topic, after, this.transport, this.stats)
      : new Subscription(topic, after, this.transport, this.stats);
    this.subscriptions.add(sub);
    sub.onClose.push(() => this.subscriptions.delete(sub));
    const kind = this.transport === 'sse' ? 'events' : this.transport;
    if (prefix) {
      // Its own connection, resumed by its own cursor set.
      new Mux(this.http, kind).add(sub);
      return sub;
    }
    if (this.options.multiplex !== false) {
      // Every subscription on one connection, but a second one to a topic (at its own position).
      let mux = this.muxes.find((m) => !m.members.has(topic) && m.members.size < this.options.maxTopicsPerConnection);
      if (!mux) this.muxes.push(mux = new Mux(this.http, kind));
      mux.add(sub);
      return sub;
    }
    switch (this.transport) {
      case 'sse':
        new StreamReader(this.http, sub, { path: 'events', accept: 'text/event-stream', decoder: () => new SseDecoder() });
        break;
      case 'stream':
        new StreamReader(this.http, sub, { path: 'stream', accept: 'application/x-ndjson', decoder: () => new NdjsonDecoder() });
        break;
      case 'longpoll':
        new PageReader(this.http, sub, { wait: true });
        break;
      default:
        new PageReader(this.http, sub, { wait: false });
    }
    return sub;
  }

  close() {
    for (const sub of [...this.subscriptions]) sub.close();
  }
}

/** One WebSocket carrying every subscription, publish and fetch of the client. */
class WsClient {
  constructor(base, options, tokens) {
    this.transport = 'ws';
    this.base = base;
    this.options = options;
    this.tokens = tokens;
    this.stats = newStats();
    this.http = new Http(base, options, tokens, 'ws', this.stats);
    this.subs = new Map(); // key (topic + name) -> { sub, name, awaiting }
    this.prefixes = new Map(); // name -> the entry of a prefix subscription
    this.pending = new Map(); // id -> { frame, resolve, reject }
    this.nextId = 1;
    this.socket = undefined;
    this.closed = false;
    this.attempt = 0;
    this.connecting = undefined;
  }

  async url() {
    const url = new URL('/v1/ws', this.base);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const token = await this.tokens.get();
    // A browser cannot set headers on an upgrade: the token goes in the query.
    if (token) url.searchParams.set('access_token', token);
    return url.toString();
  }

  ensure() {
    if (this.socket || this.connecting || this.closed) return;
    this.connecting = this.open().finally(() => { this.connecting = undefined; });
  }

  async open() {
    let socket;
    try {
      if (this.tokens.hook && this.refused) {
        // Browsers do not show why an upgrade failed: it may have been a refused token.
        await this.tokens.renew(this.tokens.current);
      }
      this.stats.requests += 1;
      socket = new WebSocket(await this.url(), 'pushpull.v1');
    } catch (error) {
      return this.dropped(new PushpullError('connect', String(error?.message ?? error), { retryable: true, transport: 'ws' }));
    }
    if (this.closed) return socket.close(1000);
    socket.binaryType = 'arraybuffer';
    this.socket = socket;
    let opened = false;
    const token = this.tokens.current;
    socket.onopen = () => {
      opened = true;
      this.refused = false;
      this.attempt = 0;
      this.scheduleRefresh(socket, token);
      for (const entry of this.subs.values()) this.sendSubscribe(entry);
      for (const [, request] of this.pending) this.send(request.frame);
    };
    socket.onmessage = (event) => {
      this.stats.bytesIn += byteLength(event.data);
      this.frame(event.data);
    };
    socket.onclose = (event) => {
      if (this.socket === socket) this.socket = undefined;
      clearTimeout(this.refreshTimer);
      if (this.closed) return;
      let error;
      if (event.code === 4401) {
        error = new PushpullError('unauthorized', 'the token expired (4401)', { status: 4401, retryable: true, transport: 'ws' });
        const refused = this.tokens.current;
        this.tokens.renew(refused).finally(() => this.dropped(error, true));
        return;
      }
      if (!opened) this.refused = true;
      error = new PushpullError('connect',
        opened ? `the socket closed (${event.code}${event.reason ? `: ${event.reason}` : ''})`
          : 'the WebSocket upgrade failed', { status: event.code, retryable: true, transport: 'ws' });
      this.dropped(error, opened);
    };
  }

  /**
   * Takes the next token on `socket` before `token` expires (half its remaining lifetime
   * before, at most 30 s), when the hook can give one and the token is a JWT with `exp`: long
   * sessions keep their socket. A refused refresh changes nothing; the server closes at expiry
   * (4401) and the socket is opened again with a new token.
   */
  scheduleRefresh(socket, token) {
    clearTimeout(this.refreshTimer);
    const exp = this.tokens.hook && token ? jwtExpiry(token) : undefined;
    if (exp === undefined) return;
    const left = Math.max(0, exp * 1000 - Date.now());
    const lead = Math.min(30000, left / 2);
    this.refreshTimer = setTimeout(async () => {
      if (this.socket !== socket || this.closed) return;
      const next = await this.tokens.renew(token);
      if (!next || next === token || this.socket !== socket) return;
      try {
        await this.request({ op: 'refresh', token: next });
        this.scheduleRefresh(socket, next);
      } catch {
        // The old token stays until the server closes the socket at its expiry.
      }
    }, left - lead);
  }

  /** The socket is gone: every subscription waits for the next one, which resumes them. */
  async dropped(error, wasOpen) {
    for (const entry of this.subs.values()) {
      entry.awaiting = true;
      entry.sub.emit('reconnecting', error);
    }
    if (!wasOpen && this.subs.size === 0 && this.pending.size === 0) return;
    // An upgrade that never opened, before any subscription did, is the server saying no.
    if (!wasOpen && this.neverOpened()) {
      this.attempt += 1;
      if (this.attempt > this.options.wsAttempts) {
        const failure = new PushpullError('unsupported', 'the server refused the WebSocket upgrade', { transport: 'ws' });
        for (const entry of [...this.subs.values()]) entry.sub.fail(failure);
        for (const [, request] of this.pending) request.reject(failure);
        this.pending.clear();
        return;
      }
    }
    await sleep(backoff(this.attempt++, this.options, error.retryAfter));
    this.ensure();
  }

  neverOpened() {
    return [...this.subs.values()].every((entry) => !entry.sub.isOpen);
  }

  send(frame) {
    if (this.socket?.readyState !== WebSocket.OPEN) return;
    const text = JSON.stringify(frame);
    this.stats.bytesOut += byteLength(text);
    this.socket.send(text);
  }

  sendSubscribe(entry) {
    entry.awaiting = true;
    const frame = { op: 'subscribe', id: `s${this.nextId++}`, topic: entry.sub.topic, after: entry.sub.cursor };
    if (entry.name) frame.sub = entry.name;
    if (this.options.info !== undefined) frame.info = this.options.info;
    entry.requestId = frame.id;
    this.send(frame);
  }

  request(frame) {
    return new Promise((resolve, reject) => {
      const id = `r${this.nextId++}`;
      const request = { frame: { ...frame, id }, resolve, reject };
      this.pending.set(id, request);
      const timer = setTimeout(() => {
        if (this.pending.delete(id)) {
          reject(new PushpullError('timeout', `${frame.op}: no answer within ${this.options.requestTimeout} ms`, { retryable: true, transport: 'ws' }));
        }
      }, this.options.requestTimeout);
      request.resolve = (value) => { clearTimeout(timer); resolve(value); };
      request.reject = (error) => { clearTimeout(timer); reject(error); };
      this.ensure();
      this.send(request.frame);
    });
  }

  frame(data) {
    let header;
    let payload;
    if (typeof data === 'string') {
      header = JSON.parse(data);
    } else {
      const view = new DataView(data);
      const length = view.getUint32(0);
      header = JSON.parse(new TextDecoder().decode(new Uint8Array(data, 4, length)));
      payload = new Uint8Array(data, 4 + length);
    }
    const key = `${header.topic}\u0000${header.sub ?? ''}`;
    switch (header.op) {
      case 'subscribed': {
        const entry = this.subs.get(key);
        if (!entry || entry.requestId !== header.id) return;
        entry.awaiting = false;
        entry.sub.started(header.cursor);
        return;
      }
      case 'message':
      case 'gap': {
        // A prefix subscription's frames name their topic, and the subscription by its name.
        const entry = this.subs.get(key) ?? this.prefixes.get(header.sub);
        // Frames of a subscription being (re)made are from before: drop them.
        if (!entry || entry.awaiting) return;
        const delivery = fromJson(header, header.op === 'message' ? payload ?? undefined : undefined);
        if (entry.sub.offer(delivery) === 'skip') {
          this.send({ op: 'unsubscribe', id: `u${this.nextId++}`, topic: entry.sub.topic, ...(entry.name ? { sub: entry.name } : {}) });
          this.sendSubscribe(entry);
        }
        return;
      }
      case 'unsubscribed': {
        if (header.id) return;
        const entry = this.subs.get(key);
        entry?.sub.fail(new PushpullError('backend', `the server ended the subscription: ${header.reason ?? ''}`, { transport: 'ws' }));
        return;
      }
      case 'error': {
        const request = this.pending.get(header.id);
        const error = new PushpullError(header.kind, header.message, { retryable: header.kind === 'backend' || header.kind === 'rate_limited', transport: 'ws' });
        if (request) {
          this.pending.delete(header.id);
          return request.reject(error);
        }
        for (const entry of this.subs.values()) {
          if (entry.requestId === header.id) return entry.sub.fail(error);
        }
        return;
      }
      case 'published': {
        const request = this.pending.get(header.id);
        this.pending.delete(header.id);
        const { op: _op, id: _id, ...receipt } = header;
        return request?.resolve(receipt);
      }
      case 'page': {
        const request = this.pending.get(header.id);
        this.pending.delete(header.id);
        return request?.resolve(pageFromJson(header, payload));
      }
      case 'presence': {
        const request = this.pending.get(header.id);
        this.pending.delete(header.id);
        const { op: _op, id: _id, ...snapshot } = header;
        return request?.resolve(snapshot);
      }
      case 'presence_stats': {
        const request = this.pending.get(header.id);
        this.pending.delete(header.id);
        return request?.resolve({ members: header.members, users: header.users });
      }
      case 'refreshed': {
        const request = this.pending.get(header.id);
        this.pending.delete(header.id);
        return request?.resolve({ expires: header.expires });
      }
      default:
    }
  }

  publish(topic, data, { event, contentType, key } = {}) {
    const frame = { op: 'publish', topic, key: key ?? randomKey() };
    if (typeof data === 'string') frame.data = data;
    else frame.data_base64 = bytesToBase64(data instanceof Uint8Array ? data : new Uint8Array(data));
    if (event) frame.event = event;
    if (contentType) frame.content_type = contentType;
    return this.request(frame);
  }

  fetch(topic, { after = 'beginning', limit = this.options.pageLimit } = {}) {
    return this.request({ op: 'fetch', topic, after, limit });
  }

  presence(topic) {
    return this.request({ op: 'presence', topic });
  }

  presenceStats(topic) {
    return this.request({ op: 'presence', topic, stats: true });
  }

  subscribe(topic, { after = 'latest' } = {}) {
    const prefix = topic.endsWith('*');
    const sub = prefix ? new PrefixSubscription(topic, after, 'ws', this.stats)
      : new Subscription(topic, after, 'ws', this.stats);
    // The first subscription to a topic is unnamed (its frames are shared by every subscriber
    // on the server); more need names. A prefix subscription is always named.
    let name = prefix ? `p${this.nextId++}` : '';
    while (this.subs.has(`${topic}\u0000${name}`)) name = `s${this.nextId++}`;
    const entry = { sub, name: name || undefined, awaiting: true };
    const key = `${topic}\u0000${name}`;
    this.subs.set(key, entry);
    if (prefix) this.prefixes.set(name, entry);
    sub.onClose.push(() => {
      if (this.subs.get(key) !== entry) return;
      this.subs.delete(key);
      this.prefixes.delete(name);
      this.send({ op: 'unsubscribe', id: `u${this.nextId++}`, topic, ...(entry.name ? { sub: entry.name } : {}) });
    });
    this.ensure();
    this.sendSubscribe(entry);
    return sub;
  }

  close() {
    this.closed = true;
    clearTimeout(this.refreshTimer);
    for (const entry of [...this.subs.values()]) entry.sub.close();
    for (const [, request] of this.pending) request.reject(new PushpullError('closed', 'the client was closed', { transport: 'ws' }));
    this.pending.clear();
    this.socket?.close(1000);
  }
}

function make(name, base, options, tokens) {
  if (name === 'ws') return new WsClient(base, options, tokens);
  if (TRANSPORTS.includes(name)) return new HttpTransportClient(name, base, options, tokens);
  throw new PushpullError('config', `unknown transport ${JSON.stringify(name)}; expected auto or one of ${TRANSPORTS.join(', ')}`);
}

/** Whether a subscription over `client` opens within `timeout` ms; the error if not. */
async function probe(client, timeout) {
  const sub = client.subscribe(PROBE_TOPIC, { after: 'latest' });
  let timer;
  try {
    await Promise.race([
      sub.opened,
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new PushpullError('timeout', `no subscription opened within ${timeout} ms`, { transport: client.transport })), timeout);
      }),
    ]);
    return undefined;
  } catch (error) {
    return error;
  } finally {
    clearTimeout(timer);
    sub.close();
  }
}

/**
 * A client of the pushpull server at `options.url` (the page's own origin by default) over
 * `options.transport`: one of 'ws', 'sse', 'stream', 'longpoll', 'poll', or 'auto' (the
 * default), which opens a subscription over each in turn (`AUTO_ORDER`) and keeps the first
 * that works. The returned client says which in `transport`, and why the others were passed
 * over in `passed`.
 */
export async function connect(options = {}) {
  const settings = { ...DEFAULTS, wsAttempts: 2, ...options };
  const base = new URL(settings.url ?? globalThis.location?.origin ?? 'http://127.0.0.1:7070').toString();
  const tokens = new Tokens(settings.token);
  if (settings.transport !== 'auto') {
    const client = make(settings.transport, base, settings, tokens);
    client.passed = [];
    return client;
  }
  const passed = [];
  for (const name of settings.order ?? AUTO_ORDER) {
    const client = make(name, base, { ...settings, wsAttempts: 0 }, tokens);
    const error = await probe(client, settings.probeTimeout);
    if (!error) {
      if (client.options) client.options.wsAttempts = settings.wsAttempts;
      client.passed = passed;
      return client;
    }
    client.close();
    passed.push({ transport: name, error });
  }
  const why = passed.map((p) => `${p.transport}: ${p.error.message}`).join('; ');
  throw new PushpullError('connect', `no transport works: ${why}`, { retryable: true });
}
