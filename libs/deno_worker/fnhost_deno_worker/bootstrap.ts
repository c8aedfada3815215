// fnhost Deno worker: loads one function revision and runs its invocations, as a local
// process ("deno" runtime) or inside a container ("docker" runtime).
//
// The fnhost process talks to this worker over stdin/stdout (attached through the Docker
// engine for a container) in frames:
//   u32 BE header length | u32 BE body length | JSON header | raw body bytes
// so binary bodies travel untouched. Several invocations run at once, each tagged by
// an id; AsyncLocalStorage attributes console output to the invocation that made it.
//
// The first frame names the function's code: a file to import (`module`), or the code
// itself (`code`), which a container receives that way so that neither it nor the env
// vars appear on its command line or environment, where `docker inspect` would show them.
//
// Everything the function must not reach (the real stdin/stdout, Deno.exit, the process
// environment) is captured or replaced here before the function's module is imported.

import { AsyncLocalStorage } from "node:async_hooks";

type Level = "debug" | "info" | "warn" | "error";
type LogLine = { level: Level; message: string; timestamp: string };
type Header = Record<string, unknown>;

interface Invocation {
  id: number;
  logs: LogLine[];
  logBytes: number;
  waits: Promise<unknown>[];
  finished: boolean; // result sent: later output goes with the "settled" frame
  sentLogs: number; // lines already sent with the result
  controller: AbortController;
  indent: string; // console.group nesting
  stopStream?: () => void; // while its body streams: cancel the body's reader
}

const EMPTY = new Uint8Array(0);
const LOG_LIMIT_BYTES = 1024 * 1024;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const exit = Deno.exit;
const inspect = Deno.inspect;
const memoryUsage = Deno.memoryUsage;
const stdout = Deno.stdout;
const input = Deno.stdin.readable.getReader();
const storage = new AsyncLocalStorage<Invocation>();
const invocations = new Map<number, Invocation>();

let handler: (req: Request, ctx: unknown) => unknown;
let ctxEnv: Readonly<Record<string, string>> = Object.freeze({});
let bodyLimit = 0;
let frameLimit = 0;

// ---- framing ----------------------------------------------------------------------

// Synchronous on purpose: a frame is written whole before any other code runs, so frames
// of concurrent invocations never interleave, and it costs a third of the CPU of a stream
// write. fnhost reads the pipe continuously, so a full pipe only waits for fnhost.
function writeAll(data: Uint8Array): void {
  let offset = 0;
  while (offset < data.length) offset += stdout.writeSync(data.subarray(offset));
}

function send(header: Header, body: Uint8Array = EMPTY): void {
  sendEncoded(encoder.encode(JSON.stringify(header)), body);
}

// A small body is copied into the frame: one write (a system call) instead of two.
const COPY_BODY_BYTES = 64 * 1024;

function sendEncoded(head: Uint8Array, body: Uint8Array): void {
  const inline = body.length <= COPY_BODY_BYTES;
  const frame = new Uint8Array(8 + head.length + (inline ? body.length : 0));
  const view = new DataView(frame.buffer);
  view.setUint32(0, head.length);
  view.setUint32(4, body.length);
  frame.set(head, 8);
  if (inline) {
    if (body.length) frame.set(body, 8 + head.length);
    writeAll(frame);
  } else {
    writeAll(frame);
    writeAll(body);
  }
}

// Resident memory for each result, sampled at most every RSS_SAMPLE_MS: a measurement costs
// about 10 us, more than the rest of a hello world's answer.
const RSS_SAMPLE_MS = 20;
let rssValue = 0;
let rssAt = -Infinity;

function rss(): number {
  const now = performance.now();
  if (now - rssAt >= RSS_SAMPLE_MS) {
    rssValue = memoryUsage().rss;
    rssAt = now;
  }
  return rssValue;
}

const chunks: Uint8Array[] = [];
let buffered = 0;

