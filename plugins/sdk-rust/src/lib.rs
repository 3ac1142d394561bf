//! A small, optional SDK for Switchyard handlers written in Rust.
//!
//! It wraps the bindings of `wit/handler.wit` so the common case is short:
//! [`Message::json`] parses the payload or rejects with the reason, [`reject`]
//! and [`retry`] build the two failures, [`canonical`] reads strict JSON and
//! writes the canonical form other languages write too, and every capability
//! error converts
//! into the usual failure with `?` (unavailable: retry in a second; denied,
//! invalid, too large: reject, naming the reason).
//!
//! ```ignore
//! use switchyard_sdk::{cache, Handler, HandlerError, Message};
//!
//! struct Touch;
//!
//! impl Handler for Touch {
//!     fn handle(msg: Message) -> Result<(), HandlerError> {
//!         let event: serde_json::Value = msg.json()?;
//!         cache::set(&format!("seen:{}", event["id"]), &msg.payload, None)?;
//!         Ok(())
//!     }
//! }
//!
//! switchyard_sdk::export!(Touch);
//! ```
//!
//! Build the handler crate (`crate-type = ["cdylib"]`) with
//! `cargo build --target wasm32-wasip2 --release`.

use std::time::Duration;

/// The generated bindings of the `handler` world, for what the helpers do not cover.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "handler",
        pub_export_macro: true,
        default_bindings_module: "switchyard_sdk::bindings",
    });
}

pub use bindings::Guest as Handler;
/// `switchyard_sdk::export!(MyHandler);` makes `MyHandler` the component's `handle` export.
pub use bindings::export;
pub use bindings::switchyard::handler::types::{CapabilityError, HandlerError, Message, RetryRequest};
pub use bindings::switchyard::handler::{cache, config, db, publish, search};

/// Outbound HTTP, and what a response means for the message.
pub mod http {
    pub use crate::bindings::switchyard::handler::http::{Request, Response, send};
    use crate::{HandlerError, reject, retry};

    /// `response` if its status is a success (2xx). A 429 or 5xx asks for a
    /// retry, after the `Retry-After` seconds if the server gave them (else
    /// `fallback`); any other status rejects, naming it and the start of the body.
    pub fn success(response: Response, fallback: std::time::Duration) -> Result<Response, HandlerError> {
        let status = response.status;
        if (200..300).contains(&status) {
            return Ok(response);
        }
        let body: String = String::from_utf8_lossy(&response.body).chars().take(200).collect();
        if status == 429 || status >= 500 {
            let after = response
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("retry-after"))
                .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                .map_or(fallback, std::time::Duration::from_secs);
            return Err(retry(after, format!("HTTP {status}: {body}")));
        }
        Err(reject(format!("HTTP {status}: {body}")))
    }
}

/// A permanent failure: the message is dead-lettered now, with `reason`.
pub fn reject(reason: impl Into<String>) -> HandlerError {
    HandlerError::Reject(reason.into())
}

/// A transient failure: the message is delivered again after `delay` (or the
/// route's backoff, if longer).
pub fn retry(delay: Duration, reason: impl Into<String>) -> HandlerError {
    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    HandlerError::Retry(RetryRequest { delay_ms, reason: reason.into() })
}

/// How long a handler asks to wait when a backend is unavailable.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

impl From<CapabilityError> for HandlerError {
    /// An unreachable backend is worth a retry; anything else would fail again.
    fn from(e: CapabilityError) -> Self {
        match e {
            CapabilityError::Unavailable(why) => retry(UNAVAILABLE_RETRY, why),
            CapabilityError::Denied(why) => reject(format!("denied: {why}")),
            CapabilityError::Invalid(why) => reject(format!("invalid: {why}")),
            CapabilityError::TooLarge(why) => reject(format!("too large: {why}")),
        }
    }
}

