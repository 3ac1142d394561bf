// Small helpers for Switchyard handlers written in JavaScript.
//
// componentize-js throws a capability error as an Error whose `payload` is the
// WIT variant, and takes a thrown `{ tag, val }` as the handler's error. These
// helpers give the common cases short names: read the payload as strict JSON
// and write it canonically (plugins/cache-update/SPEC.md), fail with
// `reject`/`retry`, and call a capability whose failure becomes the usual
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

/** Arrays and objects open at once, the top-level value being the first. */
export const MAX_DEPTH = 64;

/** Why a payload was refused or a value cannot be encoded: the reason after
 * `malformed <what>: ` (or `cannot encode JSON: `). */
export class JsonError extends Error {}

// Plain JavaScript runs slowly in a component (an interpreter: about a
// microsecond a loop turn, more for a regex call), far too slowly to walk a
// payload near the 1 MiB limit byte by byte; TextDecoder, JSON.parse,
// JSON.stringify and whole-string regexes are native and fast. So reading
// tries those first and takes their result only where SPEC.md accepts it;
// whatever they cannot vouch for is read again by the Reader below, which
// implements plugins/cache-update/SPEC.md rule by rule (as the Rust, Python
// and C helpers do) and gives the reason, byte offset for byte offset.

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const lenientUtf8 = new TextDecoder('utf-8', { ignoreBOM: true });
const encoder = new TextEncoder();

// Byte offset of the first ill-formed UTF-8 sequence in `bytes`, known to
// have one. The lenient decoder writes U+FFFD for each, starting where it
// starts (RFC 3629's rules are the WHATWG decoder's); a U+FFFD that was in
// the payload is skipped.
function utf8Error(bytes) {
  const text = lenientUtf8.decode(bytes);
  for (let i = text.indexOf('\ufffd'); i >= 0; i = text.indexOf('\ufffd', i + 1)) {
    const at = encoder.encode(text.slice(0, i)).length;
    if (!(bytes[at] === 0xef && bytes[at + 1] === 0xbf && bytes[at + 2] === 0xbd)) return at;
  }
  return bytes.length;
}

function notJson(what, at) {
  return new JsonError(`not JSON: ${what} at byte ${at}`);
}