async function fill(size: number): Promise<boolean> {
  while (buffered < size) {
    const { value, done } = await input.read();
    if (done) return false;
    chunks.push(value);
    buffered += value.length;
  }
  return true;
}

function take(size: number): Uint8Array {
  if (size === 0) return EMPTY;
  const head = chunks[0];
  if (head.length >= size) {
    buffered -= size;
    if (head.length === size) chunks.shift();
    else chunks[0] = head.subarray(size);
    return head.subarray(0, size);
  }
  const out = new Uint8Array(size);
  let offset = 0;
  while (offset < size) {
    const chunk = chunks[0];
    const count = Math.min(chunk.length, size - offset);
    out.set(chunk.subarray(0, count), offset);
    offset += count;
    if (count === chunk.length) chunks.shift();
    else chunks[0] = chunk.subarray(count);
  }
  buffered -= size;
  return out;
}

async function receive(): Promise<[Header, Uint8Array] | null> {
  if (!(await fill(8))) return null;
  const prefix = take(8);
  const view = new DataView(prefix.buffer, prefix.byteOffset, 8);
  const headLength = view.getUint32(0);
  const bodyLength = view.getUint32(4);
  if (!(await fill(headLength + bodyLength))) return null;
  const header = JSON.parse(decoder.decode(take(headLength)));
  return [header, take(bodyLength)];
}

// ---- paths and messages -----------------------------------------------------------

// Host paths never leave the worker: the function's file is "handler.ts" to the user.
const hostPaths: [string, string][] = [];

function hidePathsOf(url: string, replacement: string): void {
  hostPaths.push([url, replacement], [decodeURIComponent(new URL(url).pathname), replacement]);
}

hidePathsOf(import.meta.url, "fnhost:bootstrap");

function neutral(text: string): string {
  for (const [path, replacement] of hostPaths) text = text.replaceAll(path, replacement);
  return text;
}

function errorMessage(error: unknown): string {
  if (error instanceof Error) return neutral(error.message || String(error));
  return neutral(String(error));
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (value === undefined) return "undefined";
  if (typeof value === "object") {
    const name = (value as object).constructor?.name;
    return name && name !== "Object" ? `a ${name} object` : "a plain object";
  }
  return `a ${typeof value} (${inspect(value, { colors: false }).slice(0, 80)})`;
}

// ---- console capture --------------------------------------------------------------

function show(value: unknown): string {
  return typeof value === "string" ? value : inspect(value, { colors: false });
}

// printf-style substitutions as Deno's console does them, then the rest joined by spaces.
function format(args: unknown[]): string {
  let rest = args;
  let head = "";
  if (typeof args[0] === "string" && args.length > 1 && args[0].includes("%")) {
    let next = 1;
    head = args[0].replace(/%[sdifjoOc%]/g, (spec) => {
      if (spec === "%%") return "%";
      if (next >= args.length) return spec;
      const value = args[next++];
      switch (spec) {
        case "%s":
          return show(value);
        case "%d":
        case "%i":
          return typeof value === "bigint" ? `${value}n` : String(Math.trunc(Number(value)));
        case "%f":
          return String(Number(value));
        case "%j":
          return JSON.stringify(value);
        case "%c":
          return "";
        default:
          return inspect(value, { colors: false });
      }
    });
    rest = args.slice(next);
  } else if (args.length) {
    head = show(args[0]);
    rest = args.slice(1);
  }
  return [head, ...rest.map(show)].join(" ");
}

function record(invocation: Invocation | undefined, level: Level, message: string): void {
  // Top-level module code, or after the result with no waitUntil work left to wait for.
  if (!invocation || (invocation.finished && invocation.waits.length === 0)) return;
  if (invocation.logBytes >= LOG_LIMIT_BYTES) return;
  const indent = invocation.indent;
  message = neutral(indent ? message.replace(/^/gm, indent) : message);
  invocation.logBytes += message.length;
  if (invocation.logBytes >= LOG_LIMIT_BYTES) message = "[fnhost] log output truncated";
  invocation.logs.push({ level, message, timestamp: new Date().toISOString() });
}

