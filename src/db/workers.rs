//! Worker processes' heartbeats (`worker_heartbeats`): how many workers are live now,
//! so that each takes its share of a destination's `rate_limit`.

use diesel::sql_types::{BigInt, Double, Uuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

#[derive(diesel::QueryableByName)]
struct Live {
    #[diesel(sql_type = BigInt)]
    live: i64,
}

/// Records that worker `id` is live and returns how many workers (itself included)
/// beat within `live_within`. Rows older than an hour (workers that died) go.
pub async fn beat(
    conn: &mut AsyncPgConnection,
    id: uuid::Uuid,
    live_within: std::time::Duration,
) -> diesel::QueryResult<i64> {
    // The count runs on the statement's snapshot, which does not see this beat: the
    // worker's own row counts by its id.
    let live: Live = diesel::sql_query(
        "WITH beat AS ( \
             INSERT INTO worker_heartbeats (id, beat_at) VALUES ($1, now()) \
             ON CONFLICT (id) DO UPDATE SET beat_at = now()), \
         gone AS (DELETE FROM worker_heartbeats WHERE beat_at < now() - interval '1 hour' AND id <> $1) \
         SELECT count(*) + 1 AS live FROM worker_heartbeats \
         WHERE beat_at > now() - make_interval(secs => $2) AND id <> $1",
    )
    .bind::<Uuid, _>(id)
    .bind::<Double, _>(live_within.as_secs_f64())
    .get_result(conn)
    .await?;
    Ok(live.live)
}

/// Worker `id` stops: the others take its share at their next beat.
pub async fn leave(conn: &mut AsyncPgConnection, id: uuid::Uuid) -> diesel::QueryResult<usize> {
    diesel::sql_query("DELETE FROM worker_heartbeats WHERE id = $1")
        .bind::<Uuid, _>(id)
        .execute(conn)
        .await
}
