//! Fixed SQL statements that each connection prepares once.
//!
//! diesel's `sql_query` marks its statement unsafe to cache, so diesel-async prepares it
//! anew on every execution: one round trip to parse it, a second to run it. relayd's hot
//! statements are fixed texts with array parameters, so they are safe to keep:
//! [`prepared`] builds one from a `&'static str` whose placeholders `$1`, `$2`, … each
//! appear once, in order, and the connection's statement cache (keyed by that text)
//! parses it only the first time.
//!
//! A statement whose best plan depends on table sizes must run on the relaxed pool,
//! whose connections plan every execution (`plan_cache_mode = force_custom_plan`, see
//! [`super::build_pool`]): a generic plan chosen while the outbox was empty would be
//! kept when it is suddenly full. On the synchronous pool PostgreSQL may keep a generic
//! plan, so only statements with one sensible plan whatever the sizes (the ingest
//! insert) are prepared there; the rest use `diesel::sql_query`.

use std::marker::PhantomData;

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::QueryResult;

/// A statement from fixed text; add its parameters with [`Prepared::bind`], in order.
pub fn prepared(sql: &'static str) -> Prepared<NoBinds> {
    Prepared { sql, binds: NoBinds }
}

/// See [`prepared`]. Run it with `diesel_async::RunQueryDsl` like any query.
#[must_use = "a statement runs only when executed or loaded"]
pub struct Prepared<B> {
    sql: &'static str,
    binds: B,
}

/// No parameter bound yet.
pub struct NoBinds;

/// The parameters bound so far, the last one outermost.
pub struct Bound<Previous, ST, V> {
    previous: Previous,
    value: V,
    sql_type: PhantomData<ST>,
}

impl<B> Prepared<B> {
    /// Binds the next placeholder to `value` as SQL type `ST`.
    pub fn bind<ST, V>(self, value: V) -> Prepared<Bound<B, ST, V>> {
        Prepared {
            sql: self.sql,
            binds: Bound {
                previous: self.binds,
                value,
                sql_type: PhantomData,
            },
        }
    }
}

/// Parameters that write themselves, each followed by the text up to the next one.
pub trait Binds {
    /// Pushes every parameter and the text after it; returns how many were pushed.
    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, text: &[&str]) -> QueryResult<usize>;
}

impl Binds for NoBinds {
    fn walk<'b>(&'b self, _: &mut AstPass<'_, 'b, Pg>, _: &[&str]) -> QueryResult<usize> {
        Ok(0)
    }
}

impl<Previous, ST, V> Binds for Bound<Previous, ST, V>
where
    Previous: Binds,
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    fn walk<'b>(&'b self, out: &mut AstPass<'_, 'b, Pg>, text: &[&str]) -> QueryResult<usize> {
        let pushed = self.previous.walk(out, text)?;
        // diesel numbers the parameters itself, in the order they are pushed.
        out.push_bind_param::<ST, V>(&self.value)?;
        let after = text
            .get(pushed + 1)
            .ok_or_else(|| mismatch(text.len() - 1, pushed + 1))?;
        out.push_sql(after);
        Ok(pushed + 1)
    }
}

impl<B: Binds> QueryFragment<Pg> for Prepared<B> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let text = split_at_placeholders(self.sql)?;
        out.push_sql(text[0]);
        let bound = self.binds.walk(&mut out, &text)?;
        if bound + 1 != text.len() {
            return Err(mismatch(text.len() - 1, bound));
        }
        Ok(())
    }
}

impl<B> QueryId for Prepared<B> {
    type QueryId = ();
    // Cached by its SQL text (and parameter types), not by a Rust type.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B> Query for Prepared<B> {
    type SqlType = Untyped;
}

fn mismatch(placeholders: usize, bound: usize) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(
        format!("statement has {placeholders} placeholders but {bound} parameters were bound").into(),
    )
}

/// The text around `$1`, `$2`, …: one more piece than there are placeholders. diesel
/// numbers parameters in the order they are bound, so placeholders out of order or
/// repeated (which would silently swap values) are refused.
fn split_at_placeholders(sql: &str) -> QueryResult<Vec<&str>> {
    let bytes = sql.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            pieces.push(&sql[start..i]);
            let digits = i + 1;
            i = digits;
            while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if sql[digits..i].parse::<usize>().ok() != Some(pieces.len()) {
                return Err(diesel::result::Error::QueryBuilderError(
                    format!(
                        "placeholder ${} out of order (expected ${})",
                        &sql[digits..i],
                        pieces.len()
                    )
                    .into(),
                ));
            }
            start = i;
        } else {
            i += 1;
        }
    }
    pieces.push(&sql[start..]);
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::debug_query;

    #[test]
    fn splits_around_each_placeholder() {
        assert_eq!(
            split_at_placeholders("SELECT $1::int[], $2 + $3").unwrap(),
            vec!["SELECT ", "::int[], ", " + ", ""]
        );
        assert_eq!(split_at_placeholders("NOTIFY x").unwrap(), vec!["NOTIFY x"]);
    }

    #[test]
    fn placeholders_out_of_order_or_repeated_are_refused() {
        assert!(split_at_placeholders("SELECT $2, $1").is_err());
        assert!(split_at_placeholders("SELECT $1, $1").is_err());
        assert!(split_at_placeholders("SELECT $1, $3").is_err());
    }

    #[test]
    fn renumbers_and_binds_in_order() {
        let query = prepared("SELECT $1::int, $2::text")
            .bind::<diesel::sql_types::Integer, _>(7)
            .bind::<diesel::sql_types::Text, _>("x");
        let shown = debug_query::<Pg, _>(&query).to_string();
        assert!(shown.starts_with("SELECT $1::int, $2::text"), "{shown}");
        assert!(shown.contains("[7, \"x\"]"), "{shown}");
    }

    #[test]
    fn a_missing_parameter_is_an_error_not_a_broken_statement() {
        let query = prepared("SELECT $1::int, $2::int").bind::<diesel::sql_types::Integer, _>(7);
        let mut sql = diesel::pg::PgQueryBuilder::new();
        assert!(QueryFragment::<Pg>::to_sql(&query, &mut sql, &Pg).is_err());
    }

    #[test]
    fn is_safe_to_cache() {
        let query = prepared("SELECT $1::int").bind::<diesel::sql_types::Integer, _>(7);
        assert!(QueryFragment::<Pg>::is_safe_to_cache_prepared(&query, &Pg).unwrap());
    }
}