function log(level: Level, message: string): void {
  record(storage.getStore(), level, message);
}

function installConsole(): void {
  const counts = new Map<string, number>();
  const timers = new Map<string, number>();
  const methods: Record<string, (...args: unknown[]) => void> = {
    log: (...args) => log("info", format(args)),
    info: (...args) => log("info", format(args)),
    debug: (...args) => log("debug", format(args)),
    warn: (...args) => log("warn", format(args)),
    error: (...args) => log("error", format(args)),
    trace: (...args) => {
      const stack = (new Error().stack ?? "").split("\n").slice(2).join("\n");
      log("debug", `Trace${args.length ? ": " + format(args) : ""}\n${stack}`);
    },
    dir: (value) => log("info", inspect(value, { colors: false })),
    dirxml: (...args) => log("info", args.map((a) => inspect(a, { colors: false })).join(" ")),
    table: (data) => log("info", inspect(data, { colors: false })),
    assert: (condition, ...args) => {
      if (!condition) log("error", `Assertion failed${args.length ? ": " + format(args) : ""}`);
    },
    count: (label = "default") => {
      const count = (counts.get(String(label)) ?? 0) + 1;
      counts.set(String(label), count);
      log("info", `${label}: ${count}`);
    },
    countReset: (label = "default") => void counts.delete(String(label)),
    time: (label = "default") => void timers.set(String(label), performance.now()),
    timeLog: (label = "default", ...args) => {
      const start = timers.get(String(label));
      if (start !== undefined) {
        const elapsed = `${label}: ${(performance.now() - start).toFixed(0)}ms`;
        log("info", [elapsed, ...args.map(show)].join(" "));
      }
    },
    timeEnd: (label = "default") => {
      methods.timeLog(label);
      timers.delete(String(label));
    },
    group: (...args) => {
      if (args.length) log("info", format(args));
      const invocation = storage.getStore();
      if (invocation) invocation.indent += "  ";
    },
    groupCollapsed: (...args) => methods.group(...args),
    groupEnd: () => {
      const invocation = storage.getStore();
      if (invocation) invocation.indent = invocation.indent.slice(2);
    },
  };
  Object.assign(console, methods);
}

// ---- sandbox ----------------------------------------------------------------------

// The function sees its own env vars and nothing else: the real process environment
// (which holds nothing of fnhost's anyway) stays behind the missing --allow-env.
function installEnv(own: Record<string, string>): void {
  const vars = new Map(Object.entries(own));
  const env = Object.freeze({
    get: (key: string) => vars.get(String(key)),
    has: (key: string) => vars.has(String(key)),
    set: (key: string, value: string) => void vars.set(String(key), String(value)),
    delete: (key: string) => void vars.delete(String(key)),
    toObject: () => Object.fromEntries(vars),
  });
  Object.defineProperty(Deno, "env", { value: env, enumerable: true });
  const nodeEnv = new Proxy({} as Record<string, string>, {
    get: (_, key) => (typeof key === "string" ? vars.get(key) : undefined),
    set: (_, key, value) => (vars.set(String(key), String(value)), true),
    has: (_, key) => vars.has(String(key)),
    deleteProperty: (_, key) => vars.delete(String(key)) || true,
    ownKeys: () => [...vars.keys()],
    getOwnPropertyDescriptor: (_, key) =>
      vars.has(String(key))
        ? { value: vars.get(String(key)), writable: true, enumerable: true, configurable: true }
        : undefined,
  });
  const process = (globalThis as { process?: object }).process;
  if (process) Object.defineProperty(process, "env", { value: nodeEnv, enumerable: true });
  ctxEnv = Object.freeze({ ...own });
}

function refuse(what: string): () => never {
  return () => {
    throw new Error(`${what} is not available inside a function`);
  };
}

