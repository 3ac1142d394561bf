//! The embedded search backend: Tantivy indexes on disk, one directory per
//! index, created on first use.
//!
//! Each document keeps its JSON source (returned in hits) and indexes every
//! field for full-text search; `name:widget` searches one field, a bare term
//! searches all of them. Writes from handlers running at the same time are
//! group-committed: one commit per index per batch, after which the batch is
//! durable and visible to queries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, JsonObjectOptions, STORED, STRING, Schema, TEXT, Value as _};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use super::batch::Batcher;
use crate::contract::bindings::search::Hit;
use crate::contract::errors::BackendError;
use crate::contract::search::SearchBackend;

/// Memory for each index writer's buffer.
const WRITER_BYTES: usize = 32 << 20;

/// Index writers kept open between batches. Each holds threads (its indexer
/// and its segment updater and merger pools) and files, so a tenant writing
/// to many indexes must not hold them all: past this, the writers least
/// recently written are closed after each batch, and opened again on use.
const OPEN_WRITERS: usize = 8;

enum Op {
    Index { index: String, id: String, document: serde_json::Map<String, serde_json::Value> },
    Delete { index: String, id: String },
}

impl Op {
    fn index(&self) -> &str {
        match self {
            Op::Index { index, .. } | Op::Delete { index, .. } => index,
        }
    }
}

struct Fields {
    id: Field,
    source: Field,
    /// Every string and number in the document, for bare terms.
    all: Field,
    /// The document as a JSON field, for `field:term`.
    body: Field,
}

struct OpenIndex {
    index: Index,
    reader: IndexReader,
    /// Open while the index is written to; see [`OPEN_WRITERS`].
    writer: Mutex<Option<IndexWriter>>,
    /// The batch that last wrote to it.
    last_batch: std::sync::atomic::AtomicU64,
    fields: Fields,
}

impl OpenIndex {
    /// Run `f` on the index's writer, opening it if it was closed.
    fn with_writer<T>(&self, f: impl FnOnce(&mut IndexWriter) -> Result<T, BackendError>) -> Result<T, BackendError> {
        let mut writer =
            self.writer.lock().map_err(|_| BackendError::Unavailable("tantivy writer lock poisoned".into()))?;
        if writer.is_none() {
            let opened = self
                .index
                .writer_with_num_threads(1, WRITER_BYTES)
                .map_err(|e| BackendError::Unavailable(format!("tantivy writer: {e}")))?;
            *writer = Some(opened);
        }
        match writer.as_mut() {
            Some(writer) => f(writer),
            None => Err(BackendError::Unavailable("tantivy writer missing".into())),
        }
    }
}

struct Indexes {
    root: PathBuf,
    open: Mutex<HashMap<String, Arc<OpenIndex>>>,
    /// Batches applied, for choosing which writers to close.
    batches: std::sync::atomic::AtomicU64,
}

impl Indexes {
    /// Close the writers past [`OPEN_WRITERS`], least recently written first.
    fn close_idle_writers(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let Ok(open) = self.open.lock() else { return };
        let mut writing: Vec<&Arc<OpenIndex>> =
            open.values().filter(|i| i.writer.lock().map(|w| w.is_some()).unwrap_or(false)).collect();
        if writing.len() <= OPEN_WRITERS {
            return;
        }
        writing.sort_by_key(|i| std::cmp::Reverse(i.last_batch.load(Relaxed)));
        for index in &writing[OPEN_WRITERS..] {
            if let Ok(mut writer) = index.writer.lock()
                && let Some(writer) = writer.take()
            {
                // Everything it held was committed with its batch.
                let _ = writer.wait_merging_threads();
            }
        }
    }

    /// The index `name`, opened on first use; created if `create`, else
    /// `None` when it does not exist.
    fn get(&self, name: &str, create: bool) -> Result<Option<Arc<OpenIndex>>, BackendError> {
        let mut open = self.open.lock().map_err(|_| BackendError::Unavailable("tantivy lock poisoned".into()))?;
        if let Some(index) = open.get(name) {
            return Ok(Some(index.clone()));
        }
        let dir = self.root.join(name);
        if !create && !dir.join("meta.json").exists() {
            return Ok(None);
        }
        let index = Arc::new(open_index(&dir)?);
        open.insert(name.to_string(), index.clone());
        Ok(Some(index))
    }
}

