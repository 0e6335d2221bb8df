//! Reloading the configuration without a restart (SIGHUP, `POST /admin/api/reload`).
//!
//! This module owns the decision. The file is read through [`Config::load`], the one
//! path startup and `check-config` take; an invalid one is refused with check-config's
//! one-line error, and a change this version cannot apply to a running process is
//! refused naming its keys. Either way the running configuration stays as it was.
//! Otherwise the new configuration is published on a watch channel, and each role
//! applies it to new work (ingest: sources, their secrets and settings, routing; relay:
//! the queues of added destinations; worker: destination URLs and signing secrets, and
//! for added, removed or reshaped destinations a restart of its consume loops in place,
//! [`reshapes_workers`]); work in flight finishes as it began.
//! Nothing here owns a task: the roles' own tasks watch [`Live::subscribe`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::config::{Config, DestinationConfig};

/// The configuration a running process works with, and where a reload reads it from.
pub struct Live {
    /// `--config` as given at startup (`None`: the default file, or defaults); unset in
    /// a process built without a file (tests), which cannot reload.
    from: Mutex<Option<Option<PathBuf>>>,
    current: watch::Sender<Arc<Config>>,
    /// One reload at a time (SIGHUP and the admin API may race).
    reloading: tokio::sync::Mutex<()>,
}

/// Why a reload changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this process was not started from a configuration file")]
    NoFile,
    /// The one line `check-config` prints.
    #[error("{0}")]
    Invalid(String),
    /// Valid, but these keys only change with a restart.
    #[error("only a restart applies changes to {}", .0.join(", "))]
    NeedsRestart(Vec<String>),
}

/// What a reload changed (keys, for the log and the admin API's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub changed: Vec<String>,
}