// The protocol streams are not the function's: its writes go to its log instead.
function standardStream(level: Level) {
  const write = (data: Uint8Array) => {
    log(level, decoder.decode(data).replace(/\n$/, ""));
    return data.length;
  };
  return {
    write: (data: Uint8Array) => Promise.resolve(write(data)),
    writeSync: write,
    writable: new WritableStream<Uint8Array>({ write: (data) => void write(data) }),
    isTerminal: () => false,
    close: () => {},
  };
}

function installSandbox(): void {
  const closedInput = {
    read: () => Promise.resolve(null),
    readSync: () => null,
    readable: new ReadableStream<Uint8Array>({ start: (c) => c.close() }),
    isTerminal: () => false,
    setRaw: refuse("Deno.stdin.setRaw"),
    close: () => {},
  };
  Object.defineProperty(Deno, "stdin", { value: closedInput });
  Object.defineProperty(Deno, "stdout", { value: standardStream("info") });
  Object.defineProperty(Deno, "stderr", { value: standardStream("error") });
  Object.defineProperty(Deno, "exit", { value: refuse("Deno.exit()") });
  const process = (globalThis as unknown as { process?: Record<string, unknown> }).process;
  if (process) {
    Object.defineProperty(process, "exit", { value: refuse("process.exit()") });
    for (const [name, level] of [["stdout", "info"], ["stderr", "error"]] as const) {
      const stream = standardStream(level);
      Object.defineProperty(process, name, {
        value: {
          write: (chunk: string | Uint8Array) => {
            stream.writeSync(typeof chunk === "string" ? encoder.encode(chunk) : chunk);
            return true;
          },
          isTTY: false,
        },
      });
    }
  }
  // A throwing timer callback is logged in the invocation that set the timer (the
  // global "error" event below has lost track of it by then).
  for (const name of ["setTimeout", "setInterval"] as const) {
    const schedule = globalThis[name] as unknown as (
      callback: unknown,
      ...rest: unknown[]
    ) => number;
    Object.defineProperty(globalThis, name, {
      value: (callback: unknown, ...rest: unknown[]) =>
        schedule(
          typeof callback !== "function" ? callback : (...args: unknown[]) => {
            try {
              callback(...args);
            } catch (error) {
              log("error", `Uncaught ${formatError(error)}`);
            }
          },
          ...rest,
        ),
      writable: true,
      configurable: true,
    });
  }
  // Deno exits on an uncaught error or unhandled rejection; one function call must not
  // take down the calls it shares the worker with, so they become log lines.
  addEventListener("error", (event) => {
    event.preventDefault();
    log("error", `Uncaught ${formatError(event.error ?? event.message)}`);
  });
  addEventListener("unhandledrejection", (event) => {
    event.preventDefault();
    log("error", `Uncaught (in promise) ${formatError(event.reason)}`);
  });
}

function formatError(error: unknown): string {
  return error instanceof Error ? inspect(error, { colors: false }) : show(error);
}

// ---- loading ----------------------------------------------------------------------

function loadError(error: unknown): string {
  if (!(error instanceof Error)) return `the module threw while loading: ${neutral(String(error))}`;
  const lines = neutral(error.message).split("\n");
  // Deno's parse errors carry a code frame; keep the message and its "at handler.ts:L:C".
  const where = lines.find((line) => /^\s*at handler\.ts:\d+:\d+/.test(line))?.trim();
  const location = where ?? neutral(error.stack ?? "").match(/at .*?(handler\.ts:\d+:\d+)/)?.[1];
  const first = lines[0].startsWith("SyntaxError") || lines[0].startsWith("TypeError")
    ? lines[0]
    : `${error.name}: ${lines[0]}`;
  if (!location) return first;
  return `${first} ${location.startsWith("at ") ? location : "at " + location}`;
}

const CODE_DIR = "/tmp/fn";

