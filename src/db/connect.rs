//! Opening one PostgreSQL connection, over plain TCP or TLS as `database.url` asks,
//! without libpq: the one place every pool, `LISTEN`, migration and CLI connection is
//! made.
//!
//! libpq's TLS options are read off the URL's query: `sslmode` = `disable` (the default
//! here, unlike libpq's `prefer`), `prefer` or `require` (encrypted, the server's
//! certificate not checked), `verify-ca` (its chain checked against `sslrootcert`),
//! `verify-full` (also its host name); `sslrootcert` = a PEM file of CA certificates
//! (without it, the system's roots). Both are removed before the rest goes to
//! tokio-postgres, which knows neither the verify modes nor `sslrootcert`.

use diesel::ConnectionError;
use diesel_async::{AsyncConnection, AsyncPgConnection};

/// How to secure a connection, from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tls {
    Disable,
    /// Encrypt; `required` refuses a server without TLS (otherwise plain is accepted).
    Encrypt {
        required: bool,
    },
    Verify {
        full: bool,
        root: Option<String>,
    },
}

/// Connects to `url`.
pub async fn connect(url: &str) -> Result<AsyncPgConnection, ConnectionError> {
    let (url, tls) = split_tls(url).map_err(ConnectionError::InvalidConnectionUrl)?;
    if tls == Tls::Disable {
        return AsyncPgConnection::establish(&url).await;
    }
    let connector = connector(&tls).map_err(ConnectionError::BadConnection)?;
    let (client, connection) =
        tokio_postgres::connect(&url, postgres_native_tls::MakeTlsConnector::new(connector))
            .await
            .map_err(|e| ConnectionError::BadConnection(e.to_string()))?;
    AsyncPgConnection::try_from_client_and_connection(client, connection).await
}

/// Checks `url` as [`connect`] reads it: a `postgres://` or `postgresql://` URL with at
/// least one host, the multi-host form (`h1:5432,h2:5433`, `target_session_attrs`)
/// included.
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("scheme must be one of postgres, postgresql".into());
    }
    let (url, _) = split_tls(url)?;
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("not a valid URL: {e}"))?;
    if config.get_hosts().is_empty() {
        return Err("URL has no host".into());
    }
    Ok(())
}

/// `url` with its database name replaced by `name`, and the name it had (empty when
/// none): for the multi-host form too, which `url::Url` cannot parse.
pub fn with_database(url: &str, name: &str) -> Option<(String, String)> {
    let after_scheme = url.find("://")? + 3;
    let rest = &url[after_scheme..];
    let path_start = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(path_start);
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    let old = path.trim_start_matches('/').to_string();
    let mut new = format!("{}{authority}/{name}", &url[..after_scheme]);
    if let Some(query) = query {
        new.push('?');
        new.push_str(query);
    }
    Some((new, old))
}

/// `url` without the TLS options relayd handles itself (with `sslmode` set to what
/// tokio-postgres does for it), and those options.
fn split_tls(url: &str) -> Result<(String, Tls), String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut mode = None;
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| format!("{key} in database.url is not UTF-8"))?
            .into_owned();
        match key {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => kept.push(pair),
        }
    }
    let tls = match mode.as_deref().unwrap_or("disable") {
        "disable" => Tls::Disable,
        "prefer" | "allow" => Tls::Encrypt { required: false },
        "require" => Tls::Encrypt { required: true },
        "verify-ca" => Tls::Verify { full: false, root },
        "verify-full" => Tls::Verify { full: true, root },
        other => {
            return Err(format!(
                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
            ))
        }
    };
    // What tokio-postgres does for it: the verification is relayd's connector's.
    kept.push(match tls {
        Tls::Disable => "sslmode=disable",
        Tls::Encrypt { required: false } => "sslmode=prefer",
        _ => "sslmode=require",
    });
    Ok((format!("{base}?{}", kept.join("&")), tls))
}

fn connector(tls: &Tls) -> Result<native_tls::TlsConnector, String> {
    let mut builder = native_tls::TlsConnector::builder();
    match tls {
        Tls::Disable => {}
        Tls::Encrypt { .. } => {
            // libpq's `prefer` and `require`: encrypted, the peer unauthenticated.
            builder.danger_accept_invalid_certs(true);
        }
        Tls::Verify { full, root } => {
            if let Some(path) = root {
                let pem = std::fs::read(path).map_err(|e| format!("reading sslrootcert {path}: {e}"))?;
                let certificate = native_tls::Certificate::from_pem(&pem)
                    .map_err(|e| format!("sslrootcert {path} is not a PEM certificate: {e}"))?;
                builder.add_root_certificate(certificate);
            }
            builder.danger_accept_invalid_hostnames(!full);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_taken_off_the_url() {
        let (url, tls) = split_tls("postgres://u@h/db").unwrap();
        assert_eq!(
            (url.as_str(), tls),
            ("postgres://u@h/db?sslmode=disable", Tls::Disable)
        );
        let (url, tls) = split_tls("postgres://u@h/db?sslmode=require&keepalives=1").unwrap();
        assert_eq!(url, "postgres://u@h/db?keepalives=1&sslmode=require");
        assert_eq!(tls, Tls::Encrypt { required: true });
        let (url, tls) =
            split_tls("postgres://h1:5432,h2:5433/db?sslrootcert=%2Fca.pem&sslmode=verify-full").unwrap();
        assert_eq!(url, "postgres://h1:5432,h2:5433/db?sslmode=require");
        assert_eq!(
            tls,
            Tls::Verify {
                full: true,
                root: Some("/ca.pem".into())
            }
        );
        assert!(split_tls("postgres://h/db?sslmode=bogus").is_err());
    }

    #[test]
    fn multi_host_urls_are_valid_and_keep_their_hosts_when_the_database_changes() {
        let url = "postgres://u:p@h1:5432,h2:5433/relayd?target_session_attrs=read-write&sslmode=verify-full";
        assert_eq!(check_url(url), Ok(()));
        assert_eq!(check_url("postgres://u@h/db"), Ok(()));
        assert!(check_url("http://h/db").is_err());
        assert!(check_url("postgres://h:notaport/db").is_err());
        assert_eq!(
            with_database(url, "postgres"),
            Some((
                "postgres://u:p@h1:5432,h2:5433/postgres?target_session_attrs=read-write&sslmode=verify-full"
                    .to_string(),
                "relayd".to_string()
            ))
        );
        assert_eq!(
            with_database("postgres://h", "postgres"),
            Some(("postgres://h/postgres".to_string(), String::new()))
        );
    }
}
