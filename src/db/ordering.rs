//! Per-key ordered delivery's state in PostgreSQL: which delivery of a (destination,
//! key) may go now, and handing the key on.
//!
//! A key's row in `ordering_keys` holds its last sequence number and its `head`, the
//! id of its one live delivery (NULL when idle); every other delivery of the key is
//! `waiting`. Ingest numbers new deliveries and makes the first of an idle
//! key `pending` ([`super::events::insert_batch_with_outbox`]). Whoever ends the head —
//! the worker recording `delivered` (or `dead`, unless the key blocks on dead), an
//! operator skipping it — calls [`release_and_promote`] in the transaction that ends
//! it: the head is cleared, then the key's lowest waiting delivery becomes `pending`
//! and the new head. Every writer of a key updates its row first, so they queue on its
//! row lock, each seeing the last one's commit; the promotion is a statement of its
//! own so that its snapshot includes the waiting deliveries of an ingest that held the
//! lock. Keys are always locked in (destination, key) order, so writers of several keys
//! cannot deadlock.

use diesel::prelude::QueryableByName;
use diesel::sql_types::{Array, Text, Uuid};
use diesel::QueryResult;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::prepared::prepared;

/// The longest key stored as it is; longer ones (and ones with control characters) are
/// stored as `sha256:` and their digest's hex, which orders the same way.
pub const MAX_KEY_BYTES: usize = 128;

/// The key as stored: the value itself when short and printable, else its digest.
pub fn stored_key(value: &str) -> String {
    if value.len() <= MAX_KEY_BYTES && !value.chars().any(char::is_control) {
        return value.to_string();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    format!("sha256:{}", hex::encode(digest))
}

/// A key that was handed on.
#[derive(Debug, QueryableByName)]
struct Key {
    #[diesel(sql_type = Text)]
    destination: String,
    #[diesel(sql_type = Text)]
    key: String,
}

/// Ends the keys whose head is one of these deliveries (which the caller has just made
/// delivered, dead or skipped), then makes each key's next waiting delivery `pending`.
/// Must run inside the transaction that ended them. Returns how many deliveries became
/// `pending`: the caller wakes the relays once it has committed.
pub async fn release_and_promote(conn: &mut AsyncPgConnection, ids: &[uuid::Uuid]) -> QueryResult<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let released: Vec<Key> = prepared(
        "WITH head AS ( \
             SELECT k.destination, k.key FROM ordering_keys k \
             JOIN deliveries d ON d.destination = k.destination AND d.ordering_key = k.key \
             WHERE d.id = ANY($1) AND k.head = d.id \
             ORDER BY k.destination, k.key \
             FOR UPDATE OF k) \
         UPDATE ordering_keys k SET head = NULL, changed_at = now() \
         FROM head WHERE k.destination = head.destination AND k.key = head.key \
         RETURNING k.destination, k.key",
    )
    .bind::<Array<Uuid>, _>(ids)
    .load(conn)
    .await?;
    promote(conn, &released).await
}

/// Makes the lowest waiting delivery of each of these keys that is idle `pending`, and
/// its head. The caller holds the keys' row locks (this transaction updated them), and
/// this is a statement of its own, so it sees every delivery committed before them.
async fn promote(conn: &mut AsyncPgConnection, keys: &[Key]) -> QueryResult<usize> {
    if keys.is_empty() {
        return Ok(0);
    }
    prepared(
        "WITH idle AS ( \
             SELECT k.destination, k.key FROM ordering_keys k \
             JOIN unnest($1::text[], $2::text[]) AS i(destination, key) \
               ON k.destination = i.destination AND k.key = i.key \
             WHERE k.head IS NULL), \
         next AS ( \
             SELECT n.id, idle.destination, idle.key FROM idle \
             CROSS JOIN LATERAL ( \
                 SELECT d.id FROM deliveries d \
                 WHERE d.destination = idle.destination AND d.ordering_key = idle.key \
                   AND d.status = 'waiting' \
                 ORDER BY d.ordering_seq LIMIT 1) n), \
         promoted AS ( \
             UPDATE deliveries d SET status = 'pending', next_attempt_at = now(), updated_at = now() \
             FROM next WHERE d.id = next.id \
             RETURNING d.id, next.destination, next.key) \
         UPDATE ordering_keys k SET head = p.id, changed_at = now() \
         FROM promoted p WHERE k.destination = p.destination AND k.key = p.key",
    )
    .bind::<Array<Text>, _>(keys.iter().map(|k| k.destination.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(keys.iter().map(|k| k.key.as_str()).collect::<Vec<_>>())
    .execute(conn)
    .await
}

/// After a replay reset these deliveries to `pending`: each ordered one that is not
/// its key's head (a dead head of a blocked key, or a retrying head, goes again in its
/// place) is numbered anew at the end of its key, `pending` and the head if the key
/// was idle, otherwise `waiting`. Must run in the replay's transaction.
///
/// Two statements: the first locks the keys' rows in key order (creating the row of a
/// key that retention deleted while idle), so the second sees their latest state.
pub async fn requeue_replayed(conn: &mut AsyncPgConnection, ids: &[uuid::Uuid]) -> QueryResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    prepared(
        "INSERT INTO ordering_keys AS k (destination, key, last_seq, head) \
         SELECT DISTINCT destination, ordering_key, 0, NULL::uuid FROM deliveries \
         WHERE id = ANY($1) AND ordering_key IS NOT NULL \
         ORDER BY destination, ordering_key \
         ON CONFLICT (destination, key) DO UPDATE SET last_seq = k.last_seq",
    )
    .bind::<Array<Uuid>, _>(ids)
    .execute(conn)
    .await?;
    prepared(
        "WITH replayed AS ( \
             SELECT id, destination, ordering_key, ordering_seq FROM deliveries \
             WHERE id = ANY($1) AND ordering_key IS NOT NULL), \
         moved AS ( \
             SELECT r.id, r.destination, r.ordering_key, k.head, \
                    k.last_seq + row_number() OVER ( \
                        PARTITION BY r.destination, r.ordering_key ORDER BY r.ordering_seq) AS seq \
             FROM replayed r JOIN ordering_keys k ON k.destination = r.destination AND k.key = r.ordering_key \
             WHERE k.head IS DISTINCT FROM r.id), \
         firsts AS ( \
             SELECT DISTINCT ON (destination, ordering_key) destination, ordering_key, id \
             FROM moved ORDER BY destination, ordering_key, seq), \
         renumbered AS ( \
             UPDATE deliveries d SET ordering_seq = m.seq, \
                    status = CASE WHEN m.head IS NULL AND m.id IN (SELECT id FROM firsts) \
                                  THEN 'pending' ELSE 'waiting' END \
             FROM moved m WHERE d.id = m.id) \
         UPDATE ordering_keys k SET last_seq = t.last_seq, head = COALESCE(k.head, f.id), \
                changed_at = now() \
         FROM (SELECT destination, ordering_key, max(seq) AS last_seq FROM moved \
               GROUP BY destination, ordering_key) t \
         JOIN firsts f ON f.destination = t.destination AND f.ordering_key = t.ordering_key \
         WHERE k.destination = t.destination AND k.key = t.ordering_key",
    )
    .bind::<Array<Uuid>, _>(ids)
    .execute(conn)
    .await?;
    Ok(())
}