// The code received in the init frame, written to the container's own tmpfs; write access
// is revoked before it is imported.
function writeCode(code: string): string {
  Deno.mkdirSync(CODE_DIR, { recursive: true });
  Deno.writeTextFileSync(`${CODE_DIR}/handler.ts`, code);
  Deno.permissions.revokeSync({ name: "write" });
  return new URL(`file://${CODE_DIR}/handler.ts`).href;
}

async function load(header: Header): Promise<void> {
  const moduleUrl = typeof header.code === "string"
    ? writeCode(header.code)
    : String(header.module);
  hidePathsOf(moduleUrl.slice(0, moduleUrl.lastIndexOf("/") + 1), ""); // its directory
  bodyLimit = Number(header.body_limit);
  frameLimit = Number(header.frame_limit);
  installEnv(header.env as Record<string, string>);
  installConsole();
  installSandbox();
  let module: { default?: unknown };
  try {
    module = await import(moduleUrl);
  } catch (error) {
    send({ t: "load_error", message: loadError(error) });
    return exit(1);
  }
  if (typeof module.default !== "function") {
    const got = "default" in module ? `; the default export is ${describe(module.default)}` : "";
    send({ t: "load_error", message: `the module has no default export function${got}` });
    return exit(1);
  }
  handler = module.default as typeof handler;
  send({ t: "ready", rss: rss() });
}

// ---- response bodies ----------------------------------------------------------------
//
// A body that is complete when the handler returns (a string, bytes, JSON, a Blob, a
// stream filled synchronously) goes back in the result frame, as one piece. A body whose
// next chunk is not there yet (a ReadableStream fed by timers or I/O, a proxied fetch) is
// streamed: a result frame with `stream: true` (status and headers), a chunk frame per
// chunk as it is produced, then an end frame with the outcome and the logs. "Not there
// yet" means a read that does not settle within a few microtask turns: Deno's static
// bodies settle in at most 6, anything waiting on the event loop never does.

const SOON_TURNS = 16;
const NOT_YET = Symbol("not yet");
const STREAMED = Symbol("streamed");
type Read = ReadableStreamReadResult<unknown>;

async function settledSoon<T>(promise: Promise<T>): Promise<T | typeof NOT_YET> {
  let state = 0;
  let value: T | undefined;
  let failure: unknown;
  promise.then(
    (result) => ((state = 1), (value = result)),
    (error) => ((state = 2), (failure = error)),
  );
  for (let turn = 0; state === 0 && turn < SOON_TURNS; turn++) await null;
  if (state === 2) throw failure;
  return state === 1 ? (value as T) : NOT_YET;
}

// Chunks as Deno.serve accepts them, plus strings (encoded as UTF-8).
function bytesOf(chunk: unknown): Uint8Array {
  if (chunk instanceof Uint8Array) return chunk;
  if (typeof chunk === "string") return encoder.encode(chunk);
  if (ArrayBuffer.isView(chunk)) {
    return new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  }
  if (chunk instanceof ArrayBuffer) return new Uint8Array(chunk);
  throw new TypeError(`the response stream produced ${describe(chunk)}, not bytes`);
}

function concat(parts: Uint8Array[], size: number): Uint8Array {
  if (parts.length === 1) return parts[0];
  const body = new Uint8Array(size);
  let offset = 0;
  for (const part of parts) {
    body.set(part, offset);
    offset += part.length;
  }
  return body;
}

// Deno keeps a body given as a string, bytes, a Blob or form data in internal slots: such a
// body is complete and read in one call (3 us, against 8 us through a reader). Where these
// internals are not found (another Deno version), every body goes through the reader.
const probe = Object.getOwnPropertySymbols(new Response(""));
const LAZY_BODY = probe.find((symbol) => symbol.description === "lazy static body");
const INNER = probe.find((symbol) => symbol.description === "response");