impl Live {
    pub fn new(config: &Config) -> Self {
        Self {
            from: Mutex::new(None),
            current: watch::Sender::new(Arc::new(config.clone())),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// Reloads read `path` (`--config` as given at startup) again.
    pub fn reload_from(&self, path: Option<PathBuf>) {
        *self.from.lock().expect("reload path lock") = Some(path);
    }

    /// The configuration in force now.
    pub fn current(&self) -> Arc<Config> {
        self.current.borrow().clone()
    }

    /// The configuration in force now, and each one a reload puts in force.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.current.subscribe()
    }

    /// Reads the configuration again and puts it in force, or refuses it; logs one line
    /// saying which, and what asked (`by`: "SIGHUP", "admin API").
    pub async fn reload(&self, by: &'static str) -> Result<Reloaded, Refused> {
        let result = self.reload_now().await;
        match &result {
            Ok(Reloaded { changed }) if changed.is_empty() => {
                tracing::info!(by, "configuration reloaded: nothing changed");
            }
            Ok(Reloaded { changed }) => {
                tracing::info!(by, changed = %changed.join(", "), "configuration reloaded");
            }
            Err(refused) => {
                tracing::warn!(by, reason = %refused, "configuration reload refused; the running configuration stays");
            }
        }
        result
    }

    async fn reload_now(&self) -> Result<Reloaded, Refused> {
        let _one = self.reloading.lock().await;
        let path = self
            .from
            .lock()
            .expect("reload path lock")
            .clone()
            .ok_or(Refused::NoFile)?;
        let loaded = tokio::task::spawn_blocking(move || Config::load(path.as_deref()))
            .await
            .map_err(|e| Refused::Invalid(format!("loading the configuration: {e}")))?
            .map_err(|e| Refused::Invalid(format!("invalid configuration: {e}")))?;
        let current = self.current.borrow().clone();
        let changed = live_changes(&current, &loaded).map_err(Refused::NeedsRestart)?;
        if !changed.is_empty() {
            for warning in loaded.warnings() {
                tracing::warn!(%warning, "configuration");
            }
            self.current.send_replace(Arc::new(loaded));
        }
        Ok(Reloaded { changed })
    }
}

/// The keys that differ between `old` and `new`, when every one of them can change in
/// a running process; otherwise the keys that need a restart.
fn live_changes(old: &Config, new: &Config) -> Result<Vec<String>, Vec<String>> {
    let mut restart = Vec::new();
    // Sections read once at startup (listeners, pools, broker connections, loops).
    let sections = |c: &Config| {
        let mut table = toml::Table::try_from(c).unwrap_or_default();
        for live in ["sources", "destinations", "worker", "operator", "operator_hooks"] {
            table.remove(live);
        }
        table
    };
    let (old_sections, new_sections) = (sections(old), sections(new));
    for (name, value) in &old_sections {
        if new_sections.get(name) != Some(value) {
            restart.push(name.clone());
        }
    }
    // Secrets serialize redacted: compare them as they are.
    let restart_secrets = |c: &Config| {
        (
            c.database.url.expose().to_string(),
            c.broker
                .nodes()
                .iter()
                .map(|s| s.expose().to_string())
                .collect::<Vec<_>>(),
            c.ops.admin_token.as_ref().map(|t| t.expose().to_string()),
        )
    };
    let (old_secrets, new_secrets) = (restart_secrets(old), restart_secrets(new));
    for (key, differs) in [
        ("database.url", old_secrets.0 != new_secrets.0),
        ("broker.url", old_secrets.1 != new_secrets.1),
        ("ops.admin_token", old_secrets.2 != new_secrets.2),
    ] {
        if differs && !restart.iter().any(|k| key.starts_with(k.as_str())) {
            restart.push(key.to_string());
        }
    }

    if !restart.is_empty() {
        return Err(restart);
    }

    let mut changed = Vec::new();
    let table =
        |section: &str, c: &Config| match toml::Table::try_from(c).ok().and_then(|mut t| t.remove(section)) {
            Some(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
    for section in ["worker", "operator"] {
        let (before, after) = (table(section, old), table(section, new));
        for (key, value) in &after {
            if before.get(key) != Some(value) {
                changed.push(format!("{section}.{key}"));
            }
        }
    }
    for hook in &new.operator_hooks {
        match old.operator_hooks.iter().find(|h| h.name == hook.name) {
            None => changed.push(format!("operator_hooks.{} (added)", hook.name)),
            Some(before) => {
                let exposed = |h: &crate::config::OperatorHookConfig| {
                    (
                        h.url.expose().to_string(),
                        h.signing_secret.expose().to_string(),
                        h.events.clone(),
                        h.timeout,
                    )
                };
                if exposed(before) != exposed(hook) {
                    changed.push(format!("operator_hooks.{}", hook.name));
                }
            }
        }
    }
    for hook in old
        .operator_hooks
        .iter()
        .filter(|h| !new.operator_hooks.iter().any(|n| n.name == h.name))
    {
        changed.push(format!("operator_hooks.{} (removed)", hook.name));
    }
    for destination in &new.destinations {
        let Some(before) = old.destinations.iter().find(|d| d.name == destination.name) else {
            changed.push(format!("destinations.{} (added)", destination.name));
            continue;
        };
        let key = |field: &str| format!("destinations.{}.{field}", destination.name);
        if before.url.expose() != destination.url.expose() {
            changed.push(key("url"));
        }
        if before.signing_secret.expose() != destination.signing_secret.expose() {
            changed.push(key("signing_secret"));
        }
        let (shape_before, shape_after) = (shape(before), shape(destination));
        for (field, value) in &shape_after {
            if shape_before.get(field) != Some(value) {
                changed.push(key(field));
            }
        }
        for field in shape_before.keys().filter(|f| !shape_after.contains_key(*f)) {
            changed.push(key(field));
        }
    }
    for destination in old
        .destinations
        .iter()
        .filter(|d| !new.destinations.iter().any(|n| n.name == d.name))
    {
        changed.push(format!("destinations.{} (removed)", destination.name));
    }

    for source in &new.sources {
        match old.sources.iter().find(|s| s.name == source.name) {
            None => changed.push(format!("sources.{} (added)", source.name)),
            Some(before) if !same_source(before, source) => changed.push(format!("sources.{}", source.name)),
            Some(_) => {}
        }
    }
    for source in old
        .sources
        .iter()
        .filter(|s| !new.sources.iter().any(|n| n.name == s.name))
    {
        changed.push(format!("sources.{} (removed)", source.name));
    }
    Ok(changed)
}

/// A destination's settings apart from its secrets (which serialize redacted):
/// routing (`sources`, `event_types`) and how its deliveries flow.
fn shape(destination: &DestinationConfig) -> toml::Table {
    let mut table = toml::Table::try_from(destination).unwrap_or_default();
    for secret in ["url", "signing_secret"] {
        table.remove(secret);
    }
    table
}

/// Whether the worker's consume loops must be started again to apply `new`: a
/// destination was added or removed, one's flow settings changed (its limits,
/// timeout, breaker, rate limit, ordering), or `[worker]` did. URLs, signing secrets and routing apply
/// without that.
pub fn reshapes_workers(old: &Config, new: &Config) -> bool {
    let flow = |c: &Config| -> Vec<(String, toml::Table)> {
        c.delivered_destinations()
            .iter()
            .map(|d| {
                let mut table = shape(d);
                for routing in ["sources", "event_types"] {
                    table.remove(routing);
                }
                (d.name.clone(), table)
            })
            .collect()
    };
    flow(old) != flow(new)
        || toml::Table::try_from(&old.worker).ok() != toml::Table::try_from(&new.worker).ok()
}

fn same_source(a: &crate::config::SourceConfig, b: &crate::config::SourceConfig) -> bool {
    let secrets = |s: &crate::config::SourceConfig| -> Vec<String> {
        s.secrets.iter().map(|x| x.expose().to_string()).collect()
    };
    toml::Table::try_from(a).ok() == toml::Table::try_from(b).ok() && secrets(a) == secrets(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, SourceConfig, SourceKind};

    fn base() -> Config {
        let destination: DestinationConfig = toml::from_str(
            "name = \"billing\"\nurl = \"http://127.0.0.1:1/a\"\nsigning_secret = \"whsec_AQID\"",
        )
        .unwrap();
        Config {
            sources: vec![SourceConfig::new(
                "stripe",
                SourceKind::Stripe,
                vec![Secret::new("whsec_old")],
            )],
            destinations: vec![destination],
            ..Config::default()
        }
    }

    #[test]
    fn sources_secrets_routing_and_destination_urls_change_live() {
        let old = base();
        let mut new = base();
        new.sources[0].secrets = vec![Secret::new("whsec_new")];
        new.sources.push(SourceConfig::new(
            "gh",
            SourceKind::Github,
            vec![Secret::new("k")],
        ));
        new.destinations[0].url = Secret::new("http://127.0.0.1:2/b");
        new.destinations[0].signing_secret = Secret::new("whsec_BAUG");
        new.destinations[0].event_types = vec!["invoice.*".into()];
        let changed = live_changes(&old, &new).unwrap();
        assert_eq!(
            changed,
            [
                "destinations.billing.url",
                "destinations.billing.signing_secret",
                "destinations.billing.event_types",
                "sources.stripe",
                "sources.gh (added)",
            ]
        );
        assert_eq!(live_changes(&old, &old.clone()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn destinations_are_added_removed_and_reshaped_live_and_the_worker_restarts_for_it() {
        let old = base();
        let mut new = base();
        new.destinations[0].max_in_flight = 3;
        new.destinations.push(DestinationConfig {
            name: "crm".into(),
            ..new.destinations[0].clone()
        });
        assert_eq!(
            live_changes(&old, &new).unwrap(),
            ["destinations.billing.max_in_flight", "destinations.crm (added)"]
        );
        assert!(reshapes_workers(&old, &new));
        let mut removed = base();
        removed.destinations.clear();
        assert_eq!(
            live_changes(&old, &removed).unwrap(),
            ["destinations.billing (removed)"]
        );
        assert!(reshapes_workers(&old, &removed));
        // Routing, URLs and signing secrets reach the running loops without a restart.
        let mut rerouted = base();
        rerouted.destinations[0].event_types = vec!["invoice.*".into()];
        rerouted.destinations[0].url = Secret::new("http://127.0.0.1:3/c");
        assert!(!reshapes_workers(&old, &rerouted));
    }

    #[test]
    fn what_a_running_process_cannot_change_is_named_and_refused() {
        let old = base();
        let mut new = base();
        new.relay.batch_size = 7;
        new.database.url = Secret::new("postgres://postgres:other@127.0.0.1:5432/relayd");
        new.destinations[0].max_in_flight = 3;
        assert_eq!(live_changes(&old, &new).unwrap_err(), ["relay", "database.url"]);
    }

    #[test]
    fn the_worker_section_changes_live_by_restarting_the_consume_loops() {
        let old = base();
        let mut new = base();
        new.worker.concurrency = 7;
        assert_eq!(live_changes(&old, &new).unwrap(), ["worker.concurrency"]);
        assert!(reshapes_workers(&old, &new));
    }
}
