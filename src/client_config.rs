//! The client's configuration and the registry that turns it into a client.

use std::sync::Arc;

use std::collections::BTreeMap;
use std::time::Duration;

use pushpull_core::{BearerToken, Client, Error, ErrorKind};

use crate::{AUTO, Registry};
use serde::{Deserialize, Serialize};

/// Which transport to use and how. Changing the transport is a one-line change here and no
/// change in code.
///
/// ```toml
/// transport = "poll"          # or "auto"
/// url = "http://127.0.0.1:7070"
///
/// [poll]                      # the transport's own settings, all optional
/// poll_interval = "500ms"
/// ```
///
/// Each transport's settings are a section named after it, holding the keys of its crate's
/// `ClientConfig` (`[sse]`, `[ws]`, …, or a transport registered at run time). A section is
/// checked when a client is made: a key the transport does not know, or a section no registered
/// transport has, is an error that names it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ClientConfig {
    /// A transport name, or `auto` to take the best one the server and network allow.
    pub transport: String,
    /// The server's base URL.
    pub url: String,
    /// With `auto`: how long each transport's probe (a subscription opened and dropped) may
    /// take before the next transport is tried.
    #[serde(with = "pushpull_core::duration_text")]
    pub probe_timeout: Duration,
    /// With `https://`: a PEM file of certificate authorities to trust besides the system's,
    /// for every transport.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// The bearer token every transport sends: `token = "…"` for a fixed one, or in code
    /// [`BearerToken::from_source`] with the application's hook, which renews it when the
    /// server refuses it.
    #[serde(skip_serializing_if = "is_unset")]
    pub token: BearerToken,
    /// Each transport's settings, by transport name.
    #[serde(flatten)]
    pub settings: BTreeMap<String, toml::Table>,
}

fn is_unset(token: &BearerToken) -> bool {
    !token.is_set()
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            transport: AUTO.into(),
            url: "http://127.0.0.1:7070".into(),
            probe_timeout: Duration::from_secs(5),
            ca_file: None,
            token: BearerToken::none(),
            settings: BTreeMap::new(),
        }
    }
}

/// Read through a TOML table: the three keys above, and every other key a transport's section.
impl<'de> Deserialize<'de> for ClientConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let table = toml::Table::deserialize(deserializer)?;
        let mut config = ClientConfig::default();
        for (key, value) in table {
            let text = |value: toml::Value| match value {
                toml::Value::String(text) => Ok(text),
                other => Err(D::Error::custom(format!("{key}: expected a string, got {other}"))),
            };
            match key.as_str() {
                "transport" => config.transport = text(value)?,
                "url" => config.url = text(value)?,
                "ca_file" => config.ca_file = Some(text(value)?.into()),
                "token" => config.token = BearerToken::fixed(text(value)?),
                "probe_timeout" => {
                    let value = text(value)?;
                    config.probe_timeout = pushpull_core::duration_text::parse(&value)
                        .map_err(|why| D::Error::custom(format!("probe_timeout: {why}")))?;
                }
                _ => match value {
                    toml::Value::Table(section) => {
                        config.settings.insert(key, section);
                    }
                    _ => {
                        return Err(D::Error::custom(format!(
                            "unknown key `{key}`: expected transport, url, probe_timeout, ca_file, \
                             token or a transport's [section]"
                        )));
                    }
                },
            }
        }
        Ok(config)
    }
}

impl ClientConfig {
    /// A configuration for `transport` at `url`, with default settings.
    pub fn new(transport: impl Into<String>, url: impl Into<String>) -> Self {
        Self { transport: transport.into(), url: url.into(), ..Self::default() }
    }

    /// Parses TOML; unknown keys are errors that name the key.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        toml::from_str(text)
            .map_err(|e: toml::de::Error| Error::new(ErrorKind::Config, e.message().trim()))
    }

    /// Sets one of `transport`'s settings (its section is made if need be).
    pub fn set(mut self, transport: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        self.settings.entry(transport.to_owned()).or_default().insert(key.into(), value.into());
        self
    }

    /// The settings section of `transport` as a typed config, with `url` filled in; an error
    /// names the key as `[transport] key`.
    pub fn section<T: serde::de::DeserializeOwned>(&self, transport: &str) -> Result<T, Error> {
        let mut table = self.settings.get(transport).cloned().unwrap_or_default();
        table.insert("url".into(), toml::Value::String(self.url.clone()));
        if let Some(ca_file) = &self.ca_file {
            let path = ca_file.to_string_lossy().into_owned();
            table.entry("ca_file").or_insert(toml::Value::String(path));
        }
        crate::server_config::from_table(table)
            .map_err(|why| Error::new(ErrorKind::Config, format!("[{transport}] {why}")))
    }
}

/// Connects with the default registry: `pushpull::connect(&config)`.
pub async fn connect(config: &ClientConfig) -> Result<Arc<dyn Client>, Error> {
    Registry::with_defaults().connect(config).await
}