const ESCAPES = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };
const LITERALS = { t: ['true', true], f: ['false', false], n: ['null', null] };
// Sticky: matches at lastIndex.
const HEX4 = /[0-9a-fA-F]{4}/y;
// Array elements that are numbers exact at a glance (the mantissa at most 15
// characters, so at most 15 significant digits; the exponent at most 290
// either way: so between 1e-304 and 1e306, where exactByDigits holds), each
// with its comma and whitespace; what follows the last comma is read as usual.
const SIMPLE_NUMBER = '(?=[-0-9.]{1,15}(?![-0-9.]))-?(?:0|[1-9][0-9]*)(?:\\.[0-9]+)?(?:[eE][+-]?(?:[0-9]{1,2}|[01][0-9]{2}|2[0-8][0-9]|290))?';
const SIMPLE_NUMBERS = new RegExp(`(?:${SIMPLE_NUMBER}[ \\t\\n\\r]*,[ \\t\\n\\r]*)+`, 'y');
// A number in a payload without strings that may not be exact at a glance.
const DOUBTFUL_NUMBER = /[-0-9.]{16,}|[eE][+-]?(?:[0-9]{4,}|29[1-9]|2[0-9]{3}|[3-9][0-9]{2})/;
// In a string: a control character, a bad escape, a surrogate escape.
const DOUBTFUL = /[\u0000-\u001f]|\\(?:[^"\\/bfnrtu]|u(?![0-9a-fA-F]{4})|u[dD][89a-fA-F])/g;


// The reader works on the decoded text (the payload is UTF-8, checked
// first); a reason's byte offset is the UTF-8 length of the text before it.
// Objects have no prototype, so a "__proto__" key is an ordinary member.
class Reader {
  constructor(text, bytes) {
    this.s = text;
    this.bytes = bytes;
    this.at = 0;
  }

  byte(i = this.at) {
    return encoder.encode(this.s.slice(0, i)).length;
  }

  fail(what, i = this.at) {
    return notJson(what, this.byte(i));
  }

  peek() {
    return this.at < this.s.length ? this.s.charCodeAt(this.at) : -1;
  }

  // Character codes, not regexes or slices: those cost some twenty times more.
  ws() {
    const s = this.s;
    let i = this.at;
    for (;;) {
      const c = s.charCodeAt(i);
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++;
      else break;
    }
    this.at = i;
  }

  end() {
    return notJson('unexpected end', this.bytes.length);
  }

  value(open) {
    const c = this.peek();
    if (c === -1) throw this.end();
    if ((c === 0x7b || c === 0x5b) && open === MAX_DEPTH) {
      throw new JsonError(`nested deeper than ${MAX_DEPTH} levels at byte ${this.byte()}`);
    }
    if (c === 0x7b) return this.object(open + 1);
    if (c === 0x5b) return this.array(open + 1);
    if (c === 0x22) return this.string();
    if (c === 0x2d || (c >= 0x30 && c <= 0x39)) return this.number();
    const literal = LITERALS[String.fromCharCode(c)];
    if (literal && this.s.startsWith(literal[0], this.at)) {
      this.at += literal[0].length;
      return literal[1];
    }
    throw this.fail('expected a value');
  }

  object(open) {
    const members = Object.create(null);
    this.at++;
    this.ws();
    if (this.peek() === 0x7d) {
      this.at++;
      return members;
    }
    for (;;) {
      const keyAt = this.at;
      const c = this.peek();
      if (c === -1) throw this.end();
      if (c !== 0x22) throw this.fail('expected a string key');
      const key = this.string();
      if (key in members) throw new JsonError(`duplicate key ${shownKey(key)} at byte ${this.byte(keyAt)}`);
      this.ws();
      const colon = this.peek();
      if (colon === -1) throw this.end();
      if (colon !== 0x3a) throw this.fail("expected ':'");
      this.at++;
      this.ws();
      members[key] = this.value(open);
      this.ws();
      const next = this.peek();
      if (next === -1) throw this.end();
      if (next === 0x2c) {
        this.at++;
        this.ws();
      } else if (next === 0x7d) {
        this.at++;
        return members;
      } else {
        throw this.fail("expected ',' or '}'");
      }
    }
  }

  array(open) {
    const items = [];
    this.at++;
    this.ws();
    if (this.peek() === 0x5d) {
      this.at++;
      return items;
    }
    for (;;) {
      const c = this.peek();
      if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
        // Numbers exact at a glance, each followed by a comma, in one go.
        SIMPLE_NUMBERS.lastIndex = this.at;
        if (SIMPLE_NUMBERS.test(this.s)) {
          const run = this.s.slice(this.at, SIMPLE_NUMBERS.lastIndex).split(',');
          // The run ends with a comma, so its last part is empty.
          for (let i = 0; i < run.length - 1; i++) items.push(Number(run[i]));
          this.at = SIMPLE_NUMBERS.lastIndex;
        }
      }
      items.push(this.value(open));
      this.ws();
      const next = this.peek();
      if (next === -1) throw this.end();
      if (next === 0x2c) {
        this.at++;
        this.ws();
      } else if (next === 0x5d) {
        this.at++;
        return items;
      } else {
        throw this.fail("expected ',' or ']'");
      }
    }
  }

  string() {
    const s = this.s, start = this.at + 1;
    // A short plain string, the common case, char by char.
    const limit = Math.min(s.length, start + 64);
    let i = start;
    for (; i < limit; i++) {
      const c = s.charCodeAt(i);
      if (c === 0x22) {
        this.at = i + 1;
        return s.slice(start, i);
      }
      if (c === 0x5c || c < 0x20) break;
    }
    // A long or escaped one: to its closing quote (the first not escaped),
    // or to the end of the input.
    let end = i;
    for (;;) {
      end = s.indexOf('"', end);
      if (end < 0) break;
      let k = end;
      while (s.charCodeAt(k - 1) === 0x5c) k--;
      if ((end - k) % 2 === 0) break;
      end++;
    }
    return this.chunks(start, end < 0 ? s.length : end, end >= 0);
  }

  // The string from `start`, its text ending at `end`: decoded natively in
  // chunks between the places where a rule may be broken (a control
  // character, an escape that is not JSON's, a surrogate escape), each of
  // which is read by `escape`, so the first broken rule is the one reported.
  chunks(start, end, terminated) {
    const s = this.s;
    let out = '', chunk = start, from = start;
    for (;;) {
      DOUBTFUL.lastIndex = from;
      const m = DOUBTFUL.exec(s);
      const at = m && m.index < end ? m.index : -1;
      if (at < 0) {
        if (!terminated) throw this.end();
        out += JSON.parse(`"${s.slice(chunk, end)}"`);
        this.at = end + 1;
        return out;
      }
      // A backslash that is itself escaped starts nothing.
      let k = at;
      while (k > chunk && s.charCodeAt(k - 1) === 0x5c) k--;
      if ((at - k) % 2 === 1) {
        from = at + 1;
        continue;
      }
      out += JSON.parse(`"${s.slice(chunk, at)}"`);
      this.at = at;
      if (s.charCodeAt(at) !== 0x5c) throw this.fail('control character in string');
      out += this.escape();
      chunk = from = this.at;
    }
  }

  escape() {
    const at = this.at;
    this.at++;
    const c = this.peek();
    if (c === -1) throw this.end();
    const simple = ESCAPES[String.fromCharCode(c)];
    if (simple !== undefined) {
      this.at++;
      return simple;
    }
    if (c !== 0x75) throw this.fail('invalid escape', at);
    this.at++;
    const unit = this.hex4(at);
    if (unit >= 0xdc00 && unit <= 0xdfff) throw this.fail('lone surrogate', at);
    if (unit < 0xd800 || unit > 0xdbff) return String.fromCharCode(unit);
    for (const want of [0x5c, 0x75]) {
      const next = this.peek();
      if (next === -1) throw this.end();
      if (next !== want) throw this.fail('lone surrogate', at);
      this.at++;
    }
    const low = this.hex4(this.at - 2);
    if (low < 0xdc00 || low > 0xdfff) throw this.fail('lone surrogate', at);
    return String.fromCharCode(unit, low);
  }

  hex4(escape) {
    HEX4.lastIndex = this.at;
    if (HEX4.test(this.s)) {
      const unit = parseInt(this.s.slice(this.at, this.at + 4), 16);
      this.at += 4;
      return unit;
    }
    // Say which came first: the end of the input, or a byte no hex digit.
    for (let i = 0; i < 4; i++, this.at++) {
      const c = this.peek();
      if (c === -1) throw this.end();
      if (!/[0-9a-fA-F]/.test(String.fromCharCode(c))) throw this.fail('invalid escape', escape);
    }
    throw this.fail('invalid escape', escape);
  }

  number() {
    const s = this.s, start = this.at;
    let i = start;
    for (;;) {
      const c = s.charCodeAt(i);
      if ((c >= 0x30 && c <= 0x39) || c === 0x2b || c === 0x2d || c === 0x2e || c === 0x65 || c === 0x45) i++;
      else break;
    }
    this.at = i;
    const n = scanNumber(s, start, i);
    if (n === null) throw this.fail('invalid number', start);
    if (n.exact) return n.value;
    const token = s.slice(start, i);
    // Number() is correctly rounded, to the nearest double, ties to even.
    const double = Number(token);
    if (!Number.isFinite(double)) {
      throw new JsonError(`number at byte ${this.byte(start)} is beyond the range of a double`);
    }
    const canonical = String(double);
    if (!sameDecimal(decimal(token), decimal(canonical))) {
      throw new JsonError(
        `number at byte ${this.byte(start)} cannot be stored exactly (the nearest double is ${canonical})`,
      );
    }
    return double;
  }
}

// 10^0 to 10^22, each exactly a double.
const POW10 = Array.from({ length: 23 }, (_, k) => Number(`1e${k}`));

// The number text s[start, end) checked against JSON's grammar by character
// codes: null if it does not match; else whether it is exact by digits (at
// most 15 significant digits in the normal range of doubles, or zero: there
// 15-digit steps are wider than a double's spacing, so no other 15-digit
// decimal, shorter or not, reads back as its nearest double, whose canonical
// digits are its own; the full check gives the same answer), and then its
// value, when a single correctly rounded product or quotient of exact
// doubles gives it (digits below 2^53, a power of ten up to 10^22), which is
// the nearest double, as Number() gives.
function scanNumber(s, start, end) {
  let i = start;
  const negative = s.charCodeAt(i) === 0x2d;
  if (negative) i++;
  // Digits from the first non-zero one: their count, their value without the
  // trailing zeros (exact while under 2^53), and how many zeros trail.
  let significant = 0, mantissa = 0, pendingZeros = 0, fractionDigits = 0;
  const digit = (d) => {
    if (d === 0) {
      if (significant > 0) pendingZeros++;
    } else {
      significant += significant === 0 ? 1 : pendingZeros + 1;
      mantissa = mantissa * POW10[Math.min(pendingZeros + 1, 22)] + d;
      pendingZeros = 0;
    }
  };
  let c = s.charCodeAt(i);
  if (c === 0x30) {
    i++;
  } else if (c >= 0x31 && c <= 0x39) {
    for (; i < end && (c = s.charCodeAt(i)) >= 0x30 && c <= 0x39; i++) digit(c - 0x30);
  } else {
    return null;
  }
  if (i < end && s.charCodeAt(i) === 0x2e) {
    const from = ++i;
    for (; i < end && (c = s.charCodeAt(i)) >= 0x30 && c <= 0x39; i++) digit(c - 0x30);
    fractionDigits = i - from;
    if (fractionDigits === 0) return null;
  }
  let exp = 0;
  if (i < end && (s.charCodeAt(i) === 0x65 || s.charCodeAt(i) === 0x45)) {
    i++;
    const sign = s.charCodeAt(i) === 0x2d ? -1 : 1;
    if (s.charCodeAt(i) === 0x2d || s.charCodeAt(i) === 0x2b) i++;
    const from = i;
    for (; i < end && (c = s.charCodeAt(i)) >= 0x30 && c <= 0x39; i++) {
      exp = Math.min(exp * 10 + (c - 0x30), EXPONENT_CLAMP);
    }
    if (i === from) return null;
    exp *= sign;
  }
  if (i !== end) return null;
  if (significant === 0) return { exact: true, value: negative ? -0 : 0 };
  // The value is mantissa × 10^scale, or 0.digits × 10^point.
  const scale = exp - fractionDigits + pendingZeros;
  const point = significant + scale;
  if (significant > 15 || point < -306 || point > 308) return { exact: false };
  // Number() of the text carries its sign; the product and quotient do not.
  if (scale > 22 || scale < -22) return { exact: true, value: Number(s.slice(start, end)) };
  const value = scale >= 0 ? mantissa * POW10[scale] : mantissa / POW10[-scale];
  return { exact: true, value: negative ? -value : value };
}

// Exponents beyond this are clamped: payloads are far shorter than it, so a
// clamped exponent still tells a number apart from every canonical text.
const EXPONENT_CLAMP = 1e9;

// The value of a JSON number text (or of String(number)) as ±0.digits ×
// 10^point, digits without leading or trailing zeros (none for zero, whose
// sign is dropped). Two numbers are equal exactly when these are. Written
// with character codes, not regexes, which are slow here.
function decimal(text) {
  const n = text.length;
  let i = 0;
  const negative = text.charCodeAt(0) === 0x2d;
  if (negative) i++;
  let all = '', fractionLength = 0, inFraction = false;
  for (; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x2e) {
      inFraction = true;
    } else if (c >= 0x30 && c <= 0x39) {
      if (all !== '' || c !== 0x30) all += text[i];
      if (inFraction) fractionLength++;
    } else {
      break;
    }
  }
  let exp = 0, expNegative = false;
  if (i < n) {
    i++; // the e
    if (text.charCodeAt(i) === 0x2d) expNegative = true;
    if (text.charCodeAt(i) === 0x2d || text.charCodeAt(i) === 0x2b) i++;
    for (; i < n; i++) exp = Math.min(exp * 10 + (text.charCodeAt(i) - 0x30), EXPONENT_CLAMP);
  }
  if (expNegative) exp = -exp;
  let end = all.length;
  while (end > 0 && all.charCodeAt(end - 1) === 0x30) end--;
  if (end === 0) return { negative: false, digits: '', point: 0 };
  return { negative, digits: all.slice(0, end), point: all.length + exp - fractionLength };
}

