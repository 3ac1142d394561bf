//! The cache-update handler in Rust, Python, JavaScript and C, run through the
//! real runtime on the same messages, malformed ones and deletes included:
//! each language must reach the outcome `plugins/cache-update/SPEC.md` gives,
//! with the same reason, store the same canonical bytes, and leave the same
//! cache contents behind. The messages cover numbers (beyond a double,
//! underflowing, inexact, -0, exponents, bad grammar), strings (escapes,
//! control characters, surrogates, invalid UTF-8, a byte order mark),
//! nesting at and over the limit, key order and duplicates, and a large payload.
//!
//! Needs `make plugins` (which runs `plugins/languages.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switchyard::capabilities::context::{Backends, Capabilities, Effect};
use switchyard::config::{Config, Limits};
use switchyard::contract::bindings::Message;
use switchyard::contract::cache::CacheBackend;
use switchyard::contract::errors::BackendError;
use switchyard::runtime::{InvokeContext, Outcome, Plugin, Runtime, RuntimeOptions};
use switchyard::wiring;

const LANGUAGES: [(&str, &str); 4] = [
    ("rust", "cache_update"),
    ("python", "cache_update_py"),
    ("javascript", "cache_update_js"),
    ("c", "cache_update_c"),
];

/// Every reject reason of a malformed product change starts with this.
const M: &str = "malformed product change: ";

/// What one message must do, in every language; `plugins/cache-update/SPEC.md`
/// is where each rule and reason comes from.
#[derive(Debug, Clone)]
enum Expect {
    /// Ok, having set `product:<id>` to exactly these bytes.
    Stored(String, String),
    /// Ok, having deleted `product:<id>`.
    Deleted(String),
    /// Rejected with exactly this reason, having done nothing.
    Reject(String),
}

use Expect::{Deleted, Reject, Stored};

fn stored(id: &str, bytes: &str) -> Expect {
    Stored(id.into(), bytes.into())
}

fn reject(reason: &str) -> Expect {
    Reject(format!("{M}{reason}"))
}

