// Types of pushpull's browser client (pushpull.js).

/** A transport the browser client speaks. */
export type TransportName = 'ws' | 'sse' | 'stream' | 'longpoll' | 'poll';

/**
 * `beginning`, `latest`, `last:N` (the last N messages, then follow), `since:TIME` (milliseconds
 * since the Unix epoch or an RFC 3339 date-time), or the `EPOCH-OFFSET` cursor of a message,
 * gap or receipt.
 */
export type Cursor = 'beginning' | 'latest' | `last:${number}` | `since:${string}` | string;

export const AUTO_ORDER: readonly TransportName[];
export const TRANSPORTS: readonly TransportName[];

export interface Message {
  type: 'message';
  topic: string;
  cursor: string;
  offset: number;
  /** Milliseconds since the Unix epoch, when the message was stored. */
  timestamp: number | undefined;
  event?: string;
  contentType?: string;
  /** Text for UTF-8 payloads, bytes for anything else. */
  data: string | Uint8Array;
}

/** A member of a topic's presence: a subscription following it. */
export interface Member {
  /** What tells it from every other member of the topic. */
  client: string;
  /** The `sub` of its token, if it had one. */
  user?: string;
  /** What the client said about itself (its `info` option). */
  info?: unknown;
}

/**
 * Who follows a topic, and the cursor of its presence log (`.presence:TOPIC`) at that moment:
 * subscribing to the presence log from `cursor` gives every `join` and `leave` since (each a
 * message whose `data` is the member's JSON), or a gap (then take a new snapshot).
 */
export interface PresenceSnapshot {
  topic: string;
  members: Member[];
  cursor: string;
}

/** How many follow a topic: members, and distinct users among them. */
export interface PresenceStats {
  members: number;
  users: number;
}

export interface Gap {
  type: 'gap';
  topic: string;
  reason: 'retention' | 'epoch_changed';
  /** The first and last missed offsets of the current epoch, when any were. */
  first?: number;
  last?: number;
  /** Where reading goes on from. */
  cursor: string;
  /** For `epoch_changed`: the epoch of the cursor read from. */
  previousEpoch?: string;
}

export type Delivery = Message | Gap;

export interface Page {
  gap?: Gap;
  messages: Message[];
  next: string;
}

export interface Receipt {
  topic: string;
  cursor: string;
  offset: number;
  timestamp: number;
}

export interface PublishOptions {
  event?: string;
  contentType?: string;
  /** An idempotency key; a fresh random one by default, so retries never store twice. */
  key?: string;
}

export interface FetchOptions {
  after?: Cursor;
  limit?: number;
}

export interface SubscribeOptions {
  /**
   * Where to start: `latest` by default; `beginning`, a cursor, `last:N` (the last N retained
   * messages), `since:TIME` (RFC 3339 or epoch milliseconds); for a prefix subscription, also
   * the cursor set (`@…`) of an earlier one's `cursor`, to resume it.
   */
  after?: Cursor;
}

/** What a client has cost: HTTP requests (an upgrade is one), body bytes, messages. */
export interface Stats {
  requests: number;
  bytesIn: number;
  bytesOut: number;
  messages: number;
}

export class PushpullError extends Error {
  kind: string;
  status?: number;
  retryable: boolean;
  retryAfter?: number;
  transport?: string;
}

export class Subscription implements AsyncIterable<Delivery> {
  readonly topic: string;
  /** The cursor of the last delivery handed over, or where the subscription starts. */
  readonly cursor: Cursor;
  readonly transport: TransportName;
  readonly closed: boolean;
  readonly error?: PushpullError;
  /** Resolves once the server has accepted the subscription; rejects if it never does. */
  readonly opened: Promise<Subscription>;
  on(event: 'message', listener: (message: Message) => void): () => void;
  on(event: 'gap', listener: (gap: Gap) => void): () => void;
  on(event: 'open', listener: (cursor: Cursor) => void): () => void;
  on(event: 'reconnecting', listener: (error: PushpullError) => void): () => void;
  on(event: 'error', listener: (error: PushpullError) => void): () => void;
  on(event: 'close', listener: (error?: PushpullError) => void): () => void;
  close(): void;
  [Symbol.asyncIterator](): AsyncIterator<Delivery>;
}