fn open_index(dir: &Path) -> Result<OpenIndex, BackendError> {
    let unavailable =
        |e: tantivy::TantivyError| BackendError::Unavailable(format!("tantivy index {}: {e}", dir.display()));
    std::fs::create_dir_all(dir)
        .map_err(|e| BackendError::Unavailable(format!("cannot create index directory {}: {e}", dir.display())))?;
    let mut schema = Schema::builder();
    schema.add_text_field("id", STRING | STORED);
    schema.add_text_field("_source", STORED);
    schema.add_text_field("_all", TEXT);
    schema.add_json_field("body", JsonObjectOptions::from(TEXT));
    let schema = schema.build();
    let directory =
        tantivy::directory::MmapDirectory::open(dir).map_err(|e| BackendError::Unavailable(e.to_string()))?;
    let index = Index::open_or_create(directory, schema).map_err(unavailable)?;
    let schema = index.schema();
    let field = |name: &str| schema.get_field(name).map_err(unavailable);
    let fields = Fields { id: field("id")?, source: field("_source")?, all: field("_all")?, body: field("body")? };
    let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into().map_err(unavailable)?;
    Ok(OpenIndex { index, reader, writer: Mutex::new(None), last_batch: Default::default(), fields })
}

/// The `tantivy` search backend.
pub struct TantivySearch {
    indexes: Arc<Indexes>,
    writer: Batcher<Op, ()>,
}

impl TantivySearch {
    /// The config `type` that selects it.
    pub const TYPE: &'static str = "tantivy";

    /// Use `root` as the directory holding one sub-directory per index.
    pub fn open(root: &Path) -> Result<Self, BackendError> {
        std::fs::create_dir_all(root).map_err(|e| {
            BackendError::Unavailable(format!("cannot create search directory {}: {e}", root.display()))
        })?;
        let indexes = Arc::new(Indexes {
            root: root.to_path_buf(),
            open: Mutex::new(HashMap::new()),
            batches: Default::default(),
        });
        let shared = indexes.clone();
        let writer = Batcher::spawn("tantivy writer", 1024, move |batch| {
            let indexes = shared.clone();
            async move {
                let count = batch.len();
                tokio::task::spawn_blocking(move || apply(&indexes, batch)).await.unwrap_or_else(|e| {
                    vec![Err(BackendError::Unavailable(format!("tantivy writer failed: {e}"))); count]
                })
            }
        });
        Ok(Self { indexes, writer })
    }
}

/// Apply a batch: every operation, then one commit per index touched.
fn apply(indexes: &Indexes, batch: Vec<Op>) -> Vec<Result<(), BackendError>> {
    let batch_number = indexes.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let mut results: Vec<Result<(), BackendError>> = Vec::with_capacity(batch.len());
    let mut touched: HashMap<String, (Arc<OpenIndex>, Vec<usize>)> = HashMap::new();
    for (i, op) in batch.into_iter().enumerate() {
        let name = op.index().to_string();
        let index = match indexes
            .get(&name, true)
            .and_then(|i| i.ok_or_else(|| BackendError::Unavailable(format!("index {name} could not be created"))))
        {
            Ok(index) => index,
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };
        index.last_batch.store(batch_number, std::sync::atomic::Ordering::Relaxed);
        let result = index.with_writer(|writer| {
            let f = &index.fields;
            match op {
                Op::Delete { id, .. } => {
                    writer.delete_term(Term::from_field_text(f.id, &id));
                    Ok(())
                }
                Op::Index { id, document, .. } => {
                    writer.delete_term(Term::from_field_text(f.id, &id));
                    let mut doc = TantivyDocument::default();
                    doc.add_text(f.id, &id);
                    doc.add_text(f.source, serde_json::Value::Object(document.clone()).to_string());
                    let mut all = String::new();
                    collect_text(&serde_json::Value::Object(document.clone()), &mut all);
                    doc.add_text(f.all, all);
                    doc.add_field_value(f.body, &tantivy::schema::OwnedValue::from(document));
                    writer
                        .add_document(doc)
                        .map(|_| ())
                        .map_err(|e| BackendError::Invalid(format!("document {id:?}: {e}")))
                }
            }
        });
        if result.is_ok() {
            touched.entry(name).or_insert_with(|| (index.clone(), Vec::new())).1.push(i);
        }
        results.push(result);
    }
    for (name, (index, ops)) in touched {
        let committed = index
            .with_writer(|w| {
                w.commit().map_err(|e| BackendError::Unavailable(format!("tantivy commit of {name}: {e}")))
            })
            .and_then(|_| {
                index.reader.reload().map_err(|e| BackendError::Unavailable(format!("tantivy reload of {name}: {e}")))
            });
        if let Err(e) = committed {
            for i in ops {
                results[i] = Err(e.clone());
            }
        }
    }
    indexes.close_idle_writers();
    results
}

