//! The operator's commands: `config check`, `config show` and `token`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pushpull::{Error, ErrorKind, Registry, ServerConfig};

/// `pushpull config check FILE`: every error, each naming its key, on stderr.
pub(crate) fn check(path: &Path) -> Result<(), Error> {
    match ServerConfig::check_with(Some(path), std::env::vars(), &Registry::with_defaults()) {
        Ok(_) => {
            println!("{}: ok", path.display());
            Ok(())
        }
        Err(errors) => {
            for error in &errors {
                eprintln!("{}: {}", path.display(), error.message());
            }
            let count = errors.len();
            let what = if count == 1 { "error" } else { "errors" };
            Err(Error::new(ErrorKind::Config, format!("{}: {count} {what}", path.display())))
        }
    }
}

/// `pushpull config show [--config FILE]`: the effective configuration as TOML, one dotted key
/// a line, each with where its value came from; secrets masked.
pub(crate) fn show(path: Option<&Path>) -> Result<(), Error> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let config = ServerConfig::load(path, env.clone())?;
    let file: toml::Table = match path {
        Some(path) => std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or_default(),
        None => toml::Table::new(),
    };
    let from_env = pushpull::env_settings(env)?;
    let effective = toml::Table::try_from(&config)
        .map_err(|e| Error::new(ErrorKind::Config, format!("cannot show the config: {e}")))?;
    let mut lines = Vec::new();
    leaves(&effective, &mut Vec::new(), &mut lines);
    for (key, value) in lines {
        let source = match from_env.iter().find(|(_, path, _)| *path == key) {
            Some((name, _, _)) => name.clone(),
            None if lookup(&file, &key).is_some() => match path {
                Some(path) => path.display().to_string(),
                None => "file".into(),
            },
            None => "default".into(),
        };
        println!("{} = {}  # {source}", key.join("."), masked(key.last().unwrap(), &value));
    }
    Ok(())
}

/// Every leaf of `table` (a value that is not a table) with its key path.
fn leaves(table: &toml::Table, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, toml::Value)>) {
    for (key, value) in table {
        path.push(key.clone());
        match value {
            toml::Value::Table(inner) if !inner.is_empty() => leaves(inner, path, out),
            other => out.push((path.clone(), other.clone())),
        }
        path.pop();
    }
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let value = table.get(first)?;
    if rest.is_empty() { Some(value) } else { lookup(value.as_table()?, rest) }
}

/// `value`, with a secret hidden: a key that names one (`secret`, `password`, `token`), or the
/// password of a URL (`redis://:PASSWORD@host`).
fn masked(key: &str, value: &toml::Value) -> toml::Value {
    let secret_key = ["secret", "password", "token"].iter().any(|word| key.contains(word))
        && !key.ends_with("_file");
    match value {
        toml::Value::String(_) if secret_key => toml::Value::String("********".into()),
        toml::Value::String(text) => toml::Value::String(mask_url_password(text)),
        // A list of URLs (a Redis Cluster's nodes) hides each one's password.
        toml::Value::Array(items) => {
            toml::Value::Array(items.iter().map(|item| masked(key, item)).collect())
        }
        other => other.clone(),
    }
}

fn mask_url_password(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else { return text.to_owned() };
    let rest = &text[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return text.to_owned() };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => {
            format!("{}://{}:********{}", &text[..scheme_end], &userinfo[..colon], &rest[at..])
        }
        None => text.to_owned(),
    }
}

/// What `pushpull token` signs.
#[derive(clap::Args)]
pub(crate) struct TokenRequest {
    /// For HS256/384/512: the file of the shared secret (as `[auth]`'s `secret_file`).
    #[arg(long, value_name = "FILE")]
    pub(crate) secret_file: Option<PathBuf>,
    /// For the other algorithms: a PEM file with the private key.
    #[arg(long, value_name = "FILE")]
    pub(crate) key_file: Option<PathBuf>,
    /// The signing algorithm, as the key's `algorithm` in `[auth]`.
    #[arg(long, default_value = "HS256")]
    pub(crate) algorithm: String,
    /// The key id (`kid`) the server's key has, if it has one.
    #[arg(long)]
    pub(crate) kid: Option<String>,
    /// Whom the token is for (`sub`).
    #[arg(long, default_value = "developer")]
    pub(crate) sub: String,
    /// A topic pattern it may read (`orders:*`, `news`, `*`); repeat for more.
    #[arg(long, value_name = "PATTERN")]
    pub(crate) subscribe: Vec<String>,
    /// A topic pattern it may publish to; repeat for more.
    #[arg(long, value_name = "PATTERN")]
    pub(crate) publish: Vec<String>,
    /// It may manage the server (the webhook API, metrics) and use every topic.
    #[arg(long)]
    pub(crate) admin: bool,
    /// How long it stays valid: `30m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) ttl: Duration,
    /// The issuer (`iss`) the server's `[auth] issuer` asks for.
    #[arg(long)]
    pub(crate) issuer: Option<String>,
    /// The audience (`aud`) the server's `[auth] audience` asks for.
    #[arg(long)]
    pub(crate) audience: Option<String>,
}