function staticLength(response: Response): number | null {
  if (!LAZY_BODY || !INNER) return null;
  const slots = response as unknown as Record<symbol, unknown>;
  const lazy = slots[LAZY_BODY];
  if (typeof lazy === "string") return lazy.length; // UTF-16 units: a lower bound of bytes
  if (lazy instanceof Uint8Array) return lazy.length;
  const body = (slots[INNER] as { body?: { source?: unknown; length?: unknown } | null })?.body;
  if (body === null) return 0;
  if (body?.source === null || body?.source === undefined) return null;
  return typeof body.length === "number" ? body.length : 0;
}

// The whole body, null past the limit, or STREAMED when `stream()` took over.
async function readBody(
  invocation: Invocation,
  response: Response,
): Promise<Uint8Array | null | typeof STREAMED> {
  const known = staticLength(response); // before `.body`, which turns it into a stream
  if (known !== null && !response.bodyUsed) {
    if (known > bodyLimit) return null;
    const content = await response.bytes();
    return content.length > bodyLimit ? null : content;
  }
  if (!response.body) return EMPTY;
  const reader = response.body.getReader();
  const parts: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const read = reader.read();
    const next = await settledSoon(read);
    if (next === NOT_YET) {
      await stream(invocation, response, reader, read, parts, size);
      return STREAMED;
    }
    if (next.done) return concat(parts, size);
    const chunk = bytesOf(next.value);
    size += chunk.length;
    if (size > bodyLimit) {
      await reader.cancel();
      return null;
    }
    parts.push(chunk);
  }
}

async function stream(
  invocation: Invocation,
  response: Response,
  reader: ReadableStreamDefaultReader<unknown>,
  pending: Promise<Read>,
  parts: Uint8Array[],
  size: number,
): Promise<void> {
  const id = invocation.id;
  const chunkHead = encoder.encode(JSON.stringify({ t: "chunk", id }));
  invocation.stopStream = () => void reader.cancel().catch(() => {});
  send({
    t: "result",
    id,
    outcome: "ok",
    status: response.status,
    headers: [...response.headers],
    stream: true,
  });
  for (const part of parts) sendEncoded(chunkHead, part);
  let end: Header = { outcome: "ok" };
  try {
    for (let next = await pending; !next.done; next = await reader.read()) {
      if (invocation.finished) return; // cancelled: its answer was already sent
      const chunk = bytesOf(next.value);
      size += chunk.length;
      if (size > bodyLimit) {
        end = { outcome: "error", error: "response body too large" };
        await reader.cancel();
        break;
      }
      if (chunk.length) sendEncoded(chunkHead, chunk);
    }
  } catch (error) {
    end = { outcome: "error", error: `the response stream failed: ${errorMessage(error)}` };
    reader.cancel(error).catch(() => {});
  }
  if (!invocation.finished) finish(invocation, "end", end, EMPTY);
}

// ---- invocations ------------------------------------------------------------------

async function call(invocation: Invocation, header: Header, body: Uint8Array): Promise<void> {
  let result: Header;
  let resultBody: Uint8Array = EMPTY;
  try {
    const method = String(header.method);
    const hasBody = method !== "GET" && method !== "HEAD";
    const request = new Request(String(header.url), {
      method,
      headers: header.headers as [string, string][],
      body: hasBody && body.length ? (body as Uint8Array<ArrayBuffer>) : undefined,
      signal: invocation.controller.signal,
    });
    const ctx = {
      env: ctxEnv,
      user: header.user ?? null,
      trigger: header.trigger,
      waitUntil: (promise: Promise<unknown>) => waitUntil(invocation, promise),
      publish: (channel: string, data?: unknown) => publish(invocation, channel, data),
    };
    const response = await handler(request, ctx);
    if (!(response instanceof Response)) {
      result = {
        outcome: "bad_return",
        error: `the handler must return a Response, but it returned ${describe(response)}`,
      };
    } else {
      const content = await readBody(invocation, response);
      if (content === STREAMED) return; // the stream sent its own frames
      if (content === null) {
        result = { outcome: "error", error: "response body too large" };
      } else {
        result = { outcome: "ok", status: response.status, headers: [...response.headers] };
        resultBody = content;
      }
    }
  } catch (error) {
    result = { outcome: "error", error: errorMessage(error) };
  }
  if (invocation.finished) return; // cancelled meanwhile: its answer was already sent
  finish(invocation, "result", result, resultBody);
}