function sameDecimal(a, b) {
  return a.negative === b.negative && a.digits === b.digits && a.point === b.point;
}

// True when a JSON number text has at most 15 significant digits and lies in
// the normal range of doubles (1e-307 <= |x| < 1e308), or is zero: there
// 15-digit steps are wider than a double's spacing, so no other 15-digit
// decimal, shorter or not, reads back as its nearest double, whose canonical
// digits are therefore its own. The full check gives the same answer; this
// one costs a glance at each character.
function exactByDigits(token) {
  const n = token.length;
  let i = token.charCodeAt(0) === 0x2d ? 1 : 0;
  let position = 0, integerDigits = -1, first = -1, last = -1;
  for (; i < n; i++) {
    const c = token.charCodeAt(i);
    if (c === 0x2e) {
      integerDigits = position;
    } else if (c >= 0x30 && c <= 0x39) {
      if (c !== 0x30) {
        if (first < 0) first = position;
        last = position;
      }
      position++;
    } else {
      break;
    }
  }
  if (first < 0) return true;
  if (integerDigits < 0) integerDigits = position;
  let exp = 0;
  if (i < n) {
    const sign = token.charCodeAt(i + 1) === 0x2d ? -1 : 1;
    const from = token.charCodeAt(i + 1) === 0x2d || token.charCodeAt(i + 1) === 0x2b ? i + 2 : i + 1;
    if (n - from > 9) return false;
    for (let j = from; j < n; j++) exp = exp * 10 + (token.charCodeAt(j) - 0x30);
    exp *= sign;
  }
  const point = integerDigits - first + exp;
  return last - first + 1 <= 15 && point >= -306 && point <= 308;
}

