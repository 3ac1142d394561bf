//! The search scenario's handler: RabbitMQ to Elasticsearch (or Tantivy).
//!
//! An article is the integration guide's message, `{"title": "New Article",
//! "content": "..."}`, indexed into `articles`. Its document id is its `id`
//! field when it has one, else its title, so sending an article again with
//! the same title updates it instead of adding a copy. `{"id": ...,
//! "deleted": true}` (or a title) removes it. Other fields are indexed too.
//!
//! A reindex job is the same messages, many at once: the host sends the
//! index calls of messages handled at the same time to Elasticsearch as one
//! `_bulk` request, and several hosts on the queue share the job.

use serde_json::Value;
use switchyard_sdk::{Handler, HandlerError, Message, reject, search};

const INDEX: &str = "articles";

struct ArticleIndex;

impl Handler for ArticleIndex {
    fn handle(msg: Message) -> Result<(), HandlerError> {
        let Value::Object(mut article) = msg.json_of::<Value>("article")? else {
            return Err(reject("malformed article: not a JSON object"));
        };
        let id = match (article.get("id"), article.get("title")) {
            (Some(Value::String(id)), _) if !id.is_empty() => id.clone(),
            (Some(Value::Number(n)), _) => n.to_string(),
            (None, Some(Value::String(title))) if !title.is_empty() => title.clone(),
            _ => return Err(reject("malformed article: it needs an id or a title")),
        };
        if id.len() > 512 {
            return Err(reject("malformed article: its id (or title) is over 512 bytes"));
        }
        match article.remove("deleted") {
            Some(Value::Bool(true)) => {
                search::delete_document(INDEX, &id)?;
                return Ok(());
            }
            None | Some(Value::Bool(false)) => {}
            Some(_) => return Err(reject("malformed article: deleted must be true or false")),
        }
        if !matches!(article.get("content"), Some(Value::String(_))) {
            return Err(reject("malformed article: content must be a string"));
        }
        let document = serde_json::to_string(&article).map_err(|e| reject(format!("cannot encode the article: {e}")))?;
        search::index_document(INDEX, &id, &document)?;
        Ok(())
    }
}

switchyard_sdk::export!(ArticleIndex);