// The last frame of an invocation: "result" (with the whole body) or "end" (of a stream).
function finish(invocation: Invocation, type: string, result: Header, body: Uint8Array): void {
  invocation.finished = true;
  invocation.sentLogs = invocation.logs.length;
  invocations.delete(invocation.id);
  const pending = invocation.waits.length > 0;
  const header = {
    t: type,
    id: invocation.id,
    ...result,
    logs: invocation.logs,
    rss: rss(),
    pending,
  };
  const head = encoder.encode(JSON.stringify(header));
  if (8 + head.length + body.length > frameLimit) {
    const error = "response too large (body, headers and logs exceed the frame limit)";
    send({ t: type, id: invocation.id, outcome: "error", error, logs: [], rss: rss(), pending });
  } else {
    sendEncoded(head, body);
  }
  if (pending) {
    // waitUntil work's console lines go to the same invocation record, in this frame.
    void Promise.allSettled(invocation.waits).then(() =>
      send({ t: "settled", id: invocation.id, logs: invocation.logs.slice(invocation.sentLogs) }),
    );
  }
}

function waitUntil(invocation: Invocation, promise: Promise<unknown>): void {
  invocation.waits.push(
    Promise.resolve(promise).catch((error) => {
      record(invocation, "error", `waitUntil promise rejected: ${formatError(error)}`);
    }),
  );
}

// ctx.publish(channel, data): a WebSocket broadcast to the channel's subscribers in the
// function's app, delivered by fnhost after this frame; it never fails the invocation.
// Usage errors (no channel, data that is not JSON, too big) throw at once.
function publish(invocation: Invocation, channel: string, data: unknown): Promise<void> {
  if (typeof channel !== "string" || !channel) {
    throw new TypeError("ctx.publish: the channel must be a non-empty string");
  }
  let head: Uint8Array;
  try {
    head = encoder.encode(
      JSON.stringify({ t: "publish", id: invocation.id, channel, data: data ?? null }),
    );
  } catch (error) {
    throw new TypeError(`ctx.publish: the data must be JSON-serializable (${errorMessage(error)})`);
  }
  if (head.length > bodyLimit) {
    throw new RangeError(`ctx.publish: the message is larger than ${bodyLimit} bytes`);
  }
  sendEncoded(head, EMPTY);
  return Promise.resolve();
}

function start(header: Header, body: Uint8Array): void {
  const invocation: Invocation = {
    id: Number(header.id),
    logs: [],
    logBytes: 0,
    sentLogs: 0,
    waits: [],
    finished: false,
    controller: new AbortController(),
    indent: "",
  };
  invocations.set(invocation.id, invocation);
  void storage.run(invocation, () => call(invocation, header, body));
}

// Past its timeout an invocation is answered with what it logged so far; the reply also
// proves to fnhost that the event loop is not stuck.
function cancel(id: number): void {
  const invocation = invocations.get(id);
  if (!invocation) {
    send({ t: "cancelled", id, logs: [] });
    return;
  }
  invocation.finished = true;
  invocations.delete(id);
  invocation.controller.abort(new DOMException("the invocation timed out", "TimeoutError"));
  invocation.stopStream?.();
  send({ t: "cancelled", id, logs: invocation.logs });
}

async function main(): Promise<void> {
  const first = await receive();
  if (!first || first[0].t !== "init") return exit(2);
  await load(first[0]);
  for (;;) {
    const frame = await receive();
    if (!frame) break; // stdin closed: fnhost stopped this worker or went away
    const [header, body] = frame;
    if (header.t === "invoke") start(header, body);
    else if (header.t === "cancel") cancel(Number(header.id));
  }
  exit(0);
}

await main();
