// Small helpers for Switchyard handlers written in JavaScript.
//
// componentize-js throws a capability error as an Error whose `payload` is the
// WIT variant, and takes a thrown `{ tag, val }` as the handler's error. These
// helpers give the common cases short names: read the payload as JSON, fail
// with `reject`/`retry`, and call a capability whose failure becomes the usual
// handler failure (unavailable: retry in a second; anything else: reject).
import * as rawCache from 'switchyard:handler/cache@0.1.0';

/** A permanent failure: `throw reject("why")` dead-letters the message. */
export function reject(reason) {
  return { tag: 'reject', val: reason };
}

/** A transient failure: `throw retry(1000, "why")` delivers it again later. */
export function retry(delayMs, reason) {
  return { tag: 'retry', val: { delayMs: BigInt(delayMs), reason } };
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** The payload parsed as strict JSON (UTF-8), or a reject naming `what`. */
export function payloadJson(msg, what = 'payload') {
  try {
    return JSON.parse(utf8.decode(msg.payload));
  } catch (e) {
    throw reject(`malformed ${what}: not JSON: ${e.message}`);
  }
}

// Object keys in Unicode code point order, as Rust and Python sort them
// (a plain sort compares UTF-16 code units, which differs above U+FFFF).
function byCodePoint(a, b) {
  const x = Array.from(a), y = Array.from(b);
  for (let i = 0; i < Math.min(x.length, y.length); i++) {
    const d = x[i].codePointAt(0) - y[i].codePointAt(0);
    if (d !== 0) return d;
  }
  return x.length - y.length;
}

function sorted(value) {
  if (Array.isArray(value)) return value.map(sorted);
  if (value !== null && typeof value === 'object') {
    const out = {};
    for (const k of Object.keys(value).sort(byCodePoint)) out[k] = sorted(value[k]);
    return out;
  }
  return value;
}

const encoder = new TextEncoder();

/** Compact JSON with object keys sorted, the form every Switchyard example writes. */
export function canonicalJson(value) {
  return encoder.encode(JSON.stringify(sorted(value)));
}

/** The handler failure for a capability error: retry when the backend is unavailable, reject otherwise. */
export function failure(error) {
  const e = error && error.payload ? error.payload : null;
  if (!e) throw error;
  switch (e.tag) {
    case 'unavailable': return retry(1000, e.val);
    case 'denied': return reject(`denied: ${e.val}`);
    case 'invalid': return reject(`invalid: ${e.val}`);
    default: return reject(`too large: ${e.val}`);
  }
}

function wrap(f) {
  return (...args) => {
    try {
      return f(...args);
    } catch (e) {
      throw failure(e);
    }
  };
}

/** The cache capability, failing with `failure` instead of a capability error. */
export const cache = {
  get: wrap(rawCache.get),
  set: wrap((key, value, ttlMs) => rawCache.set(key, value, ttlMs === undefined ? undefined : BigInt(ttlMs))),
  delete: wrap(rawCache.delete),
};
