//! Loading and layering: built-in defaults, then the TOML file, then `RELAYD__…`
//! variables; then `env:` secrets are read and everything is checked. Startup,
//! `check-config` and every other command load through [`Config::load`].

use std::path::Path;

use super::{invalid, Config, Error, DEFAULT_CONFIG_PATH};

impl Config {
    /// Loads defaults, then the file, then `RELAYD__…` variables; resolves `env:`
    /// secrets and validates. `path` is `--config`; without it the default file is
    /// optional.
    pub fn load(path: Option<&Path>) -> Result<Self, Error> {
        let file = match path {
            Some(path) => config::File::from(path).required(true),
            None => config::File::with_name(DEFAULT_CONFIG_PATH).required(false),
        };
        let path_shown = path.map_or(DEFAULT_CONFIG_PATH.to_string(), |p| p.display().to_string());
        let layered = config::Config::builder()
            .add_source(file.format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("RELAYD")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("broker.urls"),
            )
            .build()
            .map_err(|e| Error::File {
                path: path_shown,
                message: e.to_string(),
            })?;
        // `broker.url` has a default, so only the layers can tell whether it was set.
        let url_set = layered.get_string("broker.url").is_ok();
        let mut config: Config = layered
            .try_deserialize()
            .map_err(|e| Error::Parse(tidy_key_paths(&e.to_string())))?;
        if url_set && !config.broker.urls.is_empty() {
            return Err(invalid(
                "broker.urls",
                "set beside broker.url; give one node as broker.url or all nodes as broker.urls",
            ));
        }
        config.resolve_secrets()?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_secrets(&mut self) -> Result<(), Error> {
        self.database.url.resolve("database.url")?;
        self.broker.url.resolve("broker.url")?;
        for (i, url) in self.broker.urls.iter_mut().enumerate() {
            url.resolve(&format!("broker.urls[{i}]"))?;
        }
        if let Some(token) = &mut self.ops.admin_token {
            token.resolve("ops.admin_token")?;
        }
        for (i, source) in self.sources.iter_mut().enumerate() {
            for (j, secret) in source.secrets.iter_mut().enumerate() {
                secret.resolve(&format!("sources[{i}].secrets[{j}]"))?;
            }
            if let Some(token) = &mut source.verify_token {
                token.resolve(&format!("sources[{i}].verify_token"))?;
            }
        }
        for (i, destination) in self.destinations.iter_mut().enumerate() {
            destination
                .signing_secret
                .resolve(&format!("destinations[{i}].signing_secret"))?;
            destination.url.resolve(&format!("destinations[{i}].url"))?;
        }
        for (i, hook) in self.operator_hooks.iter_mut().enumerate() {
            hook.signing_secret
                .resolve(&format!("operator_hooks[{i}].signing_secret"))?;
            hook.url.resolve(&format!("operator_hooks[{i}].url"))?;
        }
        Ok(())
    }
}

/// The config crate writes `sources[0]kind`; show `sources[0].kind` like our own errors.
pub(super) fn tidy_key_paths(message: &str) -> String {
    let mut tidy = String::with_capacity(message.len() + 8);
    let mut previous = None;
    for c in message.chars() {
        if previous == Some(']') && (c.is_ascii_alphabetic() || c == '_') {
            tidy.push('.');
        }
        tidy.push(c);
        previous = Some(c);
    }
    tidy
}
