//! The database scenario's handler: Kafka to MySQL/MariaDB.
//!
//! - **`db_insert`**, the integration guide's topic: CSV lines such as
//!   `user1,25,New York`, each inserted into `users (name, age, city)`. The
//!   host group-commits the inserts of messages handled at the same time, so
//!   they reach the database in batches, not one commit a row. Each row keeps
//!   its message id (`event_id`), so a redelivered record is not inserted
//!   twice.
//! - **`db_sync`**: change events from a source table, `{"op": "upsert",
//!   "id": 7, "version": 3, "name": ..., "age": ..., "city": ...}` or
//!   `{"op": "delete", "id": 7, "version": 4}`, applied to `users_replica`.
//!   An event applies only when its version is newer than the row's, and a
//!   delete keeps the row as a tombstone (`deleted = 1`) with its version, so
//!   replaying the topic, in whole or in part, leaves the replica as it was.

use serde_json::Value;
use switchyard_sdk::db::{self, Value as Sql};
use switchyard_sdk::{CapabilityError, Handler, HandlerError, Message, reject};

struct RowSync;

impl Handler for RowSync {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        // A change event is a JSON object; a CSV record never starts with `{`.
        if msg.payload.first() == Some(&b'{') { sync(&msg) } else { insert(&msg) }
    }
}

/// One CSV line into `users`, once.
fn insert(msg: &Message) -> Result<(), HandlerError> {
    let line = msg.text()?.trim_end_matches(['\r', '\n']);
    let fields = csv(line).ok_or_else(|| reject(format!("malformed record: {line:?} is not CSV")))?;
    let [name, age, city] = fields.as_slice() else {
        return Err(reject(format!("malformed record: {} fields, not name,age,city", fields.len())));
    };
    let age: i64 = age.trim().parse().map_err(|_| reject(format!("malformed record: age {age:?} is not a number")))?;
    let inserted = || -> Result<bool, HandlerError> {
        let seen = db::query("SELECT 1 FROM users WHERE event_id = ?", &[Sql::Text(msg.id.clone())])?;
        Ok(!seen.rows.is_empty())
    };
    if inserted()? {
        return Ok(()); // a redelivery of a record already inserted
    }
    match db::execute(
        "INSERT INTO users (event_id, name, age, city) VALUES (?, ?, ?, ?)",
        &[Sql::Text(msg.id.clone()), Sql::Text(name.clone()), Sql::Int(age), Sql::Text(city.clone())],
    ) {
        Ok(_) => Ok(()),
        // Another delivery of the same record, running at the same time, won.
        Err(CapabilityError::Invalid(_)) if inserted()? => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// One change event onto `users_replica`, if it is newer than the row.
fn sync(msg: &Message) -> Result<(), HandlerError> {
    let change: Value = msg.json_of("change event")?;
    let id = change["id"].as_i64().ok_or_else(|| reject("malformed change event: id must be a number"))?;
    let version = change["version"].as_i64().ok_or_else(|| reject("malformed change event: version must be a number"))?;
    let (deleted, name, age, city) = match change["op"].as_str() {
        Some("upsert") => (
            0,
            Sql::Text(change["name"].as_str().ok_or_else(|| reject("malformed change event: name"))?.to_string()),
            Sql::Int(change["age"].as_i64().ok_or_else(|| reject("malformed change event: age"))?),
            Sql::Text(change["city"].as_str().ok_or_else(|| reject("malformed change event: city"))?.to_string()),
        ),
        Some("delete") => (1, Sql::Null, Sql::Null, Sql::Null),
        _ => return Err(reject("malformed change event: op must be upsert or delete")),
    };
    // A delete keeps the last values: only the tombstone flag and version change.
    let updated = if deleted == 1 {
        db::execute(
            "UPDATE users_replica SET deleted = 1, version = ? WHERE id = ? AND version < ?",
            &[Sql::Int(version), Sql::Int(id), Sql::Int(version)],
        )?
    } else {
        db::execute(
            "UPDATE users_replica SET name = ?, age = ?, city = ?, deleted = 0, version = ? WHERE id = ? AND version < ?",
            &[name.clone(), age.clone(), city.clone(), Sql::Int(version), Sql::Int(id), Sql::Int(version)],
        )?
    };
    if updated > 0 {
        return Ok(());
    }
    let held = db::query("SELECT version FROM users_replica WHERE id = ?", &[Sql::Int(id)])?;
    if !held.rows.is_empty() {
        return Ok(()); // as new or newer already: a replay or a late event
    }
    db::execute(
        "INSERT INTO users_replica (id, name, age, city, version, deleted) VALUES (?, ?, ?, ?, ?, ?)",
        &[Sql::Int(id), name, age, city, Sql::Int(version), Sql::Int(deleted)],
    )?;
    Ok(())
}

/// The fields of one CSV line (RFC 4180 quoting), or `None` if a quote is
/// left open.
fn csv(line: &str) -> Option<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut()?.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut()?.push(c),
        }
    }
    (!quoted).then_some(fields)
}

switchyard_sdk::export!(RowSync);