/// `pushpull token`: a JWT with pushpull's rights claim, signed with a key of `[auth]`.
pub(crate) fn token(request: TokenRequest) -> Result<String, Error> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let bad = |message: String| Error::new(ErrorKind::Config, message);
    let algorithm: Algorithm = request.algorithm.parse().map_err(|_| {
        bad(format!(
            "--algorithm {}: expected HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, \
             PS512, ES256, ES384 or EdDSA",
            request.algorithm
        ))
    })?;
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))
    };
    let key = match (algorithm, &request.secret_file, &request.key_file) {
        (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512, Some(path), None) => {
            // As `[auth]` reads `secret_file`: its bytes, a trailing newline removed.
            let mut secret = read(path)?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            if secret.len() < 32 {
                return Err(bad(format!(
                    "{}: the secret has {} bytes; [auth] refuses secrets under 32 bytes",
                    path.display(),
                    secret.len()
                )));
            }
            EncodingKey::from_secret(&secret)
                .map_err(|e| bad(format!("{}: the secret cannot be used: {e}", path.display())))?
        }
        (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512, _, _) => {
            return Err(bad(format!("{algorithm:?} signs with --secret-file (and no --key-file)")));
        }
        (_, None, Some(path)) => {
            let pem = read(path)?;
            let parsed = match algorithm {
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
                _ => EncodingKey::from_rsa_pem(&pem),
            };
            parsed.map_err(|e| {
                bad(format!("{}: not a PEM private key for {algorithm:?}: {e}", path.display()))
            })?
        }
        _ => {
            return Err(bad(format!(
                "{algorithm:?} signs with --key-file (a PEM private key, and no --secret-file)"
            )));
        }
    };
    if request.ttl.is_zero() {
        return Err(bad("--ttl: must be more than zero".into()));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut claims = serde_json::json!({
        "sub": request.sub,
        "iat": now,
        "exp": now + request.ttl.as_secs().max(1),
        "pushpull": {
            "subscribe": request.subscribe,
            "publish": request.publish,
            "admin": request.admin,
        },
    });
    if let Some(issuer) = request.issuer {
        claims["iss"] = issuer.into();
    }
    if let Some(audience) = request.audience {
        claims["aud"] = audience.into();
    }
    let mut header = Header::new(algorithm);
    header.kid = request.kid;
    jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| bad(format!("cannot sign the token: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_and_secret_keys_are_masked() {
        assert_eq!(mask_url_password("redis://:hunter2@db:6379/0"), "redis://:********@db:6379/0");
        assert_eq!(mask_url_password("rediss://user:pw@db"), "rediss://user:********@db");
        assert_eq!(mask_url_password("redis://db:6379"), "redis://db:6379");
        let nodes = toml::Value::Array(vec![
            toml::Value::String("redis://:pw@a:7000".into()),
            toml::Value::String("redis://b:7000".into()),
        ]);
        assert_eq!(
            masked("cluster", &nodes),
            toml::Value::Array(vec![
                toml::Value::String("redis://:********@a:7000".into()),
                toml::Value::String("redis://b:7000".into()),
            ]),
            "each node's password is hidden"
        );
        assert_eq!(mask_url_password("http://h/p@q"), "http://h/p@q");
        let secret = masked("secret", &toml::Value::String("s3cr3t".into()));
        assert_eq!(secret.as_str(), Some("********"));
        let file = masked("secret_file", &toml::Value::String("/etc/pushpull/secret".into()));
        assert_eq!(file.as_str(), Some("/etc/pushpull/secret"));
    }
}