/// `{"id":"v","v":<value>}`: the value starts at byte 14.
fn with_value(value: &[u8]) -> Vec<u8> {
    [&br#"{"id":"v","v":"#[..], value, b"}"].concat()
}

/// The product a [`with_value`] payload stores, given the value's canonical text.
fn stored_value(canonical: &str) -> Expect {
    stored("v", &format!(r#"{{"id":"v","v":{canonical}}}"#))
}

/// Numbers: accepted when the canonical text (ECMAScript's, for the nearest
/// double) is exactly the number sent; refused when no double is that close.
fn numbers() -> Vec<(Vec<u8>, Expect)> {
    let beyond = "number at byte 14 is beyond the range of a double";
    let inexact =
        |nearest: &str| format!("number at byte 14 cannot be stored exactly (the nearest double is {nearest})");
    let accepted = [
        ("0", "0"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("-0e5", "0"),
        ("0e99999999999999999999", "0"),
        ("0.1", "0.1"),
        ("-0.25", "-0.25"),
        ("100.0", "100"),
        ("1E+2", "100"),
        ("1e0002", "100"),
        ("10000e-2", "100"),
        ("1e20", "100000000000000000000"),
        ("1e21", "1e+21"),
        ("1e-6", "0.000001"),
        ("1e-7", "1e-7"),
        ("-9.999999999999997e-7", "-9.999999999999997e-7"),
        ("5e-324", "5e-324"),
        ("-5e-324", "-5e-324"),
        ("1.7976931348623157e308", "1.7976931348623157e+308"),
        ("9007199254740992", "9007199254740992"),
        ("9007199254740994", "9007199254740994"),
        ("295147905179352830000", "295147905179352830000"),
        ("1e23", "1e+23"),
        ("9.999999999999997e+22", "9.999999999999997e+22"),
        ("0.30000000000000004", "0.30000000000000004"),
        ("333333333.33333325", "333333333.33333325"),
        // The double is ...06.25, as near .2 as .3: the even digit is taken.
        ("1424953923781206.2", "1424953923781206.2"),
        ("12345678901234", "12345678901234"),
        // 2^53 * 61: whole, beyond 2^53, and its shortest text is exact.
        ("549401482165059100", "549401482165059100"),
    ];
    let refused = [
        ("1e400", beyond.to_string()),
        ("-1e400", beyond.to_string()),
        ("1.7976931348623159e308", beyond.to_string()),
        ("1e999999999999999999999", beyond.to_string()),
        ("1e-400", inexact("0")),
        ("-1e-400", inexact("0")),
        ("1e-99999999999999999999", inexact("0")),
        ("4.9e-324", inexact("5e-324")),
        ("1.7976931348623158e308", inexact("1.7976931348623157e+308")),
        ("123456789012345678901234567890", inexact("1.2345678901234568e+29")),
        ("9007199254740993", inexact("9007199254740992")),
        // Correct rounding looks past the 20th digit: this is above the midpoint.
        ("9007199254740993.00000000000000000001", inexact("9007199254740994")),
        ("295147905179352825856", inexact("295147905179352830000")),
        ("0.1000000000000000055511151231257827", inexact("0.1")),
        ("1424953923781206.25", inexact("1424953923781206.2")),
        ("0.3000000000000000444", inexact("0.30000000000000004")),
        ("01", "not JSON: invalid number at byte 14".into()),
        ("-01", "not JSON: invalid number at byte 14".into()),
        ("1.", "not JSON: invalid number at byte 14".into()),
        ("1.e5", "not JSON: invalid number at byte 14".into()),
        ("1e", "not JSON: invalid number at byte 14".into()),
        ("1e+", "not JSON: invalid number at byte 14".into()),
        ("--1", "not JSON: invalid number at byte 14".into()),
        ("1-2", "not JSON: invalid number at byte 14".into()),
        ("-", "not JSON: invalid number at byte 14".into()),
        ("-Infinity", "not JSON: invalid number at byte 14".into()),
        (".5", "not JSON: expected a value at byte 14".into()),
        ("+1", "not JSON: expected a value at byte 14".into()),
        ("NaN", "not JSON: expected a value at byte 14".into()),
        ("Infinity", "not JSON: expected a value at byte 14".into()),
        ("0x10", "not JSON: expected ',' or '}' at byte 15".into()),
        ("1_000", "not JSON: expected ',' or '}' at byte 15".into()),
        // ARABIC-INDIC DIGIT ONE is no JSON digit (Python's \d would take it).
        ("\u{661}", "not JSON: expected a value at byte 14".into()),
        ("1\u{661}", "not JSON: expected ',' or '}' at byte 15".into()),
    ];
    let mut out: Vec<_> = accepted.iter().map(|(n, text)| (with_value(n.as_bytes()), stored_value(text))).collect();
    out.extend(refused.iter().map(|(n, reason)| (with_value(n.as_bytes()), reject(reason))));
    out
}

/// Strings: escapes, control characters, surrogates, and UTF-8 that is not.
fn strings() -> Vec<(Vec<u8>, Expect)> {
    let accepted: [(&[u8], &str); 14] = [
        (br#""\b\f\n\r\t\"\\\/""#, r#""\b\f\n\r\t\"\\/""#),
        (br#""\u0000""#, r#""\u0000""#),
        (br#""\u001f\u0001\u007f""#, "\"\\u001f\\u0001\u{7f}\""),
        (b"\"\x7f\"", "\"\u{7f}\""),
        (br#""\u2028\u2029""#, "\"\u{2028}\u{2029}\""),
        (br#""\ud83d\ude00""#, "\"\u{1f600}\""),
        (br#""\uD83D\uDE00""#, "\"\u{1f600}\""),
        ("\"\u{1f600}\u{10ffff}\"".as_bytes(), "\"\u{1f600}\u{10ffff}\""),
        (br#""\u00e9\u20ac""#, "\"é€\""),
        // U+FEFF inside a string is a character like any other, escaped or raw.
        (br#""\ufeffa""#, "\"\u{feff}a\""),
        ("\"\u{feff}b\"".as_bytes(), "\"\u{feff}b\""),
        (br#""\uffff""#, "\"\u{ffff}\""),
        (br#""a\/b""#, r#""a/b""#),
        (br#""""#, r#""""#),
    ];
    let refused: [(&[u8], &str); 19] = [
        (br#""\ud800""#, "not JSON: lone surrogate at byte 15"),
        (br#""\udc00""#, "not JSON: lone surrogate at byte 15"),
        (br#""x\ude00\ud83d""#, "not JSON: lone surrogate at byte 16"),
        (br#""\ud83dx""#, "not JSON: lone surrogate at byte 15"),
        (br#""\ud83d\n""#, "not JSON: lone surrogate at byte 15"),
        (br#""\ud83d\u0041""#, "not JSON: lone surrogate at byte 15"),
        (br#""\ud83d\ud83d""#, "not JSON: lone surrogate at byte 15"),
        (br#""\x""#, "not JSON: invalid escape at byte 15"),
        (br#""\U0041""#, "not JSON: invalid escape at byte 15"),
        (br#""\u12G4""#, "not JSON: invalid escape at byte 15"),
        (b"\"a\x01\"", "not JSON: control character in string at byte 16"),
        (b"\"a\tb\"", "not JSON: control character in string at byte 16"),
        (b"\"a\nb\"", "not JSON: control character in string at byte 16"),
        (b"\"\xc0\x80\"", "not JSON: invalid UTF-8 at byte 15"),
        (b"\"\xe0\x80\x80\"", "not JSON: invalid UTF-8 at byte 15"),
        (b"\"\xed\xa0\x80\"", "not JSON: invalid UTF-8 at byte 15"),
        (b"\"\xf4\x90\x80\x80\"", "not JSON: invalid UTF-8 at byte 15"),
        (b"\"ok \xe2\x82\"", "not JSON: invalid UTF-8 at byte 18"),
        (b"\"\x80\"", "not JSON: invalid UTF-8 at byte 15"),
    ];
    let mut out: Vec<_> = accepted.iter().map(|(v, text)| (with_value(v), stored_value(text))).collect();
    out.extend(refused.iter().map(|(v, reason)| (with_value(v), reject(reason))));
    out
}

/// Nesting up to 64 arrays and objects, the top-level object counted.
fn nesting() -> Vec<(Vec<u8>, Expect)> {
    let arrays = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let objects = |n: usize| format!("{}0{}", r#"{"a":"#.repeat(n), "}".repeat(n));
    vec![
        (with_value(arrays(63).as_bytes()), stored_value(&arrays(63))),
        (with_value(objects(63).as_bytes()), stored_value(&objects(63))),
        (with_value(arrays(64).as_bytes()), reject("nested deeper than 64 levels at byte 77")),
        (with_value(objects(64).as_bytes()), reject("nested deeper than 64 levels at byte 329")),
        // Far deeper than any language's own parser or stack would go.
        (with_value("[".repeat(100_000).as_bytes()), reject("nested deeper than 64 levels at byte 77")),
        (
            br#"{"id":"e","a":[],"o":{},"n":[[],{}],"m":[{"":[]}]}"#.to_vec(),
            stored("e", r#"{"a":[],"id":"e","m":[{"":[]}],"n":[[],{}],"o":{}}"#),
        ),
    ]
}

/// Keys: sorted by UTF-16 code units, unique, and ordinary whatever they are.
fn keys() -> Vec<(Vec<u8>, Expect)> {
    let long = "k".repeat(70);
    vec![
        // U+1F600 is D83D DE00 in UTF-16, so it sorts before U+E000 and
        // U+FFFF, after them by code point or UTF-8 bytes; "10" before "9".
        (
            br#"{"id":"k","\uffff":1,"\ud83d\ude00":2,"\ue000":3,"z":4,"10":5,"9":6,"":7}"#.to_vec(),
            stored("k", "{\"\":7,\"10\":5,\"9\":6,\"id\":\"k\",\"z\":4,\"\u{1f600}\":2,\"\u{e000}\":3,\"\u{ffff}\":1}"),
        ),
        // The sorting example of RFC 8785, section 3.2.3.
        (
            br#"{"id":"r","\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#.to_vec(),
            stored("r", "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"id\":\"r\",\"\u{80}\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}"),
        ),
        // A key JavaScript objects treat specially is a member like any other.
        (br#"{"id":"proto","__proto__":{"x":1},"constructor":0}"#.to_vec(), stored("proto", r#"{"__proto__":{"x":1},"constructor":0,"id":"proto"}"#)),
        (br#"{"id":"d1","name":"first","name":"second"}"#.to_vec(), reject(r#"duplicate key "name" at byte 26"#)),
        (br#"{"id":"d2","a":1,"\u0061":2}"#.to_vec(), reject(r#"duplicate key "a" at byte 17"#)),
        (br#"{"id":"d3","deleted":false,"deleted":true}"#.to_vec(), reject(r#"duplicate key "deleted" at byte 27"#)),
        (br#"{"id":"d4","id":"d4"}"#.to_vec(), reject(r#"duplicate key "id" at byte 11"#)),
        (br#"{"id":"d5","x":{"\n\u0001":1,"\n\u0001":2}}"#.to_vec(), reject(r#"duplicate key "\n\u0001" at byte 29"#)),
        (
            format!(r#"{{"id":"d6","{long}":1,"{long}":2}}"#).into_bytes(),
            reject(&format!(r#"duplicate key "{}"... at byte 86"#, "k".repeat(64))),
        ),
        // The same key in two objects is no duplicate.
        (br#"{"id":"d7","a":{"a":1},"b":{"a":2}}"#.to_vec(), stored("d7", r#"{"a":{"a":1},"b":{"a":2},"id":"d7"}"#)),
    ]
}

/// Payloads near the host's 1 MiB limit, a long string and many numbers:
/// stored whole, or refused for one fault at the very end, found at its byte
/// however far in (and in time: each language's fast path defers to its
/// precise reader there).
fn large() -> Vec<(Vec<u8>, Expect)> {
    let text: String = (0..40_000).map(|i| format!("x{i}\\n")).collect();
    let numbers: Vec<String> = (0..20_000).map(|i| format!("{}.5e-3", i * 7)).collect();
    // (7i + 0.5) thousandths, exactly: few digits, so every double text of
    // it is that decimal, written without exponent.
    let canonical: Vec<String> =
        (0..20_000).map(|i| format!("{}.{:04}", (i * 70 + 5) / 10_000, (i * 70 + 5) % 10_000)).collect();
    let body = |id: &str| format!(r#"{{"id":"{id}","text":"{text}","numbers":[{}]"#, numbers.join(","));
    let whole = format!("{}}}", body("big"));
    let duplicate = body("big2");
    let lone = format!(r#"{{"id":"big3","numbers":[{}],"text":"{text}"#, numbers.join(","));
    let beyond = format!(r#"{{"id":"big4","text":"{text}","numbers":[{}"#, numbers.join(","));
    vec![
        (
            whole.into_bytes(),
            stored("big", &format!(r#"{{"id":"big","numbers":[{}],"text":"{text}"}}"#, canonical.join(","))),
        ),
        (
            format!(r#"{duplicate},"id":"x"}}"#).into_bytes(),
            reject(&format!(r#"duplicate key "id" at byte {}"#, duplicate.len() + 1)),
        ),
        (
            format!(r#"{lone}\ud800"}}"#).into_bytes(),
            reject(&format!("not JSON: lone surrogate at byte {}", lone.len())),
        ),
        (
            format!("{beyond},1e400]}}").into_bytes(),
            reject(&format!("number at byte {} is beyond the range of a double", beyond.len() + 1)),
        ),
    ]
}

/// The messages, in order, and what each must do in every language.
fn messages() -> Vec<(Vec<u8>, Expect)> {
    let mut all: Vec<(Vec<u8>, Expect)> = vec![
        (
            r#"{"name":"lamp \"deluxe\"\n","id":"p1","price":12.5,"tags":["a","b"],"dims":{"w":3,"h":-0.25},"note":"grüße ☃ \u0001","stock":0}"#.as_bytes().to_vec(),
            stored("p1", r#"{"dims":{"h":-0.25,"w":3},"id":"p1","name":"lamp \"deluxe\"\n","note":"grüße ☃ \u0001","price":12.5,"stock":0,"tags":["a","b"]}"#),
        ),
        (br#"{"id":"p2","name":"bolt","price":0.1,"deleted":false}"#.to_vec(), stored("p2", r#"{"id":"p2","name":"bolt","price":0.1}"#)),
        (br#"{"id":"p3","name":"nut","weight":1e2,"big":12345678901234}"#.to_vec(), stored("p3", r#"{"big":12345678901234,"id":"p3","name":"nut","weight":100}"#)),
        (br#"{"id":"p2","deleted":true}"#.to_vec(), Deleted("p2".into())),
        // Deleting what is not there is no error.
        (br#"{"id":"p9","deleted":true}"#.to_vec(), Deleted("p9".into())),
        // A delete ignores the other members, but they must still be valid.
        (br#"{"id":"p3","name":"nut","deleted":true}"#.to_vec(), Deleted("p3".into())),
        (br#"{"id":"p1","deleted":true,"price":1e400}"#.to_vec(), reject("number at byte 34 is beyond the range of a double")),
        (b"\t\n\r {\"id\" : \"p6\" , \"a\" : [ 1 , 2 ] } \r\n".to_vec(), stored("p6", r#"{"a":[1,2],"id":"p6"}"#)),
        (br#"{"id":"p\u0000x","name":"nul in the id"}"#.to_vec(), stored("p\u{0}x", r#"{"id":"p\u0000x","name":"nul in the id"}"#)),
        (r#"{"id":"é😀","name":"unicode id"}"#.as_bytes().to_vec(), stored("é😀", r#"{"id":"é😀","name":"unicode id"}"#)),
        (b"this is not json".to_vec(), reject("not JSON: expected a value at byte 0")),
        (br#"{"id":"p5","name":"cut off""#.to_vec(), reject("not JSON: unexpected end at byte 27")),
        (br#"{"id":"p5","name":"cut \ud83d"#.to_vec(), reject("not JSON: unexpected end at byte 29")),
        (br#"{"id":"p5","name":"cut \ud83d\"#.to_vec(), reject("not JSON: unexpected end at byte 30")),
        (br#"{"id":"p5","name":"cut \u12"#.to_vec(), reject("not JSON: unexpected end at byte 27")),
        (br#"{"id":"p5","name":"#.to_vec(), reject("not JSON: unexpected end at byte 18")),
        (br#"{"id":"p5""#.to_vec(), reject("not JSON: unexpected end at byte 10")),
        (br#"{"id":"p5"} trailing"#.to_vec(), reject("not JSON: trailing characters at byte 12")),
        (br#"{"id":"p5"}{}"#.to_vec(), reject("not JSON: trailing characters at byte 11")),
        (br#"{"id":"p5","price":NaN}"#.to_vec(), reject("not JSON: expected a value at byte 19")),
        (br#"{"id":"p5","ok":tru}"#.to_vec(), reject("not JSON: expected a value at byte 16")),
        (br#"{"id":"p5","ok":True}"#.to_vec(), reject("not JSON: expected a value at byte 16")),
        (br#"{"id":"p5",}"#.to_vec(), reject("not JSON: expected a string key at byte 11")),
        (br#"{"id":"p5","a":[1,]}"#.to_vec(), reject("not JSON: expected a value at byte 18")),
        (br#"{"id":"p5","a":[1 2]}"#.to_vec(), reject("not JSON: expected ',' or ']' at byte 18")),
        (br#"{"id":"p5" "a":1}"#.to_vec(), reject("not JSON: expected ',' or '}' at byte 11")),
        (br#"{"id" "p5"}"#.to_vec(), reject("not JSON: expected ':' at byte 6")),
        (br#"{id:"p5"}"#.to_vec(), reject("not JSON: expected a string key at byte 1")),
        (br#"{'id':'p5'}"#.to_vec(), reject("not JSON: expected a string key at byte 1")),
        (b"{\"id\":\"p5\",\"name\":\"\xff\xfe\"}".to_vec(), reject("not JSON: invalid UTF-8 at byte 19")),
        // UTF-8 comes first: the payload is checked whole before any syntax.
        (b"{\"id\" \"p5\",\"name\":\"\xff\"}".to_vec(), reject("not JSON: invalid UTF-8 at byte 19")),
        (b"\xef\xbb\xbf{\"id\":\"p5\"}".to_vec(), reject("not JSON: expected a value at byte 0")),
        (b"\x0c{\"id\":\"p5\"}".to_vec(), reject("not JSON: expected a value at byte 0")),
        ("\u{a0}{\"id\":\"p5\"}".as_bytes().to_vec(), reject("not JSON: expected a value at byte 0")),
        (b"{\"id\":\"p5\"}\x00".to_vec(), reject("not JSON: trailing characters at byte 11")),
        (b"".to_vec(), reject("not JSON: unexpected end at byte 0")),
        (b"   ".to_vec(), reject("not JSON: unexpected end at byte 3")),
        (br#"[{"id":"p5"}]"#.to_vec(), reject("not a JSON object")),
        (br#""p5""#.to_vec(), reject("not a JSON object")),
        (b"null".to_vec(), reject("not a JSON object")),
        (b"{}".to_vec(), reject("id must be a non-empty string")),
        (br#"{"name":"no id"}"#.to_vec(), reject("id must be a non-empty string")),
        (br#"{"id":5}"#.to_vec(), reject("id must be a non-empty string")),
        (br#"{"id":null}"#.to_vec(), reject("id must be a non-empty string")),
        (br#"{"id":["p5"]}"#.to_vec(), reject("id must be a non-empty string")),
        (br#"{"id":""}"#.to_vec(), reject("id must be a non-empty string")),
        (br#"{"id":"p5","deleted":"yes"}"#.to_vec(), reject("deleted must be true or false")),
        (br#"{"id":"p5","deleted":null}"#.to_vec(), reject("deleted must be true or false")),
        (br#"{"id":"p5","deleted":0}"#.to_vec(), reject("deleted must be true or false")),
        (br#"{"id":"p1","name":"lamp","price":13}"#.to_vec(), stored("p1", r#"{"id":"p1","name":"lamp","price":13}"#)),
    ];
    all.extend(numbers());
    all.extend(strings());
    all.extend(nesting());
    all.extend(keys());
    all.extend(large());
    all
}

/// What one language did with every message.
#[derive(Debug, PartialEq)]
struct Run {
    outcomes: Vec<Outcome>,
    effects: Vec<Vec<Effect>>,
    cache: BTreeMap<String, Option<Vec<u8>>>,
}

fn message(n: usize, payload: &[u8]) -> Message {
    Message {
        id: format!("m-{n}"),
        source: "languages".into(),
        topic: "product.changed".into(),
        key: None,
        headers: vec![("content-type".into(), "application/json".into())],
        payload: payload.to_vec(),
        attempt: 1,
        reply_to: None,
        timestamp_ms: None,
    }
}

fn runtime() -> Runtime {
    // A compiled-code cache that outlives the test run: Python and JavaScript
    // components take seconds to compile, and only the first run pays.
    let cache_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("languages-compiled");
    Runtime::new(RuntimeOptions { cache_dir: Some(cache_dir), ..RuntimeOptions::default() }).unwrap()
}

fn load_all(runtime: &Runtime) -> Vec<(&'static str, Plugin)> {
    LANGUAGES.iter().map(|(lang, file)| (*lang, runtime.load(&support::plugin(file)).unwrap())).collect()
}

async fn embedded_backends(dir: &std::path::Path) -> Arc<Backends> {
    let mut config = Config::parse(std::path::Path::new("<languages>"), "").unwrap();
    config.data_dir = dir.to_path_buf();
    Arc::new(wiring::open_backends(&config).await.unwrap())
}

fn context(caps: Capabilities, lang: &str) -> InvokeContext {
    InvokeContext {
        caps: Arc::new(caps),
        // This test is about outcomes, not speed. An interpreted language
        // takes seconds over a half-megabyte payload when the machine is
        // busy, so the deadline is far above the default's five seconds.
        limits: Limits { timeout_ms: 120_000, ..Limits::default() },
        tenant: "shop".into(),
        handler: format!("cache-update ({lang})").into(),
        record_effects: true,
        variables: Default::default(),
        pool: None,
    }
}

async fn run(runtime: &Runtime, plugin: &Plugin, lang: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let backends = embedded_backends(dir.path()).await;
    let mut caps = Capabilities::unrestricted(backends.clone());
    caps.grants.cache_prefixes = vec!["product:".into()];
    let ctx = context(caps, lang);
    let (mut outcomes, mut effects) = (Vec::new(), Vec::new());
    // What the cache must hold at the end: the last set or delete of each key.
    let mut expected_cache = BTreeMap::new();
    for (n, (payload, expect)) in messages().into_iter().enumerate() {
        let invocation = runtime.invoke(plugin, &message(n, &payload), &ctx).await;
        let mut shown = String::from_utf8_lossy(&payload).into_owned();
        if shown.chars().count() > 200 {
            shown = format!("{}... ({} bytes)", shown.chars().take(200).collect::<String>(), payload.len());
        }
        let (want_outcome, want_effects) = match &expect {
            Stored(id, bytes) => {
                let key = format!("product:{id}");
                expected_cache.insert(key.clone(), Some(bytes.as_bytes().to_vec()));
                (Outcome::Ok, vec![Effect::CacheSet { key, value: bytes.clone(), ttl_ms: None }])
            }
            Deleted(id) => {
                let key = format!("product:{id}");
                expected_cache.insert(key.clone(), None);
                (Outcome::Ok, vec![Effect::CacheDelete { key }])
            }
            Reject(reason) => (Outcome::Reject(reason.clone()), vec![]),
        };
        assert_eq!(invocation.outcome, want_outcome, "{lang}: message {n} {shown:?}");
        assert_eq!(invocation.effects, want_effects, "{lang}: message {n} {shown:?}");
        outcomes.push(invocation.outcome);
        effects.push(invocation.effects);
    }
    // Read what is left straight from the cache backend.
    let mut cache = BTreeMap::new();
    for (key, want) in expected_cache {
        let got = backends.cache.get(&key).await.unwrap();
        assert_eq!(got, want, "{lang}: {key} at the end");
        cache.insert(key, got);
    }
    Run { outcomes, effects, cache }
}

#[tokio::test(flavor = "multi_thread")]
async fn four_languages_same_outcomes_effects_and_cache() {
    let runtime = runtime();
    let plugins = load_all(&runtime);
    let mut runs = Vec::new();
    for (lang, plugin) in &plugins {
        runs.push((*lang, run(&runtime, plugin, lang).await));
    }
    // Each run met every expectation; and so every language did the same.
    let (_, rust) = &runs[0];
    for (lang, other) in &runs[1..] {
        assert_eq!(other.outcomes, rust.outcomes, "{lang} outcomes differ from rust");
        assert_eq!(other.effects, rust.effects, "{lang} effects differ from rust");
        assert_eq!(other.cache, rust.cache, "{lang} cache contents differ from rust");
    }
}

/// The exact bytes stored for a product without exponents or whole floats:
/// compact, keys sorted, escapes as JSON requires, `deleted` dropped.
#[tokio::test(flavor = "multi_thread")]
async fn four_languages_store_the_same_bytes() {
    let runtime = runtime();
    let payload = "{\"price\":12.5,\"id\":\"p7\",\"deleted\":false,\"name\":\"tab\\there \\\"q\\\" ☃ \\u001f\",\"b\":{\"z\":[1,-2,{\"y\":null,\"x\":true}],\"a\":\"\"}}";
    let expected = "{\"b\":{\"a\":\"\",\"z\":[1,-2,{\"x\":true,\"y\":null}]},\"id\":\"p7\",\"name\":\"tab\\there \\\"q\\\" ☃ \\u001f\",\"price\":12.5}";
    for (lang, plugin) in load_all(&runtime) {
        let dir = tempfile::tempdir().unwrap();
        let backends = embedded_backends(dir.path()).await;
        let ctx = context(Capabilities::unrestricted(backends.clone()), lang);
        let invocation = runtime.invoke(&plugin, &message(0, payload.as_bytes()), &ctx).await;
        assert_eq!(invocation.outcome, Outcome::Ok, "{lang}");
        let stored = backends.cache.get("product:p7").await.unwrap().unwrap();
        assert_eq!(String::from_utf8(stored).unwrap(), expected, "{lang}");
    }
}

/// A cache backend that is down: every call fails as unreachable.
struct DownCache;

#[async_trait::async_trait]
impl CacheBackend for DownCache {
    async fn get(&self, _: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Err(down())
    }
    async fn get_many(&self, _: &[String]) -> Result<Vec<Option<Vec<u8>>>, BackendError> {
        Err(down())
    }
    async fn set(&self, _: &str, _: Vec<u8>, _: Option<Duration>) -> Result<(), BackendError> {
        Err(down())
    }
    async fn delete(&self, _: &str) -> Result<bool, BackendError> {
        Err(down())
    }
    async fn increment(&self, _: &str, _: i64) -> Result<i64, BackendError> {
        Err(down())
    }
}

fn down() -> BackendError {
    BackendError::Unavailable("cache 127.0.0.1:1 refused the connection".into())
}

/// Capability failures: an unreachable cache asks for a retry in a second;
/// a key outside the tenant's grants is rejected, naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn four_languages_fail_the_same_way_on_capability_errors() {
    let runtime = runtime();
    let set = br#"{"id":"p1","name":"lamp"}"#;
    let delete = br#"{"id":"p1","deleted":true}"#;
    for (lang, plugin) in load_all(&runtime) {
        let dir = tempfile::tempdir().unwrap();
        let embedded = embedded_backends(dir.path()).await;
        let down = Arc::new(Backends {
            cache: Arc::new(DownCache),
            db: embedded.db.clone(),
            search: embedded.search.clone(),
            http: embedded.http.clone(),
        });
        let ctx = context(Capabilities::unrestricted(down), lang);
        for payload in [&set[..], &delete[..]] {
            let outcome = runtime.invoke(&plugin, &message(0, payload), &ctx).await.outcome;
            let want = Outcome::Retry {
                delay: Duration::from_secs(1),
                reason: "cache 127.0.0.1:1 refused the connection".into(),
            };
            assert_eq!(outcome, want, "{lang}");
        }

        let mut caps = Capabilities::unrestricted(embedded.clone());
        caps.grants.cache_prefixes = vec!["stock:".into()];
        let ctx = context(caps, lang);
        for payload in [&set[..], &delete[..]] {
            let invocation = runtime.invoke(&plugin, &message(0, payload), &ctx).await;
            let want = r#"denied: cache key "product:p1" is outside the tenant's prefixes ["stock:"]"#;
            assert_eq!(invocation.outcome, Outcome::Reject(want.into()), "{lang}");
        }
        assert_eq!(
            embedded.cache.get("product:p1").await.unwrap(),
            None,
            "{lang}: a denied set must not store anything"
        );
    }
}