impl Message {
    /// The payload parsed as JSON into `T`, or a reject saying why
    /// (`malformed payload: ...`).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandlerError> {
        self.json_of("payload")
    }

    /// Like [`Message::json`], naming what the payload should be in the
    /// reason: `msg.json_of::<Order>("order")` rejects with `malformed order: ...`.
    pub fn json_of<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.payload).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                reject(format!("malformed {what}: not JSON: {e}"))
            } else {
                reject(format!("malformed {what}: {e}"))
            }
        })
    }

    /// The payload read by the strict rules of [`canonical::parse`], or a
    /// reject naming `what`: `malformed <what>: not JSON: ...` for bytes that
    /// are not JSON, `malformed <what>: ...` for a number no double holds
    /// exactly, a duplicate key or nesting too deep.
    pub fn canonical_json(&self, what: &str) -> Result<serde_json::Value, HandlerError> {
        canonical::parse(&self.payload).map_err(|e| reject(format!("malformed {what}: {e}")))
    }

    /// The payload as UTF-8 text, or a reject.
    pub fn text(&self) -> Result<&str, HandlerError> {
        std::str::from_utf8(&self.payload).map_err(|e| reject(format!("malformed payload: not UTF-8: {e}")))
    }

    /// The first header called `name`, if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// `value` as compact JSON, as serde_json writes it (for the canonical form
/// the cache-update handlers store, use [`to_canonical_json`]).
pub fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, HandlerError> {
    serde_json::to_vec(value).map_err(|e| reject(format!("cannot encode JSON: {e}")))
}

/// `value` in the canonical encoding of [`canonical::to_vec`] (RFC 8785:
/// compact, keys in UTF-16 order, ECMAScript number text), which the Python,
/// JavaScript and C helpers write byte for byte the same; a reject
/// (`cannot encode JSON: ...`) for an integer no double holds exactly.
pub fn to_canonical_json(value: &serde_json::Value) -> Result<Vec<u8>, HandlerError> {
    canonical::to_vec(value).map_err(|e| reject(format!("cannot encode JSON: {e}")))
}

/// Writing to the host's log, tagged with the tenant, handler and message.
pub mod log {
    use crate::bindings::switchyard::handler::log::{Level, log};

    /// Log at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    /// Log at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    /// Log at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    /// Log at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

// Inline rather than in its own file: `switchyard new rust` copies this one
// file into a new project as its SDK.
pub mod canonical {
    //! Strict JSON in, canonical JSON out: the rules of
    //! `plugins/cache-update/SPEC.md`, which the Python, JavaScript and C helpers
    //! implement too, so every language accepts the same payloads, refuses the
    //! rest with the same reason and writes the same bytes.
    //!
    //! [`parse`] reads UTF-8 JSON (RFC 8259) refusing what would not survive a
    //! round trip: numbers no double holds exactly, lone surrogates, duplicate
    //! keys, nesting deeper than [`MAX_DEPTH`]. [`to_vec`] writes the RFC 8785
    //! canonical form: compact, keys in UTF-16 order, ECMAScript number text.
    //!
    //! serde_json is not used to read: its numbers stay integers up to 2^64 where
    //! the other languages' are doubles, it accepts `1e-400` as 0 and nests to 128.

    use std::fmt;

    use serde_json::{Map, Number, Value};

    /// Arrays and objects open at once, the top-level value being the first.
    pub const MAX_DEPTH: usize = 64;

    /// Why a payload was refused or a value cannot be encoded; the text is the
    /// reason after `malformed <what>: ` (or `cannot encode JSON: `).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Error(String);

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Error {}

    fn not_json(what: &str, at: usize) -> Error {
        Error(format!("not JSON: {what} at byte {at}"))
    }

    /// `bytes` read by SPEC.md section 1.
    pub fn parse(bytes: &[u8]) -> Result<Value, Error> {
        let text = std::str::from_utf8(bytes).map_err(|e| not_json("invalid UTF-8", e.valid_up_to()))?;
        let mut reader = Reader { text, b: bytes, at: 0 };
        reader.ws();
        let value = reader.value(0)?;
        reader.ws();
        if reader.at < bytes.len() {
            return Err(not_json("trailing characters", reader.at));
        }
        Ok(value)
    }