function exactNumber(token) {
  if (exactByDigits(token)) return true;
  const double = Number(token);
  return Number.isFinite(double) && sameDecimal(decimal(token), decimal(String(double)));
}

const UNSURE = {};
const SURROGATE_ESCAPE = /\\u[dD][89a-fA-F]/;
const STRING_LITERALS = /"(?:[^"\\]|\\[^])*"/g;
const OPENERS = /[[{]/g;
const BRACKETS = /[^[\]{}]+/g;
const COLONS = /[^:]+/g;
const NUMBERS = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/g;

// The most arrays and objects open at once in `skeleton` (strings removed).
function deepest(skeleton) {
  const brackets = skeleton.replace(BRACKETS, '');
  let depth = 0, most = 0;
  for (let i = 0; i < brackets.length; i++) {
    const c = brackets.charCodeAt(i);
    if (c === 0x5b || c === 0x7b) {
      if (++depth > most) most = depth;
    } else {
      depth--;
    }
  }
  return most;
}

// Members in a parsed value: one per key kept, so fewer than the payload's
// colons when a key was repeated.
function countMembers(value) {
  let count = 0;
  const stack = [value];
  while (stack.length) {
    const v = stack.pop();
    if (v === null || typeof v !== 'object') continue;
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) if (v[i] !== null && typeof v[i] === 'object') stack.push(v[i]);
    } else {
      const keys = Object.keys(v);
      count += keys.length;
      for (let i = 0; i < keys.length; i++) {
        const m = v[keys[i]];
        if (m !== null && typeof m === 'object') stack.push(m);
      }
    }
  }
  return count;
}

