//! Tenant logins. Each tenant's statements run on the database server as a
//! login of its own, which the host creates from the config and grants
//! exactly the tenant's tables, so the server itself holds the tenant to its
//! grant and the host's statement check is the second line, not the only
//! one. A login's name and password are derived, not stored: the name from
//! the tenant and the database, the password from a secret kept in a table
//! only the host's own login can read, so every host of a fleet derives the
//! same ones and none of them has to hand a password to another.
//!
//! The same secret keys the signature on every outbox row. A tenant may
//! write its own outbox table at the server (it must, to commit a message
//! atomically with its writes), but it cannot sign a row, and the relay
//! publishes only rows the host signed.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::contract::bindings::publish::Outgoing;

/// The table holding the secret logins and signatures are derived from.
pub const SECRET_TABLE: &str = "switchyard_login_secret";

/// The longest login name: MySQL's limit (PostgreSQL's is 63).
const MAX_LOGIN: usize = 32;

/// A tenant's login on one database.
#[derive(Debug, Clone)]
pub struct Login {
    /// Its name: the prefix, the tenant, and a digest of the database and
    /// the tenant, so two deployments on one server never share a login.
    pub name: String,
    /// Its password, derived from the secret.
    pub password: String,
    /// Its inbox table.
    pub inbox: String,
    /// Its outbox table.
    pub outbox: String,
}

impl Login {
    /// The login of `tenant` on `database`.
    pub fn new(prefix: &str, database: &str, tenant: &str, secret: &[u8]) -> Self {
        let name = login_name(prefix, database, tenant);
        let password = hex(&mac(secret, &[b"password", name.as_bytes()]));
        Self { inbox: format!("switchyard_inbox_{name}"), outbox: format!("switchyard_outbox_{name}"), password, name }
    }
}

/// The login name of `tenant` on `database`: `prefix`, the tenant folded to
/// `[a-z0-9_]`, and six hex digits of a digest of both names, at most 32
/// characters in all.
pub fn login_name(prefix: &str, database: &str, tenant: &str) -> String {
    let digest = Sha256::new().chain_update(database).chain_update([0]).chain_update(tenant).finalize();
    let suffix = format!("_{}", &hex(&digest)[..6]);
    let folded: String = tenant
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .take(MAX_LOGIN.saturating_sub(prefix.len() + suffix.len()))
        .collect();
    format!("{prefix}{folded}{suffix}")
}

/// The key that signs the rows of one outbox table.
pub fn outbox_key(secret: &[u8], outbox: &str) -> Vec<u8> {
    mac(secret, &[b"outbox", outbox.as_bytes()])
}

/// The signature of one outbox row: everything the relay will publish.
pub fn sign(key: &[u8], message_id: &str, message: &Outgoing, headers: &str) -> String {
    let payload = Sha256::digest(&message.payload);
    let key_field = message.key.as_deref().unwrap_or("\u{0}none");
    hex(&mac(
        key,
        &[message_id.as_bytes(), message.destination.as_bytes(), &payload, headers.as_bytes(), key_field.as_bytes()],
    ))
}

/// HMAC-SHA256 of `parts`, each length-prefixed so no two lists of parts
/// sign alike.
fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // Any key length is valid for HMAC.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return Vec::new() };
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// A fresh secret, as hex.
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_names_are_short_safe_and_apart() {
        let a = login_name("switchyard_", "shop", "acme");
        assert!(a.starts_with("switchyard_acme_") && a.len() == "switchyard_acme_".len() + 6, "{a}");
        assert_ne!(a, login_name("switchyard_", "other", "acme"), "the database is part of the name");
        let long = login_name("switchyard_", "shop", "A-Very-Long-Tenant-Name-Indeed-With-Dashes");
        assert!(long.len() <= 32, "{long}");
        assert!(long.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{long}");
        assert_ne!(long, login_name("switchyard_", "shop", "A-Very-Long-Tenant-Name-Indeed-With-Dashes-2"));
    }

    #[test]
    fn passwords_and_signatures_depend_on_the_secret() {
        let one = Login::new("sy_", "db", "t", b"one");
        let two = Login::new("sy_", "db", "t", b"two");
        assert_eq!(one.name, two.name);
        assert_ne!(one.password, two.password);
        assert_eq!(one.password.len(), 64);
        let message = Outgoing { destination: "d".into(), payload: b"p".to_vec(), headers: Vec::new(), key: None };
        let key = outbox_key(b"one", &one.outbox);
        let signature = sign(&key, "m#0", &message, "[]");
        assert_eq!(signature, sign(&key, "m#0", &message, "[]"));
        let elsewhere = Outgoing { destination: "e".into(), ..message.clone() };
        assert_ne!(signature, sign(&key, "m#0", &elsewhere, "[]"), "the destination is signed");
        assert_ne!(signature, sign(&outbox_key(b"two", &one.outbox), "m#0", &message, "[]"));
    }
}