/// Append every string and number in `value` to `out`, space-separated.
fn collect_text(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::String(s) => {
            out.push_str(s);
            out.push(' ');
        }
        serde_json::Value::Number(n) => {
            out.push_str(&n.to_string());
            out.push(' ');
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_text(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| collect_text(v, out)),
        serde_json::Value::Bool(_) | serde_json::Value::Null => {}
    }
}

#[async_trait]
impl SearchBackend for TantivySearch {
    async fn index(
        &self,
        index: &str,
        id: &str,
        document: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), BackendError> {
        self.writer.call(Op::Index { index: index.into(), id: id.into(), document }).await
    }

    async fn delete(&self, index: &str, id: &str) -> Result<(), BackendError> {
        self.writer.call(Op::Delete { index: index.into(), id: id.into() }).await
    }

    async fn query(&self, index: &str, query: &str, limit: usize) -> Result<Vec<Hit>, BackendError> {
        let Some(open) = self.indexes.get(index, false)? else {
            return Ok(Vec::new());
        };
        let query = query.to_string();
        let index = index.to_string();
        tokio::task::spawn_blocking(move || search(&open, &index, &query, limit))
            .await
            .map_err(|e| BackendError::Unavailable(format!("tantivy search failed: {e}")))?
    }
}

fn search(open: &OpenIndex, index: &str, query: &str, limit: usize) -> Result<Vec<Hit>, BackendError> {
    let parser = QueryParser::for_index(&open.index, vec![open.fields.all, open.fields.body]);
    let parsed = parser
        .parse_query(query)
        .map_err(|e| BackendError::Invalid(format!("query {query:?} on index {index}: {e}")))?;
    let searcher = open.reader.searcher();
    let top = searcher
        .search(&parsed, &TopDocs::with_limit(limit.max(1)))
        .map_err(|e| BackendError::Unavailable(format!("search of {index}: {e}")))?;
    top.into_iter()
        .map(|(score, address)| {
            let doc: TantivyDocument = searcher
                .doc(address)
                .map_err(|e| BackendError::Unavailable(format!("reading hit from {index}: {e}")))?;
            let text = |f: Field| doc.get_first(f).and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            Ok(Hit { id: text(open.fields.id), score, document: text(open.fields.source) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[tokio::test]
    async fn index_query_replace_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let search = TantivySearch::open(dir.path()).unwrap();
        search.index("products", "p1", obj(json!({"name": "red widget", "price": 3}))).await.unwrap();
        search.index("products", "p2", obj(json!({"name": "blue gadget"}))).await.unwrap();

        let hits = search.query("products", "widget", 10).await.unwrap();
        assert_eq!(hits.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["p1"]);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&hits[0].document).unwrap()["price"], 3);
        assert_eq!(search.query("products", "name:gadget", 10).await.unwrap()[0].id, "p2");

        // Replacing a document keeps one copy.
        search.index("products", "p1", obj(json!({"name": "green widget"}))).await.unwrap();
        let hits = search.query("products", "widget", 10).await.unwrap();
        assert_eq!(hits.len(), 1);
        assert!(hits[0].document.contains("green"));

        search.delete("products", "p2").await.unwrap();
        assert!(search.query("products", "gadget", 10).await.unwrap().is_empty());
        assert!(search.query("missing", "x", 10).await.unwrap().is_empty());
        assert!(matches!(search.query("products", "name:(", 10).await, Err(BackendError::Invalid(_))));
        drop(search);
        // The writer task lets go of the index lock once it sees its channel close.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;

        // The index is on disk: a new backend over the same directory finds it.
        let reopened = TantivySearch::open(dir.path()).unwrap();
        assert_eq!(reopened.query("products", "widget", 10).await.unwrap()[0].id, "p1");
    }
}
