//! Lifecycle events on the SQL store: an event's effect ([`Op`]s), the record that it was
//! taken and the newest-event marks of its subjects are written in one transaction, so an
//! event applies whole or not at all, once.

use portcullis_model::events::{DeadLetter, EventOutcome, EventRecord, StreamEntry};
use portcullis_model::{ChangeKind, EntityRef, ModelError, Scope};
use sqlx::{AnyConnection, Row};

use super::{
    SqlStore, UPSERT_ENTITY, UPSERT_PRINCIPAL, bump, check_assignment_refs, delete_principal_rows,
    docs, from_doc, insert_assignment, now_millis, principal_doc, to_doc, upsert,
    upsert_revoked_session,
};
use crate::{EVENT_STREAM_KEPT, Op, StoreError};

impl SqlStore {
    /// See [`crate::Store::take_event`].
    pub(crate) async fn take_event_in_tx(
        &self,
        event: &EventRecord,
        ops: &[Op],
    ) -> Result<EventOutcome, StoreError> {
        let mut tx = self.write_tx().await?;
        let taken = sqlx::query("SELECT outcome FROM events_taken WHERE event_id = $1")
            .bind(event.id.clone())
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Ok(EventOutcome::Duplicate);
        }
        let mut stale = false;
        for subject in &event.subjects {
            let newest: Option<i64> =
                sqlx::query("SELECT occurred_at FROM event_subjects WHERE subject = $1")
                    .bind(subject.clone())
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get("occurred_at"))
                    .transpose()?;
            stale |= newest.is_some_and(|newest| newest > event.occurred_at);
        }
        let outcome = if stale {
            EventOutcome::Stale
        } else if ops.is_empty() {
            EventOutcome::Acknowledged
        } else {
            let mut changes = Vec::with_capacity(ops.len());
            for op in ops {
                changes.extend(apply(&mut tx, op).await?);
            }
            for subject in &event.subjects {
                sqlx::query(
                    "INSERT INTO event_subjects (subject, occurred_at, event_id) VALUES ($1, $2, $3) \
                     ON CONFLICT (subject) DO UPDATE SET occurred_at = excluded.occurred_at, \
                     event_id = excluded.event_id",
                )
                .bind(subject.clone())
                .bind(event.occurred_at)
                .bind(event.id.clone())
                .execute(&mut *tx)
                .await?;
            }
            let revision = bump(&mut tx, &changes).await?;
            let outcome = EventOutcome::Applied { revision };
            record_taken(&mut tx, event, outcome).await?;
            self.finish(tx, revision).await?;
            return Ok(outcome);
        };
        record_taken(&mut tx, event, outcome).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// See [`crate::Store::add_dead_letter`]: under the write lock, as its stream entry
    /// takes the next number.
    pub(crate) async fn add_dead_letter_row(&self, letter: &DeadLetter) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO dead_letters (id, event_id, source, received_at, reason, body, replayed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(letter.id.clone())
        .bind(letter.event_id.clone())
        .bind(letter.source.clone())
        .bind(letter.received_at)
        .bind(letter.reason.clone())
        .bind(letter.body.clone())
        .bind(letter.replayed_at)
        .execute(&mut *tx)
        .await?;
        let (name, data) = StreamEntry::dead_letter(letter);
        append_to_stream(&mut tx, &name, &data).await?;
        tx.commit().await?;
        Ok(())
    }

    /// See [`crate::Store::event_stream`].
    pub(crate) async fn event_stream_rows(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, name, data FROM event_stream WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(StreamEntry {
                    seq: row.try_get("seq")?,
                    name: row.try_get("name")?,
                    data: row.try_get("data")?,
                })
            })
            .collect()
    }

    /// See [`crate::Store::dead_letters`].
    pub(crate) async fn dead_letter_rows(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_DEAD_LETTERS} WHERE $1 IS NULL OR id > $1 ORDER BY id LIMIT $2"
        )))
        .bind(after.map(str::to_owned))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(dead_letter).collect()
    }

    /// See [`crate::Store::dead_letter`].
    pub(crate) async fn dead_letter_row(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_DEAD_LETTERS} WHERE id = $1"
        )))
        .bind(id.to_owned())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(dead_letter)
        .transpose()
    }

    /// See [`crate::Store::mark_replayed`].
    pub(crate) async fn mark_replayed_row(&self, id: &str) -> Result<(), StoreError> {
        let updated = sqlx::query("UPDATE dead_letters SET replayed_at = $1 WHERE id = $2")
            .bind(now_millis())
            .bind(id.to_owned())
            .execute(&self.pool)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound(format!("dead letter `{id}`")));
        }
        Ok(())
    }
}

/// The columns [`dead_letter`] reads.
const SELECT_DEAD_LETTERS: &str =
    "SELECT id, event_id, source, received_at, reason, body, replayed_at FROM dead_letters";

fn dead_letter(row: &sqlx::any::AnyRow) -> Result<DeadLetter, StoreError> {
    Ok(DeadLetter {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        source: row.try_get("source")?,
        received_at: row.try_get("received_at")?,
        reason: row.try_get("reason")?,
        body: row.try_get("body")?,
        replayed_at: row.try_get("replayed_at")?,
    })
}

