//! An endpoint's URL, parsed.

use pushpull_core::Error;

/// A parsed `http://host:port/path` target.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) text: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) path_and_query: String,
}

impl Target {
    pub(super) fn parse(text: &str) -> Result<Target, Error> {
        let uri: http::Uri = text
            .parse()
            .map_err(|e| Error::bad_request(format!("url {text:?} is not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(Error::bad_request(
                    "https endpoints need TLS, which this build does not have yet; use http behind a TLS proxy",
                ));
            }
            _ => return Err(Error::bad_request(format!("url {text:?} must start with http://"))),
        }
        let host =
            uri.host().ok_or_else(|| Error::bad_request(format!("url {text:?} has no host")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(Target {
            text: text.to_owned(),
            host,
            port: uri.port_u16().unwrap_or(80),
            path_and_query: uri.path_and_query().map_or("/".into(), |p| p.as_str().to_owned()),
        })
    }
}