export interface Client {
  readonly transport: TransportName;
  /** The transports `auto` passed over, and why. */
  readonly passed: { transport: TransportName; error: PushpullError }[];
  readonly stats: Stats;
  publish(topic: string, data: string | Uint8Array | ArrayBuffer, options?: PublishOptions): Promise<Receipt>;
  fetch(topic: string, options?: FetchOptions): Promise<Page>;
  /** Who follows `topic` (needs the right to read it). */
  presence(topic: string): Promise<PresenceSnapshot>;
  /** How many follow `topic`. */
  presenceStats(topic: string): Promise<PresenceStats>;
  /**
   * Follows `topic`, or every topic with a prefix (`orders:*`, those created later included;
   * deliveries name their topic, and the subscription's `cursor` is a cursor set). Over sse,
   * stream, longpoll and poll every subscription of the client shares one connection (but a
   * second one to the same topic, and each prefix subscription, which take their own); adding
   * or removing one reopens it with the cursor set of all, losing and repeating nothing.
   */
  subscribe(topic: string, options?: SubscribeOptions): Subscription;
  close(): void;
}

export interface ConnectOptions {
  /** The server's base URL; the page's origin by default. */
  url?: string;
  /** A transport, or `auto` (the default). */
  transport?: TransportName | 'auto';
  /**
   * The application's token hook, called before the first request and with `renew: true`
   * after the server refused the token (401, or close code 4401). Return null for none.
   */
  token?: (request: { renew: boolean }) => string | null | Promise<string | null>;
  /** How long `auto` waits for each transport's probe subscription, in ms (5000). */
  probeTimeout?: number;
  /** The first retry delay, in ms (250); doubled per failure up to `maxRetryDelay` (10000). */
  retryDelay?: number;
  maxRetryDelay?: number;
  /** How long a request may go unanswered, in ms (30000). */
  requestTimeout?: number;
  /** How long a stream may stay silent before it is reopened, in ms (45000). */
  idleTimeout?: number;
  /** Long polling's `wait`, in seconds (25). */
  longpollWait?: number;
  /** Polling's interval, in ms; the server's `Pushpull-Poll-Interval-Ms` by default. */
  pollInterval?: number;
  /** The most messages per page (100). */
  pageLimit?: number;
  /** Whether an HTTP transport carries every subscription on one connection (true). */
  multiplex?: boolean;
  /** The most topics one connection carries (100, the server's default bound); more open another. */
  maxTopicsPerConnection?: number;
  /**
   * What this client tells the other members of the topics it follows (any small JSON value,
   * at most the server's `presence.max_info` bytes): sent with every subscription.
   */
  info?: unknown;
  /** The order `auto` tries transports in (`AUTO_ORDER`). */
  order?: TransportName[];
}

export function connect(options?: ConnectOptions): Promise<Client>;

/** `{ epoch, offset }` of an `EPOCH-OFFSET` cursor; null for `beginning` and `latest`. */
export function parseCursor(cursor: Cursor): { epoch: string; offset: number } | null;

/** Whether `text` is a cursor set (`@…`). */
export function isCursorSet(text: unknown): boolean;

/** The positions (topic → cursor) of a cursor set written relative to the selectors `keys`. */
export function parseCursorSet(text: string, keys: string[]): Map<string, Cursor>;

/** The cursor set text of `positions` relative to the selectors `keys`. */
export function encodeCursorSet(positions: Map<string, Cursor>, keys: string[]): string;

/** Whether `delivery` comes next after `position`, repeats, or skips ahead. */
export function continuity(position: Cursor, delivery: Delivery): 'next' | 'repeat' | 'skip';

export class SseDecoder {
  feed(chunk: string): Iterable<Delivery | { start: string }>;
}

export class NdjsonDecoder {
  feed(chunk: string): Iterable<Delivery | { start: string }>;
}
