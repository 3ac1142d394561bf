//! Tenants: their handlers, what they are granted and what they may use.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

use super::defaults;

/// A tenant: a team or customer whose handlers share grants.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// What the tenant's handlers may touch. Default: nothing.
    #[serde(default)]
    pub grants: Grants,
    /// Limits on everything the tenant runs. Default: none beyond each
    /// handler's own limits.
    #[serde(default)]
    pub quotas: Quotas,
    /// The tenant's handlers by name.
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerConfig>,
    /// Configuration variables every handler of the tenant reads with
    /// `config.get`; a handler's own `config` overrides them. Default: none.
    /// Example: `[tenants.acme.config]` with `region = "eu-west-1"`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// What a tenant's handlers may reach through their capabilities. Anything
/// not granted is refused with `denied`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Cache keys must start with one of these. Example: `cache_prefixes = ["product:"]`.
    #[serde(default)]
    pub cache_prefixes: Vec<String>,
    /// Tables the handler may read and write. `"*"` allows every table.
    /// Example: `db_tables = ["orders"]`.
    #[serde(default)]
    pub db_tables: Vec<String>,
    /// Search index names must start with one of these. Example: `search_prefixes = ["orders"]`.
    #[serde(default)]
    pub search_prefixes: Vec<String>,
    /// Destinations the handler may publish to; a trailing `*` matches any
    /// suffix. Replies to the message's own `reply-to` are always allowed.
    /// Example: `publish = ["order.*"]`.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Where the handler may send HTTP requests: `scheme://host[:port]`
    /// patterns. The host may start with `*.` (any subdomain) or be `*`
    /// (any host); the port may be `*`, and without one it is the scheme's
    /// own (80, 443). Redirects are held to the same list. Example:
    /// `allowed_hosts = ["https://api.mail.example", "http://127.0.0.1:*"]`.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

/// A tenant's quotas. The resource limits cap every handler's and route's
/// own limits; the flow limits apply across all the tenant's routes.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// The most linear memory any invocation may use, in MiB. Example: `memory_mib = 32`.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// The longest any invocation may run, in milliseconds. Example: `timeout_ms = 1000`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The most fuel any invocation may use. Example: `fuel = 50000000`.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Invocations running at once across the tenant's routes. Example: `max_in_flight = 8`.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// Invocations started per second across the tenant's routes, with a
    /// burst of one second's worth. Example: `rate_per_sec = 500.0`.
    #[serde(default)]
    pub rate_per_sec: Option<f64>,
    /// Messages one invocation may publish, compensations included.
    /// Example: `max_publishes = 1000` (the default).
    #[serde(default)]
    pub max_publishes: Option<usize>,
    /// Bytes one invocation may publish in all: payloads, headers and keys.
    /// Example: `max_publish_bytes = 16777216` (the default, 16 MiB).
    #[serde(default)]
    pub max_publish_bytes: Option<usize>,
    /// Bytes of log lines one invocation may write; further lines are
    /// dropped and counted in `switchyard_log_lines_dropped_total`.
    /// Example: `max_log_bytes = 65536` (the default).
    #[serde(default)]
    pub max_log_bytes: Option<usize>,
    /// Search indexes the tenant's handlers may write to; each open index
    /// costs the search backend threads and files. Example:
    /// `max_indexes = 64` (the default).
    #[serde(default)]
    pub max_indexes: Option<usize>,
    /// HTTP requests one invocation may send, redirects included.
    /// Example: `max_http_requests = 100` (the default).
    #[serde(default)]
    pub max_http_requests: Option<usize>,
    /// The largest HTTP response body a handler may receive, in bytes.
    /// Example: `max_http_response_bytes = 4194304` (the default, 4 MiB).
    #[serde(default)]
    pub max_http_response_bytes: Option<usize>,
}