// JSON.parse's grammar is RFC 8259's, byte order mark and all; what it does
// not check is checked here, on the payload without its strings (which is
// exact, JSON.parse having accepted it, and before JSON.parse exact up to the
// first error, as far as JSON.parse would go).
function parseQuickly(text) {
  if (SURROGATE_ESCAPE.test(text)) return UNSURE;
  const skeleton = text.replace(STRING_LITERALS, '""');
  // Deep nesting is refused before JSON.parse recurses into it.
  const openers = skeleton.match(OPENERS);
  if (openers && openers.length > MAX_DEPTH && deepest(skeleton) > MAX_DEPTH) return UNSURE;
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return UNSURE;
  }
  if (DOUBTFUL_NUMBER.test(skeleton)) {
    const numbers = skeleton.match(NUMBERS) || [];
    for (let i = 0; i < numbers.length; i++) if (!exactNumber(numbers[i])) return UNSURE;
  }
  if (skeleton.replace(COLONS, '').length !== countMembers(value)) return UNSURE;
  return value;
}

/** `bytes` (a Uint8Array, or anything one can be made of) read by SPEC.md
 * section 1, or a thrown JsonError. */
export function parseJson(payload) {
  const bytes = payload instanceof Uint8Array ? payload : new Uint8Array(payload);
  let text;
  try {
    text = strictUtf8.decode(bytes);
  } catch (e) {
    throw notJson('invalid UTF-8', utf8Error(bytes));
  }
  const value = parseQuickly(text);
  if (value !== UNSURE) return value;
  const reader = new Reader(text, bytes);
  reader.ws();
  const read = reader.value(0);
  reader.ws();
  if (reader.at < text.length) throw reader.fail('trailing characters');
  return read;
}

/** The payload read by `parseJson`, or a reject naming `what`. */
export function payloadJson(msg, what = 'payload') {
  try {
    return parseJson(msg.payload);
  } catch (e) {
    if (e instanceof JsonError) throw reject(`malformed ${what}: ${e.message}`);
    throw e;
  }
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?:^|[^\ud800-\udbff])[\udc00-\udfff]/;

function wellFormed(s) {
  return typeof s.isWellFormed === 'function' ? s.isWellFormed() : !LONE_SURROGATE.test(s);
}