    struct Reader<'a> {
        text: &'a str,
        b: &'a [u8],
        at: usize,
    }

    impl Reader<'_> {
        fn peek(&self) -> Option<u8> {
            self.b.get(self.at).copied()
        }

        fn ws(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                self.at += 1;
            }
        }

        fn end(&self) -> Error {
            not_json("unexpected end", self.b.len())
        }

        /// A value starting at the current byte, inside `open` arrays and objects.
        fn value(&mut self, open: usize) -> Result<Value, Error> {
            match self.peek() {
                None => Err(self.end()),
                Some(b'{' | b'[') if open == MAX_DEPTH => {
                    Err(Error(format!("nested deeper than {MAX_DEPTH} levels at byte {}", self.at)))
                }
                Some(b'{') => self.object(open + 1),
                Some(b'[') => self.array(open + 1),
                Some(b'"') => Ok(Value::String(self.string()?)),
                Some(b'-' | b'0'..=b'9') => self.number(),
                Some(b't') => self.literal("true", Value::Bool(true)),
                Some(b'f') => self.literal("false", Value::Bool(false)),
                Some(b'n') => self.literal("null", Value::Null),
                Some(_) => Err(not_json("expected a value", self.at)),
            }
        }

        fn literal(&mut self, word: &str, value: Value) -> Result<Value, Error> {
            if !self.b[self.at..].starts_with(word.as_bytes()) {
                return Err(not_json("expected a value", self.at));
            }
            self.at += word.len();
            Ok(value)
        }

        fn object(&mut self, open: usize) -> Result<Value, Error> {
            let mut members = Map::new();
            self.at += 1;
            self.ws();
            if self.peek() == Some(b'}') {
                self.at += 1;
                return Ok(Value::Object(members));
            }
            loop {
                let key_at = self.at;
                let key = match self.peek() {
                    None => return Err(self.end()),
                    Some(b'"') => self.string()?,
                    Some(_) => return Err(not_json("expected a string key", self.at)),
                };
                if members.contains_key(&key) {
                    return Err(Error(format!("duplicate key {} at byte {key_at}", shown_key(&key))));
                }
                self.ws();
                match self.peek() {
                    None => return Err(self.end()),
                    Some(b':') => self.at += 1,
                    Some(_) => return Err(not_json("expected ':'", self.at)),
                }
                self.ws();
                let value = self.value(open)?;
                members.insert(key, value);
                self.ws();
                match self.peek() {
                    None => return Err(self.end()),
                    Some(b',') => {
                        self.at += 1;
                        self.ws();
                    }
                    Some(b'}') => {
                        self.at += 1;
                        return Ok(Value::Object(members));
                    }
                    Some(_) => return Err(not_json("expected ',' or '}'", self.at)),
                }
            }
        }

        fn array(&mut self, open: usize) -> Result<Value, Error> {
            let mut items = Vec::new();
            self.at += 1;
            self.ws();
            if self.peek() == Some(b']') {
                self.at += 1;
                return Ok(Value::Array(items));
            }
            loop {
                items.push(self.value(open)?);
                self.ws();
                match self.peek() {
                    None => return Err(self.end()),
                    Some(b',') => {
                        self.at += 1;
                        self.ws();
                    }
                    Some(b']') => {
                        self.at += 1;
                        return Ok(Value::Array(items));
                    }
                    Some(_) => return Err(not_json("expected ',' or ']'", self.at)),
                }
            }
        }

        /// A string starting at its opening quote.
        fn string(&mut self) -> Result<String, Error> {
            let mut out = String::new();
            self.at += 1;
            loop {
                let run = self.at;
                while matches!(self.peek(), Some(c) if c >= 0x20 && c != b'"' && c != b'\\') {
                    self.at += 1;
                }
                // The run stops only at ASCII bytes, so it ends on a character boundary.
                out.push_str(&self.text[run..self.at]);
                match self.peek() {
                    None => return Err(self.end()),
                    Some(b'"') => {
                        self.at += 1;
                        return Ok(out);
                    }
                    Some(b'\\') => out.push(self.escape()?),
                    Some(_) => return Err(not_json("control character in string", self.at)),
                }
            }
        }

        /// The character of the escape whose backslash is the current byte.
        fn escape(&mut self) -> Result<char, Error> {
            let at = self.at;
            self.at += 1;
            let c = match self.peek() {
                None => return Err(self.end()),
                Some(b'"') => '"',
                Some(b'\\') => '\\',
                Some(b'/') => '/',
                Some(b'b') => '\u{8}',
                Some(b'f') => '\u{c}',
                Some(b'n') => '\n',
                Some(b'r') => '\r',
                Some(b't') => '\t',
                Some(b'u') => {
                    self.at += 1;
                    let unit = self.hex4(at)?;
                    let lone = || Error(format!("not JSON: lone surrogate at byte {at}"));
                    let code = match unit {
                        0xDC00..=0xDFFF => return Err(lone()),
                        0xD800..=0xDBFF => {
                            for want in [b'\\', b'u'] {
                                match self.peek() {
                                    None => return Err(self.end()),
                                    Some(c) if c == want => self.at += 1,
                                    Some(_) => return Err(lone()),
                                }
                            }
                            let low = self.hex4(self.at - 2)?;
                            if !(0xDC00..=0xDFFF).contains(&low) {
                                return Err(lone());
                            }
                            0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                        }
                        _ => unit,
                    };
                    // Not a surrogate, and at most U+10FFFF, so always a char.
                    return char::from_u32(code).ok_or_else(lone);
                }
                Some(_) => return Err(not_json("invalid escape", at)),
            };
            self.at += 1;
            Ok(c)
        }

        /// The four hex digits of a `\u` escape whose backslash is at `escape`.
        fn hex4(&mut self, escape: usize) -> Result<u32, Error> {
            let mut unit = 0;
            for _ in 0..4 {
                let digit = match self.peek() {
                    None => return Err(self.end()),
                    Some(c) => char::from(c).to_digit(16).ok_or_else(|| not_json("invalid escape", escape))?,
                };
                unit = unit * 16 + digit;
                self.at += 1;
            }
            Ok(unit)
        }

        fn number(&mut self) -> Result<Value, Error> {
            let start = self.at;
            while matches!(self.peek(), Some(b'0'..=b'9' | b'+' | b'-' | b'.' | b'e' | b'E')) {
                self.at += 1;
            }
            let token = &self.text[start..self.at];
            if !is_json_number(token.as_bytes()) {
                return Err(not_json("invalid number", start));
            }
            // Rust's float parsing is correctly rounded, like JavaScript's.
            let double: f64 = token.parse().map_err(|_| not_json("invalid number", start))?;
            if !double.is_finite() {
                return Err(Error(format!("number at byte {start} is beyond the range of a double")));
            }
            let canonical = Decimal::of_double(double);
            let sent = Decimal::parse(token);
            if sent != canonical {
                return Err(Error(format!(
                    "number at byte {start} cannot be stored exactly (the nearest double is {})",
                    canonical.text()
                )));
            }
            Ok(number_value(double, &sent))
        }
    }

    /// Whole numbers that fit become serde_json integers, so a handler can read
    /// them with `as_i64`, with the value sent (not the double's, which differs
    /// beyond 2^53); the canonical text is the same either way.
    fn number_value(double: f64, sent: &Decimal) -> Value {
        if let Some(whole) = sent.integer().and_then(|text| text.parse::<i64>().ok()) {
            return Value::Number(Number::from(whole));
        }
        Number::from_f64(double).map_or(Value::Null, Value::Number)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, the whole of `t`.
    fn is_json_number(t: &[u8]) -> bool {
        fn digits(t: &[u8], mut i: usize) -> usize {
            while i < t.len() && t[i].is_ascii_digit() {
                i += 1;
            }
            i
        }
        let mut i = usize::from(t.first() == Some(&b'-'));
        match t.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits(t, i),
            _ => return false,
        }
        if t.get(i) == Some(&b'.') {
            let j = digits(t, i + 1);
            if j == i + 1 {
                return false;
            }
            i = j;
        }
        if matches!(t.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(t.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let j = digits(t, i);
            if j == i {
                return false;
            }
            i = j;
        }
        i == t.len()
    }

    /// A decimal number as `±0.digits × 10^point`, digits without leading or
    /// trailing zeros (none for zero, whose sign is dropped). Two numbers are
    /// equal exactly when their `Decimal`s are.
    #[derive(Debug, PartialEq, Eq)]
    struct Decimal {
        negative: bool,
        digits: String,
        point: i64,
    }

    /// Exponents beyond this are clamped: payloads are far shorter than it, so a
    /// clamped exponent still tells a number apart from every canonical text.
    const EXPONENT_CLAMP: i64 = 1_000_000_000;

    impl Decimal {
        /// The value of a JSON number text (or of Rust's `{:e}` output).
        fn parse(text: &str) -> Decimal {
            let (negative, rest) = match text.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, text),
            };
            let (mantissa, exponent) = rest.split_once(['e', 'E']).unwrap_or((rest, "0"));
            let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
            let (exp_negative, exp_digits) = match exponent.as_bytes().first() {
                Some(b'-') => (true, &exponent[1..]),
                Some(b'+') => (false, &exponent[1..]),
                _ => (false, exponent),
            };
            let mut exp: i64 = 0;
            for d in exp_digits.bytes() {
                exp = (exp * 10 + i64::from(d - b'0')).min(EXPONENT_CLAMP);
            }
            if exp_negative {
                exp = -exp;
            }
            let all: String = int.chars().chain(frac.chars()).skip_while(|&c| c == '0').collect();
            let digits = all.trim_end_matches('0');
            if digits.is_empty() {
                return Decimal { negative: false, digits: String::new(), point: 0 };
            }
            let len = |s: &str| i64::try_from(s.len()).unwrap_or(i64::MAX);
            Decimal { negative, digits: digits.to_string(), point: len(&all) + exp - len(frac) }
        }

        /// The shortest digits that read back as `double` (finite), and of those
        /// the nearest, the even one on a tie, as ECMAScript requires. Rust's
        /// `{:e}` gives the shortest length but may take the odd one of a tie
        /// (1424953923781206.25 gives ...063e15, not ...062e15), so the digits
        /// are those of exact formatting at that length, which rounds half to
        /// even, when they read back; else `{:e}`'s are the only ones that do.
        #[allow(clippy::float_cmp)] // reading back the very same double is the point
        fn of_double(double: f64) -> Decimal {
            let magnitude = double.abs();
            let shortest = format!("{magnitude:e}");
            let mut decimal = Decimal::parse(&shortest);
            if !decimal.digits.is_empty() {
                let nearest = format!("{magnitude:.*e}", decimal.digits.len() - 1);
                if nearest.parse::<f64>() == Ok(magnitude) {
                    decimal = Decimal::parse(&nearest);
                }
            }
            decimal.negative = double < 0.0 && !decimal.digits.is_empty();
            decimal
        }

        /// The number as integer digits, if it is whole and under 20 digits.
        fn integer(&self) -> Option<String> {
            if self.digits.is_empty() {
                return Some("0".into());
            }
            let len = i64::try_from(self.digits.len()).ok()?;
            if self.point < len || self.point > 19 {
                return None;
            }
            let zeros = "0".repeat(usize::try_from(self.point - len).ok()?);
            Some(format!("{}{}{zeros}", if self.negative { "-" } else { "" }, self.digits))
        }

        /// ECMAScript's Number::toString layout of these digits (SPEC.md 2.3).
        fn text(&self) -> String {
            let (s, n) = (&self.digits, self.point);
            if s.is_empty() {
                return "0".into();
            }
            let k = i64::try_from(s.len()).unwrap_or(i64::MAX);
            let zeros = |count: i64| "0".repeat(usize::try_from(count).unwrap_or(0));
            let body = if k <= n && n <= 21 {
                format!("{s}{}", zeros(n - k))
            } else if 0 < n && n <= 21 {
                let (whole, frac) = s.split_at(usize::try_from(n).unwrap_or(0));
                format!("{whole}.{frac}")
            } else if -6 < n && n <= 0 {
                format!("0.{}{s}", zeros(-n))
            } else {
                let e = n - 1;
                let sign = if e < 0 { '-' } else { '+' };
                let (first, rest) = s.split_at(1);
                let rest = if rest.is_empty() { String::new() } else { format!(".{rest}") };
                format!("{first}{rest}e{sign}{}", e.abs())
            };
            if self.negative { format!("-{body}") } else { body }
        }
    }

    /// How a key is shown in a reason: its canonical string, cut after 64
    /// characters with `...` after the closing quote.
    fn shown_key(key: &str) -> String {
        let mut out = Vec::new();
        match key.char_indices().nth(64) {
            Some((cut, _)) => {
                write_string(&mut out, &key[..cut]);
                out.extend_from_slice(b"...");
            }
            None => write_string(&mut out, key),
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// `value` in the canonical encoding of SPEC.md section 2 (RFC 8785).
    pub fn to_vec(value: &Value) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        write(&mut out, value)?;
        Ok(out)
    }

    fn write(out: &mut Vec<u8>, value: &Value) -> Result<(), Error> {
        match value {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Number(n) => out.extend_from_slice(number_text(n)?.as_bytes()),
            Value::String(s) => write_string(out, s),
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(out, item)?;
                }
                out.push(b']');
            }
            Value::Object(members) => {
                let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
                sorted.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
                out.push(b'{');
                for (i, (key, item)) in sorted.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_string(out, key);
                    out.push(b':');
                    write(out, item)?;
                }
                out.push(b'}');
            }
        }
        Ok(())
    }

    /// The canonical text of a number. A double is written as itself (its text
    /// reads back as the same double); an integer only if its text denotes
    /// exactly that integer, the rule [`parse`] applies to what it reads.
    #[allow(clippy::cast_precision_loss)] // the nearest double is what is wanted; the text is checked
    fn number_text(n: &Number) -> Result<String, Error> {
        let (double, integer) = if let Some(i) = n.as_i64() {
            (i as f64, Some(i.to_string()))
        } else if let Some(u) = n.as_u64() {
            (u as f64, Some(u.to_string()))
        } else {
            // serde_json holds no NaN or infinity, but say so if it ever does.
            match n.as_f64() {
                Some(d) if d.is_finite() => (d, None),
                _ => return Err(Error(format!("{n} is not a finite number"))),
            }
        };
        let canonical = Decimal::of_double(double);
        if let Some(integer) = integer
            && Decimal::parse(&integer) != canonical
        {
            return Err(Error(format!("{integer} has no exact double text (the nearest is {})", canonical.text())));
        }
        Ok(canonical.text())
    }

    fn write_string(out: &mut Vec<u8>, s: &str) {
        out.push(b'"');
        let mut run = 0;
        for (i, c) in s.bytes().enumerate() {
            let escape: &[u8] = match c {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                0x08 => b"\\b",
                b'\t' => b"\\t",
                b'\n' => b"\\n",
                0x0C => b"\\f",
                b'\r' => b"\\r",
                0..0x20 => b"",
                _ => continue,
            };
            out.extend_from_slice(&s.as_bytes()[run..i]);
            if escape.is_empty() {
                out.extend_from_slice(format!("\\u{c:04x}").as_bytes());
            } else {
                out.extend_from_slice(escape);
            }
            run = i + 1;
        }
        out.extend_from_slice(&s.as_bytes()[run..]);
        out.push(b'"');
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn canonical(input: &str) -> Result<String, String> {
            parse(input.as_bytes()).map(|v| String::from_utf8(to_vec(&v).unwrap()).unwrap()).map_err(|e| e.to_string())
        }

        /// RFC 8785 appendix B, each as the input and the output.
        #[test]
        fn rfc8785_numbers_round_trip() {
            for text in [
                "0",
                "5e-324",
                "-5e-324",
                "1.7976931348623157e+308",
                "-1.7976931348623157e+308",
                "9007199254740992",
                "-9007199254740992",
                "295147905179352830000",
                "9.999999999999997e+22",
                "1e+23",
                "1.0000000000000001e+23",
                "999999999999999700000",
                "999999999999999900000",
                "1e+21",
                "9.999999999999997e-7",
                "0.000001",
                "333333333.3333332",
                "333333333.33333325",
                "333333333.3333333",
                "333333333.3333334",
                "333333333.33333343",
                "-0.0000033333333333333333",
                "1424953923781206.2",
            ] {
                assert_eq!(canonical(text).as_deref(), Ok(text));
            }
        }

        #[test]
        fn numbers_are_refused_unless_exact() {
            assert_eq!(canonical("-0"), Ok("0".into()));
            assert_eq!(canonical("1E+2"), Ok("100".into()));
            assert_eq!(canonical("10000e-2"), Ok("100".into()));
            assert_eq!(canonical("0e999999999999999999999"), Ok("0".into()));
            assert_eq!(canonical("1e400"), Err("number at byte 0 is beyond the range of a double".into()));
            assert_eq!(
                canonical("[9007199254740993]"),
                Err("number at byte 1 cannot be stored exactly (the nearest double is 9007199254740992)".into())
            );
            assert_eq!(
                canonical("1e-400"),
                Err("number at byte 0 cannot be stored exactly (the nearest double is 0)".into())
            );
            assert_eq!(
                canonical("295147905179352825856"),
                Err("number at byte 0 cannot be stored exactly (the nearest double is 295147905179352830000)".into())
            );
            assert_eq!(canonical("01"), Err("not JSON: invalid number at byte 0".into()));
            assert_eq!(canonical("1."), Err("not JSON: invalid number at byte 0".into()));
            assert_eq!(canonical(".5"), Err("not JSON: expected a value at byte 0".into()));
        }

        #[test]
        fn integers_are_encoded_only_when_their_text_is_exact() {
            let text = |v: Value| to_vec(&v).map(|b| String::from_utf8(b).unwrap()).map_err(|e| e.to_string());
            assert_eq!(text(serde_json::json!(549_401_482_165_059_100_i64)), Ok("549401482165059100".into()));
            assert_eq!(
                text(serde_json::json!(9_007_199_254_740_993_i64)),
                Err("9007199254740993 has no exact double text (the nearest is 9007199254740992)".into())
            );
            assert_eq!(
                text(serde_json::json!(u64::MAX)),
                Err("18446744073709551615 has no exact double text (the nearest is 18446744073709552000)".into())
            );
            assert_eq!(parse(b"549401482165059100").unwrap().as_i64(), Some(549_401_482_165_059_100));
            assert_eq!(parse(b"5.494014821650591e17").unwrap().as_i64(), Some(549_401_482_165_059_100));
            assert_eq!(parse(b"-0.0").unwrap().as_i64(), Some(0));
            assert_eq!(parse(b"2.5").unwrap().as_f64(), Some(2.5));
        }

        #[test]
        fn keys_sort_by_utf16_and_strings_escape_as_json_stringify() {
            assert_eq!(
                canonical(
                    r#"{"\ufb33":1,"\ud83d\ude00":2,"\u20ac":3,"\u00f6":4,"\u0080":5,"1":6,"\r":7,"10":8,"9":9}"#
                ),
                Ok("{\"\\r\":7,\"1\":6,\"10\":8,\"9\":9,\"\u{80}\":5,\"ö\":4,\"€\":3,\"😀\":2,\"\u{fb33}\":1}".into())
            );
            assert_eq!(canonical(r#""\u0000\u001f\u007f\u2028\/""#), Ok("\"\\u0000\\u001f\u{7f}\u{2028}/\"".into()));
            assert_eq!(canonical(r#""\ud800x""#), Err("not JSON: lone surrogate at byte 1".into()));
            assert_eq!(canonical(r#"{"a":1,"\u0061":2}"#), Err("duplicate key \"a\" at byte 7".into()));
        }
    }
}