impl Quotas {
    /// `limits`, capped by these quotas.
    pub fn cap(&self, limits: Limits) -> Limits {
        let min = |a: u64, b: Option<u64>| b.map_or(a, |b| a.min(b));
        Limits {
            memory_mib: min(limits.memory_mib, self.memory_mib),
            timeout_ms: min(limits.timeout_ms, self.timeout_ms),
            fuel: match (limits.fuel, self.fuel) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// One handler: a component and its limits.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// The component file. Example: `wasm = "plugins/dist/cache_update.wasm"`.
    pub wasm: PathBuf,
    /// Resource limits for each invocation.
    #[serde(default)]
    pub limits: Limits,
    /// Configuration variables the handler reads with `config.get`, over
    /// its tenant's: what differs between places one component runs, such
    /// as a service's URL. Default: none.
    /// Example: `config = { mail_api = "https://mail.example/send" }`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// Resource limits applied to every invocation of a handler.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory an instance may grow to, in MiB. Example: `memory_mib = 64` (the default).
    #[serde(default = "defaults::memory_mib")]
    pub memory_mib: u64,
    /// Wall time for one invocation, including capability calls, in
    /// milliseconds. Example: `timeout_ms = 5000` (the default).
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// WebAssembly fuel for one invocation, a deterministic bound on work.
    /// Unset means no fuel limit. Example: `fuel = 100000000`.
    #[serde(default)]
    pub fuel: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self { memory_mib: defaults::memory_mib(), timeout_ms: defaults::timeout_ms(), fuel: None }
    }
}

/// The largest memory limit a handler may ask for, in MiB. The pooling
/// allocator reserves address space for this much per instance slot.
pub const MAX_MEMORY_MIB: u64 = 4096;

/// One entry of `db_tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableGrant<'a> {
    /// `"*"`: every table the host's own login reaches.
    All,
    /// `table` or `schema.table`.
    Table {
        /// The schema (on MySQL, the database), if named.
        schema: Option<&'a str>,
        /// The table.
        table: &'a str,
    },
    /// `schema.*`: every table of a schema (on MySQL, a database).
    Schema(&'a str),
}

impl<'a> TableGrant<'a> {
    /// Parse an entry of `db_tables`: `*`, `table`, `schema.table` or
    /// `schema.*`, each name an identifier (`[A-Za-z_][A-Za-z0-9_$]*`, at
    /// most 63 characters). Anything else is refused with the reason.
    pub fn parse(entry: &'a str) -> Result<Self, String> {
        if entry == "*" {
            return Ok(Self::All);
        }
        let parts: Vec<&str> = entry.split('.').collect();
        match parts.as_slice() {
            [table] => Ok(Self::Table { schema: None, table: identifier(table)? }),
            [schema, "*"] => Ok(Self::Schema(identifier(schema)?)),
            [schema, table] => Ok(Self::Table { schema: Some(identifier(schema)?), table: identifier(table)? }),
            _ => Err(format!("{entry:?} has {} parts; a table is `table`, `schema.table` or `schema.*`", parts.len())),
        }
    }
}

/// One entry of `allowed_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// `http` or `https`.
    pub scheme: String,
    /// What the host must be.
    pub host: HostMatch,
    /// The port, or none for any.
    pub port: Option<u16>,
}

/// The host part of a [`HostPattern`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `*`: any host.
    Any,
    /// `*.example.com`: any name ending in `.example.com`.
    Subdomain(String),
    /// Exactly this name or address.
    Exact(String),
}

impl HostPattern {
    /// Parse an entry of `allowed_hosts`; anything else is refused with the reason.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let Some((scheme, rest)) = entry.split_once("://") else {
            return Err(format!("{entry:?} has no scheme; write it as `https://host` or `http://host:port`"));
        };
        let default_port = match scheme {
            "http" => 80,
            "https" => 443,
            _ => return Err(format!("{entry:?}: the scheme must be http or https")),
        };
        if rest.contains(['/', '?', '#', '@']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{entry:?} names more than a host and port"));
        }
        // An IPv6 address keeps its brackets, as a URL's host does.
        let (host, port) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains(']') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        let port = match port {
            None => Some(default_port),
            Some("*") => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| format!("{entry:?}: {p:?} is not a port or `*`"))?),
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostMatch::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if domain.is_empty() || domain.contains('*') {
                return Err(format!("{entry:?}: `*.` must be followed by a domain"));
            }
            HostMatch::Subdomain(format!(".{domain}"))
        } else if host.is_empty() || host.contains('*') {
            return Err(format!("{entry:?}: a host is a name, an address, `*.domain` or `*`"));
        } else {
            HostMatch::Exact(host)
        };
        Ok(Self { scheme: scheme.to_string(), host, port })
    }

    /// Whether a URL's scheme, host (lowercase, as a URL holds it) and port match.
    pub fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Subdomain(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            HostMatch::Exact(name) => host == name,
        };
        self.scheme == scheme && host_ok && self.port.is_none_or(|p| p == port)
    }
}