// For a well-formed string JSON.stringify writes exactly SPEC.md 2.2.
function string(s) {
  if (!wellFormed(s)) throw new JsonError('string with a lone surrogate');
  return JSON.stringify(s);
}

// How a key is shown in a reason: its canonical string, cut after 64
// characters (code points) with `...` after the closing quote.
function shownKey(key) {
  const chars = Array.from(key);
  return chars.length > 64 ? string(chars.slice(0, 64).join('')) + '...' : string(key);
}

function bigintNumber(value) {
  // Written only if its text denotes exactly it, the rule parseJson applies.
  const double = Number(value);
  if (!Number.isFinite(double)) throw new JsonError(`${value} is beyond the range of a double`);
  if (!sameDecimal(decimal(String(value)), decimal(String(double)))) {
    throw new JsonError(`${value} has no exact double text (the nearest is ${String(double)})`);
  }
  return double;
}

function encode(value, out) {
  if (value === null) {
    out.push('null');
  } else if (typeof value === 'boolean') {
    out.push(value ? 'true' : 'false');
  } else if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new JsonError(`${value} is not a finite number`);
    // Number::toString is the canonical number text, -0 written as 0.
    out.push(String(value));
  } else if (typeof value === 'bigint') {
    out.push(String(bigintNumber(value)));
  } else if (typeof value === 'string') {
    out.push(string(value));
  } else if (Array.isArray(value)) {
    out.push('[');
    for (let i = 0; i < value.length; i++) {
      if (i) out.push(',');
      encode(value[i], out);
    }
    out.push(']');
  } else if (typeof value === 'object') {
    // The default sort compares UTF-16 code units, the order RFC 8785 uses.
    out.push('{');
    const keys = Object.keys(value).sort();
    for (let i = 0; i < keys.length; i++) {
      if (i) out.push(',');
      out.push(string(keys[i]), ':');
      encode(value[keys[i]], out);
    }
    out.push('}');
  } else {
    throw new JsonError(`${typeof value} is not JSON`);
  }
}

const ARRAY_INDEX = /^(?:0|[1-9][0-9]{0,9})$/;
const MANUALLY = {};

// JSON.stringify writes numbers and strings canonically; objects it writes in
// property order, so it is given a copy of the value whose objects have their
// keys inserted in canonical order, and which is checked on the way. That is
// their order unless a key is an array index ("0", "10"), which JavaScript
// lists first, by number: such an object sends the whole value to `encode`.
function canonicalCopy(value) {
  switch (typeof value) {
    case 'number':
      if (!Number.isFinite(value)) throw new JsonError(`${value} is not a finite number`);
      return value;
    case 'string':
      if (!wellFormed(value)) throw new JsonError('string with a lone surrogate');
      return value;
    case 'boolean':
      return value;
    case 'bigint':
      return bigintNumber(value);
    case 'object': {
      if (value === null) return value;
      if (Array.isArray(value)) {
        let out = value;
        for (let i = 0; i < value.length; i++) {
          const item = value[i];
          const copy = typeof item === 'number' && Number.isFinite(item) ? item : canonicalCopy(item);
          if (copy !== item) {
            if (out === value) out = value.slice();
            out[i] = copy;
          }
        }
        return out;
      }
      const keys = Object.keys(value).sort();
      const sorted = Object.create(null);
      for (let i = 0; i < keys.length; i++) {
        const k = keys[i];
        if (ARRAY_INDEX.test(k) && Number(k) < 4294967295) throw MANUALLY;
        if (!wellFormed(k)) throw new JsonError('string with a lone surrogate');
        sorted[k] = canonicalCopy(value[k]);
      }
      return sorted;
    }
    default:
      throw new JsonError(`${typeof value} is not JSON`);
  }
}

/** `value` in the canonical encoding of SPEC.md section 2 (RFC 8785), or a
 * thrown JsonError for what has none (NaN, infinities, a lone surrogate). */
export function toCanonicalJson(value) {
  try {
    return encoder.encode(JSON.stringify(canonicalCopy(value)));
  } catch (e) {
    if (e !== MANUALLY) throw e;
  }
  const out = [];
  encode(value, out);
  return encoder.encode(out.join(''));
}

/** `value` in the canonical encoding, the form the cache-update handlers store
 * in every language, or a reject saying why it has none. */
export function canonicalJson(value) {
  try {
    return toCanonicalJson(value);
  } catch (e) {
    if (e instanceof JsonError) throw reject(`cannot encode JSON: ${e.message}`);
    throw e;
  }
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
