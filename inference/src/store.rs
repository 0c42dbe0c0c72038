//! Stored responses (SQLite), for `previous_response_id` and
//! `GET /v1/responses/{id}`.
//!
//! Each row keeps only its own request's input items and its output items
//! plus the id it continued from; a conversation is rebuilt by walking that
//! chain, so a long session costs linear, not quadratic, space. Rows belong
//! to the client (API key) that created them: one VM can never continue or
//! read another VM's conversation.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

/// The newest schema this code knows.
const SCHEMA_VERSION: i64 = 1;
/// Longest `previous_response_id` chain followed (a guard against cycles
/// and runaway sessions).
const MAX_CHAIN: usize = 100_000;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("response store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("response store {path} has schema version {found}, newer than this clawpen knows ({SCHEMA_VERSION}); refusing to touch it")]
    NewerSchema { path: String, found: i64 },
    #[error("stored response {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("response store task failed: {0}")]
    Task(String),
}

/// One stored response.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub id: String,
    pub client: String,
    pub previous_response_id: Option<String>,
    pub created_at: u64,
    /// This request's own input items (Responses item JSON).
    pub input: Vec<Value>,
    /// The output items.
    pub output: Vec<Value>,
    /// The whole response object, as answered.
    pub response: Value,
}

/// See the module documentation. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ResponseStore {
    conn: Arc<Mutex<Connection>>,
    label: Arc<str>,
    /// Responses older than this are deleted (as OpenAI keeps them 30 days),
    /// so a long-running service does not grow without bound.
    retention: std::time::Duration,
}