/// `name` if it is a plain SQL identifier.
fn identifier(name: &str) -> Result<&str, String> {
    let mut chars = name.chars();
    let starts = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if starts && name.len() <= 63 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
        Ok(name)
    } else {
        Err(format!("{name:?} is not a table or schema name (letters, digits, `_` and `$`, at most 63)"))
    }
}

impl Grants {
    /// Refuse entries no backend could hold: the field and the reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for entry in &self.db_tables {
            TableGrant::parse(entry).map_err(|e| ("db_tables".to_string(), e))?;
        }
        for pattern in &self.publish {
            let body = pattern.strip_suffix('*').unwrap_or(pattern);
            if body.contains('*') {
                return Err((
                    "publish".into(),
                    format!("{pattern:?} has a `*` before its end; only a trailing `*` matches"),
                ));
            }
            if pattern.is_empty() || pattern.chars().any(char::is_control) {
                return Err(("publish".into(), format!("{pattern:?} is not a destination pattern")));
            }
        }
        for prefix in &self.search_prefixes {
            // What Elasticsearch and OpenSearch allow in an index name, and so
            // what a prefix of one may hold.
            let bad = prefix.chars().find(|c| {
                c.is_ascii_uppercase() || c.is_whitespace() || r#"\/*?"<>|,#:"#.contains(*c) || c.is_control()
            });
            if let Some(c) = bad {
                return Err(("search_prefixes".into(), format!("{prefix:?} holds {c:?}, which no index name can")));
            }
            if prefix.starts_with(['-', '_', '+']) || prefix == "." || prefix == ".." || prefix.len() > 255 {
                return Err(("search_prefixes".into(), format!("no index name can start with {prefix:?}")));
            }
        }
        for entry in &self.allowed_hosts {
            HostPattern::parse(entry).map_err(|e| ("allowed_hosts".to_string(), e))?;
        }
        for prefix in &self.cache_prefixes {
            if prefix.chars().any(char::is_control) {
                return Err(("cache_prefixes".into(), format!("{prefix:?} holds a control character")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_match_scheme_host_and_port() {
        let exact = HostPattern::parse("https://API.mail.example").unwrap();
        assert!(exact.matches("https", "api.mail.example", 443));
        assert!(!exact.matches("http", "api.mail.example", 443), "another scheme");
        assert!(!exact.matches("https", "api.mail.example", 8443), "another port");
        assert!(!exact.matches("https", "evil.api.mail.example", 443), "a subdomain is another host");

        let sub = HostPattern::parse("https://*.example.com:*").unwrap();
        assert!(sub.matches("https", "a.b.example.com", 9000));
        assert!(!sub.matches("https", "example.com", 443), "`*.` needs a subdomain");
        assert!(!sub.matches("https", "badexample.com", 443));

        let v6 = HostPattern::parse("http://[::1]:8080").unwrap();
        assert!(v6.matches("http", "[::1]", 8080));
        assert_eq!(HostPattern::parse("http://[::1]").unwrap().port, Some(80));
        assert!(HostPattern::parse("http://*:*").unwrap().matches("http", "anything", 1));
    }

    #[test]
    fn malformed_host_patterns_are_refused_with_the_reason() {
        for (entry, reason) in [
            ("api.example", "has no scheme"),
            ("ftp://api.example", "the scheme must be http or https"),
            ("https://api.example/path", "names more than a host and port"),
            ("https://user@api.example", "names more than a host and port"),
            ("https://api.example:99999", "is not a port"),
            ("https://a*.example", "a host is a name"),
            ("https://*.", "`*.` must be followed by a domain"),
        ] {
            let err = HostPattern::parse(entry).unwrap_err();
            assert!(err.contains(reason), "{entry}: {err}");
        }
        let grants = Grants { allowed_hosts: vec!["api.example".into()], ..Grants::default() };
        assert_eq!(grants.validate().unwrap_err().0, "allowed_hosts");
    }
}
