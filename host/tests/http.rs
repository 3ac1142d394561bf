//! The `http` capability, through the real runtime and dispatcher with the
//! `http-call` plugin, against a local HTTP server the test starts: what the
//! server saw is what is checked, so "denied before any connection" means
//! the server saw nothing. And the `config` capability, which the same
//! plugin reads.
//!
//! The plugins must be built first: `make plugins`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

mod support;

use support::{read_dead_letters, run_host};

const CONFIG: &str = r#"
    [sources.in]
    type = "file"
    path = "in.jsonl"

    [tenants.t.grants]
    cache_prefixes = ["http:"]
    allowed_hosts = ["http://127.0.0.1:PORT"]

    [tenants.t.quotas]
    max_http_response_bytes = 1048576

    [tenants.t.handlers.http-call]
    wasm = "WASM"

    [[routes]]
    source = "in"
    topic = "*"
    tenant = "t"
    handler = "http-call"
    max_attempts = 4
    retry_base_ms = 5
    retry_max_ms = 50
    limits = { memory_mib = 16, timeout_ms = 1500 }
"#;

fn line(id: &str, payload: serde_json::Value) -> String {
    serde_json::json!({"topic": "h", "id": id, "payload": payload}).to_string()
}

#[tokio::test]
async fn requests_reach_only_granted_hosts_within_their_deadline_and_size() {
    let server = support::http_server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = |path: &str| server.url(path);
    let localhost = format!("http://localhost:{}/hello", server.port);
    let http = |key: &str, url: String| serde_json::json!({"url": url, "key": format!("http:{key}")});
    let lines = [
        line("hello", http("hello", url("/hello"))),
        line("post", serde_json::json!({"method": "POST", "url": url("/echo"), "body": "a body", "key": "http:post"})),
        line("denied-host", http("denied-host", localhost)),
        line("other-scheme", http("other-scheme", format!("https://127.0.0.1:{}/hello", server.port))),
        line("redirect-in", http("redirect-in", url("/redirect-in"))),
        line("redirect-out", http("redirect-out", url("/redirect-out"))),
        line("redirect-loop", http("redirect-loop", url("/redirect-loop"))),
        line("slow", http("slow", url("/slow"))),
        line("slow-own-timeout", serde_json::json!({"url": url("/slow"), "timeout_ms": 200})),
        line("big", http("big", url("/big"))),
        line("big-stream", http("big-stream", url("/big-stream"))),
        line("flaky", http("flaky", url("/flaky"))),
        line("not-a-url", http("not-a-url", "not a url".into())),
        line("bad-method", serde_json::json!({"url": url("/hello"), "method": "GE T"})),
        line("host-header", serde_json::json!({"url": url("/hello"), "headers": [["Host", "admin.internal"]]})),
        line("missing", http("missing", url("/missing"))),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let template = CONFIG.replace("PORT", &server.port.to_string());
    let config = support::config_with_file(dir.path(), &template, "http_call", &lines);
    let (stats, backends) = run_host(&config).await;

    let cached = |key: &str| {
        let backends = backends.clone();
        let key = format!("http:{key}");
        async move { backends.cache.get(&key).await.unwrap().map(|v| String::from_utf8(v).unwrap()) }
    };
    assert_eq!(cached("hello").await.as_deref(), Some("200 hello"));
    assert_eq!(cached("redirect-in").await.as_deref(), Some("200 hello"), "a redirect within the grant is followed");
    assert_eq!(cached("missing").await.as_deref(), Some("404 "), "a 404 is a response, not an error");
    // A 5xx is the handler's to judge: this one retries, and the third attempt finds the server recovered.
    assert_eq!(cached("flaky").await.as_deref(), Some("200 recovered"));
    assert_eq!(server.seen.hits_on("/flaky").len(), 3);
    let post = server.seen.hits_on("/echo");
    assert_eq!(post.len(), 1);
    assert_eq!(post[0].body, "a body");
    assert!(post[0].key.as_deref() == Some("post"), "the message id went as the idempotency key: {post:?}");

    let dead = read_dead_letters(&dir.path().join("dead-letter/in.jsonl"));
    let reason = |id: &str| {
        let line = dead.iter().find(|d| d["id"] == id).unwrap_or_else(|| panic!("{id} not dead-lettered: {dead:?}"));
        support::header(line, "switchyard-dead-letter-reason").unwrap()
    };
    let expect = [
        (
            "denied-host",
            format!(
                "rejected: http: CapabilityError::Denied(\"http://localhost:{}/hello is outside the tenant's allowed_hosts",
                server.port
            ),
        ),
        (
            "other-scheme",
            format!("rejected: http: CapabilityError::Denied(\"https://127.0.0.1:{}/hello is outside", server.port),
        ),
        (
            "redirect-out",
            format!(
                "rejected: http: CapabilityError::Denied(\"the redirect from {} to http://localhost:{}/hello is outside",
                url("/redirect-out"),
                server.port
            ),
        ),
        (
            "redirect-loop",
            format!("rejected: http: CapabilityError::Unavailable(\"{}: more than 5 redirects", url("/redirect-loop")),
        ),
        ("slow", format!("rejected: http: CapabilityError::Unavailable(\"{}: no answer within", url("/slow"))),
        (
            "slow-own-timeout",
            format!("rejected: http: CapabilityError::Unavailable(\"{}: no answer within", url("/slow")),
        ),
        (
            "big",
            format!(
                "rejected: http: CapabilityError::TooLarge(\"{}: the response body is 2097152 bytes or more; the limit is 1048576",
                url("/big")
            ),
        ),
        (
            "big-stream",
            format!("rejected: http: CapabilityError::TooLarge(\"{}: the response body is", url("/big-stream")),
        ),
        ("not-a-url", "rejected: http: CapabilityError::Invalid(\"\\\"not a url\\\" is not a URL".to_string()),
        (
            "host-header",
            "rejected: http: CapabilityError::Invalid(\"the header \\\"Host\\\" is the HTTP client's to set"
                .to_string(),
        ),
        ("bad-method", "rejected: http: CapabilityError::Invalid(\"\\\"GE T\\\" is not an HTTP method".to_string()),
    ];
    for (id, want) in &expect {
        let got = reason(id);
        assert!(got.starts_with(want.as_str()), "{id}: {got:?} should start with {want:?}");
    }
    // Denied before any connection: the server never saw localhost's /hello
    // (the two granted /hello calls are the only ones), nor a request over https.
    assert_eq!(server.seen.hits_on("/hello").len(), 2, "{:?}", server.seen.hits.lock().unwrap());
    // The handler's deadline (1.5 s) ended the wait on /slow, well before the server's 30 s.
    assert_eq!(server.seen.hits_on("/slow").len(), 2);
    assert_eq!(server.seen.hits_on("/redirect-loop").len(), 6, "the first request and five redirects");
    assert_eq!(stats.dead_lettered, expect.len() as u64, "{stats:?}");
    assert_eq!(stats.handled, 5, "{stats:?}");
}

#[tokio::test]
async fn a_message_sends_at_most_its_tenants_max_http_requests() {
    let server = support::http_server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let lines = [line("loop", serde_json::json!({"url": server.url("/redirect-loop")}))];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let template = CONFIG
        .replace("PORT", &server.port.to_string())
        .replace("max_http_response_bytes = 1048576", "max_http_requests = 3");
    let config = support::config_with_file(dir.path(), &template, "http_call", &lines);
    let (stats, _) = run_host(&config).await;
    assert_eq!(stats.dead_lettered, 1);
    let dead = read_dead_letters(&dir.path().join("dead-letter/in.jsonl"));
    let reason = support::header(&dead[0], "switchyard-dead-letter-reason").unwrap();
    assert!(reason.contains("has sent 3 HTTP requests, the tenant's max_http_requests"), "{reason}");
    assert_eq!(server.seen.hits_on("/redirect-loop").len(), 3);
}

#[tokio::test]
async fn config_variables_are_the_tenants_with_the_handlers_over_them() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        line("a-region", serde_json::json!({"config": "region", "key": "http:a:region"})),
        line("a-mail", serde_json::json!({"config": "mail_api", "key": "http:a:mail"})),
        line("a-missing", serde_json::json!({"config": "nothing", "key": "http:a:missing"})),
    ];
    let b =
        serde_json::json!({"topic": "b", "id": "b-region", "payload": {"config": "region", "key": "http:b:region"}});
    let mut lines: Vec<String> = lines.to_vec();
    lines.push(b.to_string());
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let template = r#"
    [sources.in]
    type = "file"
    path = "in.jsonl"

    [tenants.a.grants]
    cache_prefixes = ["http:a:"]
    allowed_hosts = ["http://127.0.0.1:1"]

    [tenants.a.config]
    region = "eu-west-1"
    mail_api = "the tenant's"

    [tenants.a.handlers.http-call]
    wasm = "WASM"
    config = { mail_api = "the handler's" }

    [tenants.b.grants]
    cache_prefixes = ["http:b:"]
    allowed_hosts = ["http://127.0.0.1:1"]

    [tenants.b.handlers.http-call]
    wasm = "WASM"

    [[routes]]
    source = "in"
    topic = "h"
    tenant = "a"
    handler = "http-call"

    [[routes]]
    source = "in"
    topic = "b"
    tenant = "b"
    handler = "http-call"
    "#;
    let config = support::config_with_file(dir.path(), template, "http_call", &lines);
    let (stats, backends) = run_host(&config).await;
    assert_eq!(stats.handled, 4, "{stats:?}");
    let cached = |key: &'static str| {
        let backends = backends.clone();
        async move { String::from_utf8(backends.cache.get(key).await.unwrap().unwrap()).unwrap() }
    };
    assert_eq!(cached("http:a:region").await, "eu-west-1", "the tenant's variable");
    assert_eq!(cached("http:a:mail").await, "the handler's", "the handler's own over the tenant's");
    assert_eq!(cached("http:a:missing").await, "<none>");
    assert_eq!(cached("http:b:region").await, "<none>", "another tenant's variables are not seen");
}
