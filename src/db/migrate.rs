//! Embedded schema migrations, applied without libpq.
//!
//! diesel_migrations is synchronous, so migrations run on a blocking thread through
//! diesel-async's `AsyncConnectionWrapper`. A session-level advisory lock serializes
//! replicas that start at once: the first applies, the others wait and then find
//! nothing pending.

use anyhow::Context;
use diesel::connection::SimpleConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// Every migration under `migrations/`, compiled into the binary (see `build.rs`).
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Advisory lock key held while migrating ("relaydmg" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x7265_6c61_7964_6d67;

/// Applies pending migrations under the advisory lock; returns the versions applied
/// (empty when the schema was current).
pub async fn run_pending(database_url: &str) -> anyhow::Result<Vec<String>> {
    let conn = super::connect(database_url)
        .await
        .context("connecting to the database to migrate")?;
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
            .context("taking the migration lock")?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(|e| anyhow::anyhow!("applying migrations: {e}"));
        // Closing the connection would release the lock too; unlock explicitly so the
        // next replica proceeds even if this connection lingers.
        let unlocked = conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"));
        let applied = applied?;
        unlocked.context("releasing the migration lock")?;
        Ok(applied)
    })
    .await
    .context("migration thread panicked")?
}

/// Reverts every applied migration (newest first). For tests of `down.sql`.
pub async fn revert_all(database_url: &str) -> anyhow::Result<usize> {
    let conn = super::connect(database_url)
        .await
        .context("connecting to the database to revert")?;
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        conn.revert_all_migrations(MIGRATIONS)
            .map(|versions| versions.len())
            .map_err(|e| anyhow::anyhow!("reverting migrations: {e}"))
    })
    .await
    .context("migration thread panicked")?
}

/// Creates the database named in `database_url` when it does not exist, through the
/// server's `postgres` maintenance database. Returns true when it created it.
///
/// A reachable database is left alone without further checks, so a role without
/// `CREATEDB` never needs it.
pub async fn ensure_database(database_url: &str) -> anyhow::Result<bool> {
    let connect_error = match super::connect(database_url).await {
        Ok(_) => return Ok(false),
        Err(e) => e,
    };
    let (admin_url, name) =
        super::connect::with_database(database_url, "postgres").context("parsing database.url")?;
    let name = percent_encoding::percent_decode_str(&name)
        .decode_utf8()
        .context("database name in database.url is not UTF-8")?
        .into_owned();
    if name.is_empty() || name == "postgres" {
        return Err(connect_error).context("connecting to the database");
    }
    let Ok(mut admin) = super::connect(&admin_url).await else {
        return Err(connect_error).context("connecting to the database");
    };
    let exists = diesel::sql_query("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind::<diesel::sql_types::Text, _>(&name)
        .execute(&mut admin)
        .await
        .context("looking up the database")?
        > 0;
    if exists {
        // It exists, so the first error was about something else (auth, permissions).
        return Err(connect_error).context("connecting to the database");
    }
    let quoted = name.replace('"', "\"\"");
    match diesel::sql_query(format!("CREATE DATABASE \"{quoted}\""))
        .execute(&mut admin)
        .await
    {
        Ok(_) => Ok(true),
        // Another replica created it between our check and our CREATE.
        Err(diesel::result::Error::DatabaseError(_, info)) if info.message().contains("already exists") => {
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| format!("creating database {name:?}")),
    }
}
