//! An endpoint's URL, parsed.

use pushpull_core::Error;

/// A parsed `http(s)://host:port/path` target.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) text: String,
    pub(super) https: bool,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) path_and_query: String,
}

impl Target {
    pub(super) fn parse(text: &str) -> Result<Target, Error> {
        let uri: http::Uri = text
            .parse()
            .map_err(|e| Error::bad_request(format!("url {text:?} is not a URL: {e}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(Error::bad_request(format!(
                    "url {text:?} must start with https:// or http://"
                )));
            }
        };
        let host =
            uri.host().ok_or_else(|| Error::bad_request(format!("url {text:?} has no host")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(Target {
            text: text.to_owned(),
            https,
            host,
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
            path_and_query: uri.path_and_query().map_or("/".into(), |p| p.as_str().to_owned()),
        })
    }
}
