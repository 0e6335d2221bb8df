//! Replay jobs (`replay_jobs`): a bulk replay's filter, rate, progress and state, so
//! that it runs in the background in pages, shows its progress, can be cancelled and
//! goes on after a restart. [`work_page`] is one page, in one transaction that holds
//! the job's row lock: replicas working the same job never overlap.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

use super::deliveries::{self, ReplayFilter};
use super::schema::replay_jobs;

/// A job's states: `running` until its cursor has passed every match (`done`) or an
/// operator stops it (`cancelled`). Stored as text with a CHECK constraint.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, diesel::expression::AsExpression, diesel::deserialize::FromSqlRow,
)]
#[diesel(sql_type = diesel::sql_types::Text)]
pub enum JobStatus {
    Running,
    Done,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 3] = [Self::Running, Self::Done, Self::Cancelled];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
        }
    }
}

super::stored_as_text!(JobStatus);

/// A replay job as stored and as the admin API shows it.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = replay_jobs)]
pub struct ReplayJob {
    pub id: uuid::Uuid,
    pub filter: serde_json::Value,
    /// Deliveries replayed per second at most; `None`: as fast as pages go.
    pub max_rate: Option<i32>,
    pub status: JobStatus,
    /// The matching deliveries counted when the job was created (with a `where`, at
    /// most [`deliveries::COUNT_BUDGET`] candidates were evaluated for it).
    pub matching: i64,
    pub replayed: i64,
    /// The last delivery id handled: the job goes on after it.
    #[serde(skip)]
    pub cursor: Option<uuid::Uuid>,
    #[serde(skip)]
    pub next_page_at: chrono::DateTime<chrono::Utc>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl ReplayJob {
    /// How far it has come, 0 to 1: `replayed` of `matching`, and 1 once done (the
    /// matches were counted at creation, so `replayed` may end a little short of them).
    pub fn progress(&self) -> f64 {
        if self.status == JobStatus::Done {
            return 1.0;
        }
        if self.matching <= 0 {
            return 0.0;
        }
        (self.replayed as f64 / self.matching as f64).min(1.0)
    }
}

/// Creates a running job for `filter` with its count of matches now.
pub async fn create(
    conn: &mut AsyncPgConnection,
    filter: &ReplayFilter,
    max_rate: Option<i32>,
) -> QueryResult<ReplayJob> {
    let matching = deliveries::count_replayable(conn, filter).await?.matching;
    diesel::insert_into(replay_jobs::table)
        .values((
            replay_jobs::id.eq(uuid::Uuid::now_v7()),
            replay_jobs::filter.eq(serde_json::to_value(filter).unwrap_or_default()),
            replay_jobs::max_rate.eq(max_rate),
            replay_jobs::status.eq(JobStatus::Running),
            replay_jobs::matching.eq(matching),
        ))
        .returning(ReplayJob::as_returning())
        .get_result(conn)
        .await
}

pub async fn get(conn: &mut AsyncPgConnection, id: uuid::Uuid) -> QueryResult<Option<ReplayJob>> {
    replay_jobs::table
        .find(id)
        .select(ReplayJob::as_select())
        .first(conn)
        .await
        .optional()
}

/// The newest jobs first.
pub async fn list(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<ReplayJob>> {
    replay_jobs::table
        .order(replay_jobs::id.desc())
        .limit(limit)
        .select(ReplayJob::as_select())
        .load(conn)
        .await
}

/// The running jobs with their `max_rate`, oldest first.
pub async fn running(conn: &mut AsyncPgConnection) -> QueryResult<Vec<(uuid::Uuid, Option<i32>)>> {
    replay_jobs::table
        .filter(replay_jobs::status.eq(JobStatus::Running))
        .order(replay_jobs::created_at)
        .select((replay_jobs::id, replay_jobs::max_rate))
        .load(conn)
        .await
}

/// Cancels a running job (waiting for a page in progress to commit). `Ok(None)`: no
/// such job; otherwise the job as it is now (unchanged when it had already ended).
pub async fn cancel(conn: &mut AsyncPgConnection, id: uuid::Uuid) -> QueryResult<Option<ReplayJob>> {
    let cancelled: Option<ReplayJob> = diesel::update(
        replay_jobs::table
            .filter(replay_jobs::id.eq(id))
            .filter(replay_jobs::status.eq(JobStatus::Running)),
    )
    .set((
        replay_jobs::status.eq(JobStatus::Cancelled),
        replay_jobs::updated_at.eq(diesel::dsl::now),
        replay_jobs::finished_at.eq(database_now()),
    ))
    .returning(ReplayJob::as_returning())
    .get_result(conn)
    .await
    .optional()?;
    match cancelled {
        Some(job) => Ok(Some(job)),
        None => get(conn, id).await,
    }
}

/// `now()` for a nullable timestamp column (diesel's `now` is not nullable).
fn database_now(
) -> diesel::expression::SqlLiteral<diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>> {
    diesel::dsl::sql("now()")
}

/// What one page did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// Reset this many deliveries; more may follow.
    Worked(usize),
    /// The job is done now (nothing matched after its cursor).
    Finished,
    /// The job is not running (cancelled, done), its next page is not due yet, or
    /// another process holds its page.
    Idle,
}

/// Works one page of up to `limit` deliveries of job `id` when its next page is due,
/// holding its row lock; the next is due `pause` later (its pace, shared by every
/// process working the job).
pub async fn work_page(
    conn: &mut AsyncPgConnection,
    id: uuid::Uuid,
    limit: i64,
    pause: std::time::Duration,
) -> QueryResult<Page> {
    conn.transaction(async |conn| {
        let job: Option<ReplayJob> = replay_jobs::table
            .find(id)
            .filter(replay_jobs::status.eq(JobStatus::Running))
            .filter(replay_jobs::next_page_at.le(diesel::dsl::now))
            .select(ReplayJob::as_select())
            .for_update()
            .skip_locked()
            .first(conn)
            .await
            .optional()?;
        let Some(job) = job else { return Ok(Page::Idle) };
        let filter: ReplayFilter = serde_json::from_value(job.filter.clone())
            .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))?;
        let (replayed, last) = deliveries::replay_page(conn, &filter, job.cursor, limit).await?;
        let Some(last) = last else {
            diesel::update(replay_jobs::table.find(id))
                .set((
                    replay_jobs::status.eq(JobStatus::Done),
                    replay_jobs::updated_at.eq(diesel::dsl::now),
                    replay_jobs::finished_at.eq(database_now()),
                ))
                .execute(conn)
                .await?;
            return Ok(Page::Finished);
        };
        diesel::update(replay_jobs::table.find(id))
            .set((
                replay_jobs::cursor.eq(last),
                replay_jobs::replayed.eq(replay_jobs::replayed + replayed as i64),
                replay_jobs::next_page_at.eq(diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
                    "now() + make_interval(secs => ",
                )
                .bind::<diesel::sql_types::Double, _>(pause.as_secs_f64())
                .sql(")")),
                replay_jobs::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
        Ok(Page::Worked(replayed))
    })
    .await
}
