//! The `search` capability: the host side of the WIT interface. Index names
//! are checked against the tenant's prefixes, and documents to be JSON
//! objects, before they reach the backend.

use crate::contract::bindings::search::{self, Hit};
use crate::contract::errors::CapabilityFailure;

use super::context::{CapabilityCtx, Effect, check_size, has_prefix};

/// The most hits one query may return.
const MAX_HITS: u32 = 1000;

impl CapabilityCtx {
    fn check_index(&self, index: &str) -> Result<(), CapabilityFailure> {
        let valid = !index.is_empty()
            && index.len() <= 128
            && index.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
            && !index.starts_with(['.', '-', '_']);
        if !valid {
            return Err(CapabilityFailure::Invalid(format!(
                "index name {index:?} must be 1 to 128 of a-z, 0-9, '-', '_', '.', not starting with a symbol"
            )));
        }
        if !has_prefix(&self.access.grants.search_prefixes, index) {
            return Err(CapabilityFailure::Denied(format!(
                "index {index:?} is outside the tenant's prefixes {:?}",
                self.access.grants.search_prefixes
            )));
        }
        Ok(())
    }

    /// Count `index` among the tenant's indexes, refusing one past its `max_indexes`.
    fn count_index(&self, index: &str) -> Result<(), CapabilityFailure> {
        let Ok(mut written) = self.access.indexes.lock() else { return Ok(()) };
        if written.contains(index) {
            return Ok(());
        }
        let max = self.access.output.max_indexes;
        if written.len() >= max {
            return Err(CapabilityFailure::TooLarge(format!(
                "the tenant already writes to {max} indexes, its max_indexes; {index:?} would be one more"
            )));
        }
        written.insert(index.to_string());
        Ok(())
    }
}

impl search::Host for CapabilityCtx {
    async fn index_document(&mut self, index: String, id: String, document: String) -> Result<(), CapabilityFailure> {
        self.check_index(&index)?;
        check_size("document", document.len())?;
        if id.is_empty() || id.len() > 512 {
            return Err(CapabilityFailure::Invalid(format!("document id must be 1 to 512 bytes, got {}", id.len())));
        }
        let document = match serde_json::from_str(&document) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => return Err(CapabilityFailure::Invalid(format!("document {id:?} is not a JSON object"))),
            Err(e) => return Err(CapabilityFailure::Invalid(format!("document {id:?} is not JSON: {e}"))),
        };
        self.count_index(&index)?;
        self.record(|| Effect::SearchIndex { index: index.clone(), id: id.clone() });
        Ok(self.access.backends.search.index(&index, &id, document).await?)
    }

    async fn delete_document(&mut self, index: String, id: String) -> Result<(), CapabilityFailure> {
        self.check_index(&index)?;
        self.record(|| Effect::SearchDelete { index: index.clone(), id: id.clone() });
        Ok(self.access.backends.search.delete(&index, &id).await?)
    }

    async fn query(&mut self, index: String, query: String, limit: u32) -> Result<Vec<Hit>, CapabilityFailure> {
        self.check_index(&index)?;
        check_size("query", query.len())?;
        Ok(self.access.backends.search.query(&index, &query, limit.min(MAX_HITS) as usize).await?)
    }
}
