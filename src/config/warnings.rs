//! Valid but risky settings, which `check-config` prints and startup logs.

use std::time::Duration;

use super::{Config, Secret, SourceKind, DEVELOPMENT_SECRETS};

impl Config {
    /// Valid but risky settings, for `check-config` to point out.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = Vec::new();
        // Stripe retries for 3 days: pruning sooner would accept its late retries again.
        let three_days = Duration::from_secs(3 * 24 * 3600);
        for (key, horizon) in [
            ("retention.delivered", self.retention.delivered),
            ("retention.dead", self.retention.dead),
        ] {
            if !horizon.is_zero() && horizon < three_days {
                warnings.push(format!(
                    "{key}: {} is shorter than providers' retry windows (Stripe: 3 days); a provider \
                     re-sending an older event would have it accepted again",
                    humantime::format_duration(horizon)
                ));
            }
        }
        let development = |secret: &Secret| DEVELOPMENT_SECRETS.contains(&secret.expose());
        for (i, source) in self.sources.iter().enumerate() {
            for (j, _) in source.secrets.iter().enumerate().filter(|(_, s)| development(s)) {
                warnings.push(format!(
                    "sources[{i}].secrets[{j}]: source {:?} uses the development secret shipped in \
                     config/relayd.toml; set the provider's real one before real use",
                    source.name
                ));
            }
        }
        for (i, destination) in self.destinations.iter().enumerate() {
            if development(&destination.signing_secret) {
                warnings.push(format!(
                    "destinations[{i}].signing_secret: destination {:?} is signed with the development \
                     secret shipped in config/relayd.toml; set a secret of its own before real use",
                    destination.name
                ));
            }
        }
        warnings.extend(
            self.sources
                .iter()
                .enumerate()
                .filter(|(_, s)| s.kind == SourceKind::None)
                .map(|(i, s)| {
                    format!(
                        "sources[{i}].kind: source {:?} has kind \"none\": anyone can post events to it \
                     (for local testing only)",
                        s.name
                    )
                }),
        );
        warnings
    }
}