impl ResponseStore {
    /// Opens (creating) the store at `path`, or an in-memory one for
    /// `None`, keeping responses for `retention`.
    pub fn open(path: Option<&Path>, retention: std::time::Duration) -> Result<Self, StoreError> {
        let label: Arc<str> = path
            .map_or_else(|| PathBuf::from(":memory:"), Path::to_path_buf)
            .display()
            .to_string()
            .into();
        let err = |source| StoreError::Sqlite {
            path: label.to_string(),
            source,
        };
        let conn = match path {
            Some(p) => Connection::open(p).map_err(err)?,
            None => Connection::open_in_memory().map_err(err)?,
        };
        if path.is_some() {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(err)?;
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(err)?;
        }
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: label.to_string(),
                found: version,
            });
        }
        if version < 1 {
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS responses (
                    id TEXT PRIMARY KEY,
                    client TEXT NOT NULL,
                    previous_response_id TEXT,
                    created_at INTEGER NOT NULL,
                    input TEXT NOT NULL,
                    output TEXT NOT NULL,
                    response TEXT NOT NULL
                 );
                 PRAGMA user_version = 1;",
            )
            .map_err(err)?;
        }
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);",
        )
        .map_err(err)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            label,
            retention,
        })
    }

    /// Saves `r` (replacing a row with its id) and deletes expired rows.
    pub async fn put(&self, r: StoredResponse) -> Result<(), StoreError> {
        let cutoff = r.created_at.saturating_sub(self.retention.as_secs());
        self.blocking(move |conn, label| {
            let sql_err = |source| StoreError::Sqlite {
                path: label.to_owned(),
                source,
            };
            conn.execute(
                "DELETE FROM responses WHERE created_at < ?1",
                params![i64::try_from(cutoff).unwrap_or(i64::MAX)],
            )
            .map_err(sql_err)?;
            conn.execute(
                "INSERT OR REPLACE INTO responses
                 (id, client, previous_response_id, created_at, input, output, response)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    r.id,
                    r.client,
                    r.previous_response_id,
                    i64::try_from(r.created_at).unwrap_or(i64::MAX),
                    Value::Array(r.input).to_string(),
                    Value::Array(r.output).to_string(),
                    r.response.to_string(),
                ],
            )
            .map_err(sql_err)?;
            Ok(())
        })
        .await
    }

    /// The response `id` of `client`, if it exists.
    pub async fn get(&self, client: &str, id: &str) -> Result<Option<StoredResponse>, StoreError> {
        let (client, id) = (client.to_owned(), id.to_owned());
        self.blocking(move |conn, label| get_row(conn, label, &client, &id))
            .await
    }

    /// The conversation up to and including response `id`: every input
    /// and output item of the chain, oldest first. `None` when `id` (or a
    /// response it continues) is not stored for `client`.
    pub async fn conversation(
        &self,
        client: &str,
        id: &str,
    ) -> Result<Option<Vec<Value>>, StoreError> {
        let (client, id) = (client.to_owned(), id.to_owned());
        self.blocking(move |conn, label| {
            let mut chain = Vec::new();
            let mut next = Some(id);
            while let Some(id) = next.take() {
                if chain.len() >= MAX_CHAIN {
                    return Err(StoreError::Corrupt {
                        id,
                        reason: format!("previous_response_id chain longer than {MAX_CHAIN}"),
                    });
                }
                let Some(row) = get_row(conn, label, &client, &id)? else {
                    return Ok(None);
                };
                next = row.previous_response_id.clone();
                chain.push(row);
            }
            let items = chain
                .into_iter()
                .rev()
                .flat_map(|r| r.input.into_iter().chain(r.output))
                .collect();
            Ok(Some(items))
        })
        .await
    }

    /// The stored item `id` of `client` (an input or output item of any of
    /// its responses, newest first), for an `item_reference`.
    pub async fn item(&self, client: &str, id: &str) -> Result<Option<Value>, StoreError> {
        // Items are stored as compact JSON, so an item with this id holds
        // this text; rows are narrowed by it and the items then compared.
        let needle = format!("\"id\":{}", Value::from(id));
        let (client, id) = (client.to_owned(), id.to_owned());
        self.blocking(move |conn, label| {
            let sql_err = |source| StoreError::Sqlite {
                path: label.to_owned(),
                source,
            };
            let mut stmt = conn
                .prepare(
                    "SELECT id, input, output FROM responses
                     WHERE client = ?1 AND (instr(output, ?2) > 0 OR instr(input, ?2) > 0)
                     ORDER BY created_at DESC LIMIT 16",
                )
                .map_err(sql_err)?;
            let rows = stmt
                .query_map(params![client, needle], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .map_err(sql_err)?;
            for row in rows {
                let (response, input, output) = row.map_err(sql_err)?;
                for text in [output, input] {
                    let items: Vec<Value> =
                        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                            id: response.clone(),
                            reason: e.to_string(),
                        })?;
                    if let Some(item) = items.into_iter().find(|i| i["id"] == id.as_str()) {
                        return Ok(Some(item));
                    }
                }
            }
            Ok(None)
        })
        .await
    }

    /// Deletes response `id` of `client`; whether it existed.
    pub async fn delete(&self, client: &str, id: &str) -> Result<bool, StoreError> {
        let (client, id) = (client.to_owned(), id.to_owned());
        self.blocking(move |conn, label| {
            conn.execute(
                "DELETE FROM responses WHERE id = ?1 AND client = ?2",
                params![id, client],
            )
            .map(|n| n > 0)
            .map_err(|source| StoreError::Sqlite {
                path: label.to_owned(),
                source,
            })
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        let label = Arc::clone(&self.label);
        tokio::task::spawn_blocking(move || {
            let conn = conn
                .lock()
                .map_err(|_| StoreError::Task("store lock poisoned".into()))?;
            f(&conn, &label)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

fn get_row(
    conn: &Connection,
    label: &str,
    client: &str,
    id: &str,
) -> Result<Option<StoredResponse>, StoreError> {
    let row = conn
        .query_row(
            "SELECT previous_response_id, created_at, input, output, response
             FROM responses WHERE id = ?1 AND client = ?2",
            params![id, client],
            |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            },
        )
        .optional()
        .map_err(|source| StoreError::Sqlite {
            path: label.to_owned(),
            source,
        })?;
    let Some((previous, created_at, input, output, response)) = row else {
        return Ok(None);
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        id: id.to_owned(),
        reason,
    };
    let items = |text: &str| -> Result<Vec<Value>, StoreError> {
        serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))
    };
    Ok(Some(StoredResponse {
        id: id.to_owned(),
        client: client.to_owned(),
        previous_response_id: previous,
        created_at: u64::try_from(created_at).unwrap_or(0),
        input: items(&input)?,
        output: items(&output)?,
        response: serde_json::from_str(&response).map_err(|e| corrupt(e.to_string()))?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

    fn row(id: &str, client: &str, prev: Option<&str>, n: i64) -> StoredResponse {
        StoredResponse {
            id: id.into(),
            client: client.into(),
            previous_response_id: prev.map(Into::into),
            created_at: 1_000_000,
            input: vec![json!({"in": n})],
            output: vec![json!({"out": n})],
            response: json!({"id": id}),
        }
    }

    #[tokio::test]
    async fn chains_rebuild_in_order_and_clients_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let s = ResponseStore::open(Some(&path), DAY).unwrap();
        s.put(row("r1", "a", None, 1)).await.unwrap();
        s.put(row("r2", "a", Some("r1"), 2)).await.unwrap();
        s.put(row("r3", "b", Some("r2"), 3)).await.unwrap();
        drop(s);
        let s = ResponseStore::open(Some(&path), DAY).unwrap();
        assert_eq!(
            s.conversation("a", "r2").await.unwrap().unwrap(),
            vec![
                json!({"in":1}),
                json!({"out":1}),
                json!({"in":2}),
                json!({"out":2})
            ]
        );
        assert_eq!(s.conversation("b", "r2").await.unwrap(), None);
        assert_eq!(s.conversation("b", "r3").await.unwrap(), None);
        assert!(s.get("a", "r1").await.unwrap().is_some());
        assert!(s.get("b", "r1").await.unwrap().is_none());
        assert!(!s.delete("b", "r1").await.unwrap());
        assert!(s.delete("a", "r1").await.unwrap());
        assert_eq!(s.conversation("a", "r2").await.unwrap(), None);

        // A day later, the old rows expire.
        let mut late = row("r9", "a", None, 9);
        late.created_at += DAY.as_secs() + 1;
        s.put(late).await.unwrap();
        assert!(s.get("a", "r2").await.unwrap().is_none());
        assert!(s.get("a", "r9").await.unwrap().is_some());
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 9)
            .unwrap();
        assert!(matches!(
            ResponseStore::open(Some(&path), DAY),
            Err(StoreError::NewerSchema { found: 9, .. })
        ));
    }
}