/// Records that `event` was taken, with its outcome, and adds it to the live stream.
async fn record_taken(
    conn: &mut AnyConnection,
    event: &EventRecord,
    outcome: EventOutcome,
) -> Result<(), StoreError> {
    let revision = match outcome {
        EventOutcome::Applied { revision } => Some(revision),
        _ => None,
    };
    sqlx::query(
        "INSERT INTO events_taken (event_id, source, event_type, occurred_at, taken_at, outcome, revision) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(event.id.clone())
    .bind(event.source.clone())
    .bind(event.event_type.clone())
    .bind(event.occurred_at)
    .bind(now_millis())
    .bind(outcome.as_str().to_owned())
    .bind(revision)
    .execute(&mut *conn)
    .await?;
    if let Some((name, data)) = StreamEntry::taken(event, outcome) {
        append_to_stream(conn, &name, &data).await?;
    }
    Ok(())
}

/// Appends an entry to the live event stream, numbered next; every so often drops what is
/// past [`EVENT_STREAM_KEPT`]. Runs under the store's write lock (numbers follow commits).
async fn append_to_stream(
    conn: &mut AnyConnection,
    name: &str,
    data: &str,
) -> Result<(), StoreError> {
    let seq: i64 = sqlx::query(
        "UPDATE store_meta SET event_seq = event_seq + 1 WHERE id = 1 RETURNING event_seq",
    )
    .fetch_one(&mut *conn)
    .await?
    .try_get("event_seq")?;
    sqlx::query("INSERT INTO event_stream (seq, name, data, at) VALUES ($1, $2, $3, $4)")
        .bind(seq)
        .bind(name.to_owned())
        .bind(data.to_owned())
        .bind(now_millis())
        .execute(&mut *conn)
        .await?;
    if seq % 1000 == 0 {
        sqlx::query("DELETE FROM event_stream WHERE seq <= $1")
            .bind(seq - EVENT_STREAM_KEPT)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn missing(what: &str, key: &EntityRef) -> StoreError {
    StoreError::Invalid(ModelError::Invalid(format!(
        "{what} `{key}` does not exist"
    )))
}

/// Makes one change inside the transaction; what it touched, for the change feed.
async fn apply(conn: &mut AnyConnection, op: &Op) -> Result<Vec<ChangeKind>, StoreError> {
    match op {
        Op::PutPrincipal(p) => {
            let key = p.entity_ref();
            upsert(conn, UPSERT_PRINCIPAL, key.to_string(), to_doc(p)?).await?;
            Ok(vec![ChangeKind::Principal { principal: key }])
        }
        Op::EnsurePrincipal(p) => {
            let key = p.entity_ref();
            if principal_doc(conn, &key).await?.is_some() {
                return Ok(Vec::new());
            }
            upsert(conn, UPSERT_PRINCIPAL, key.to_string(), to_doc(p)?).await?;
            Ok(vec![ChangeKind::Principal { principal: key }])
        }
        Op::DeletePrincipal(key) => {
            // Gone already is gone, but the tombstone is left all the same: the principal
            // may never have been stored (taken from its token's claims).
            let (_, changes) = delete_principal_rows(conn, key).await?;
            Ok(changes)
        }
        Op::SetStatus { principal, status } => {
            let mut p = principal_doc(conn, principal)
                .await?
                .ok_or_else(|| missing("principal", principal))?;
            p.status = *status;
            upsert(conn, UPSERT_PRINCIPAL, principal.to_string(), to_doc(&p)?).await?;
            Ok(vec![ChangeKind::Principal {
                principal: principal.clone(),
            }])
        }
        Op::JoinGroups { principal, groups } => {
            let mut p = principal_doc(conn, principal)
                .await?
                .ok_or_else(|| missing("principal", principal))?;
            for g in groups {
                if !p.groups.contains(g) {
                    p.groups.push(g.clone());
                }
            }
            upsert(conn, UPSERT_PRINCIPAL, principal.to_string(), to_doc(&p)?).await?;
            Ok(vec![ChangeKind::Principal {
                principal: principal.clone(),
            }])
        }
        Op::PutAssignment(a) => {
            check_assignment_refs(conn, a).await?;
            insert_assignment(conn, a).await?;
            Ok(vec![ChangeKind::Assignment {
                id: a.id.clone(),
                principal: a.principal.clone(),
            }])
        }
        Op::DeleteAssignments { principal, scope } => {
            let rows = sqlx::query("SELECT doc FROM assignments WHERE principal = $1")
                .bind(principal.to_string())
                .fetch_all(&mut *conn)
                .await?;
            let mut changes = Vec::new();
            for a in docs::<portcullis_model::Assignment>(&rows)? {
                if scope.as_ref().is_some_and(|s: &Scope| *s != a.scope) {
                    continue;
                }
                sqlx::query("DELETE FROM assignments WHERE id = $1")
                    .bind(a.id.clone())
                    .execute(&mut *conn)
                    .await?;
                changes.push(ChangeKind::Assignment {
                    id: a.id,
                    principal: principal.clone(),
                });
            }
            Ok(changes)
        }
        Op::Archive(uid) => {
            let row = sqlx::query("SELECT doc FROM entities WHERE uid = $1")
                .bind(uid.to_string())
                .fetch_optional(&mut *conn)
                .await?
                .ok_or_else(|| missing("entity", uid))?;
            let mut entity: portcullis_model::EntityRecord =
                from_doc(&row.try_get::<String, _>("doc")?)?;
            entity.attributes.archived = true;
            upsert(conn, UPSERT_ENTITY, uid.to_string(), to_doc(&entity)?).await?;
            Ok(vec![ChangeKind::Entity { uid: uid.clone() }])
        }
        Op::RevokeSession(session) => {
            upsert_revoked_session(conn, session).await?;
            Ok(vec![ChangeKind::Session {
                session_id: session.record_key(),
            }])
        }
    }
}
