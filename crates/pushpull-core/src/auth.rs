//! The bearer token a client sends, and the hook that renews it.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::Result;

/// Where a client gets its bearer token: the application's hook.
///
/// A client asks once and keeps the answer. When the server refuses that token (it expired,
/// most often: a long-lived response ends when its token does), the client asks again with
/// `rejected` set to the refused token, then resumes from its cursor, so nothing is lost.
///
/// ```
/// use pushpull_core::{Error, TokenSource, async_trait};
///
/// struct FromMyAuthServer;
///
/// #[async_trait]
/// impl TokenSource for FromMyAuthServer {
///     async fn token(&self, rejected: Option<&str>) -> Result<String, Error> {
///         // Ask the application's auth service for a fresh token here.
///         let _ = rejected;
///         Ok("eyJ…".to_owned())
///     }
/// }
/// ```
#[async_trait]
pub trait TokenSource: Send + Sync {
    /// The token to send. `rejected` is the token the server just refused, when that is why
    /// it is asked.
    async fn token(&self, rejected: Option<&str>) -> Result<String>;
}

/// A client's credentials: no token, a fixed one (`token = "…"` in its settings), or one from
/// a [`TokenSource`] that renews it. Cheap to clone; clones share the current token. Its
/// `Debug` never shows the token.
#[derive(Clone, Default)]
pub struct BearerToken(Option<Arc<Shared>>);

struct Shared {
    current: Mutex<Option<String>>,
    source: Option<Arc<dyn TokenSource>>,
}

impl BearerToken {
    /// No token.
    pub fn none() -> Self {
        Self(None)
    }

    /// Always `token`; a refusal is final.
    pub fn fixed(token: impl Into<String>) -> Self {
        Self(Some(Arc::new(Shared { current: Mutex::new(Some(token.into())), source: None })))
    }

    /// Tokens from `source`, asked for the first one when first needed.
    pub fn from_source(source: Arc<dyn TokenSource>) -> Self {
        Self(Some(Arc::new(Shared { current: Mutex::new(None), source: Some(source) })))
    }

    /// Whether a token is sent at all.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Whether a refused token can be replaced (there is a source to ask).
    pub fn renews(&self) -> bool {
        self.0.as_ref().is_some_and(|shared| shared.source.is_some())
    }

    /// The token to send now, if any.
    pub async fn get(&self) -> Result<Option<String>> {
        let Some(shared) = &self.0 else { return Ok(None) };
        if let Some(current) = shared.current.lock().expect("token lock").clone() {
            return Ok(Some(current));
        }
        let Some(source) = &shared.source else { return Ok(None) };
        let token = source.token(None).await?;
        *shared.current.lock().expect("token lock") = Some(token.clone());
        Ok(Some(token))
    }

    /// A replacement for `rejected`, which the server refused: `None` when there is no source
    /// to ask (the refusal is final). If another request already renewed it, that token.
    pub async fn renew(&self, rejected: &str) -> Result<Option<String>> {
        let Some(shared) = &self.0 else { return Ok(None) };
        let Some(source) = &shared.source else { return Ok(None) };
        {
            let current = shared.current.lock().expect("token lock");
            if let Some(current) = current.as_deref()
                && current != rejected
            {
                return Ok(Some(current.to_owned()));
            }
        }
        let token = source.token(Some(rejected)).await?;
        *shared.current.lock().expect("token lock") = Some(token.clone());
        Ok(Some(token))
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.0 {
            None => "none",
            Some(shared) if shared.source.is_some() => "from a source",
            Some(_) => "fixed",
        };
        write!(f, "BearerToken({what})")
    }
}

/// Two are equal when they are clones of one another (or both none).
impl PartialEq for BearerToken {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for BearerToken {}

/// Read from settings as a string: a fixed token.
impl<'de> serde::Deserialize<'de> for BearerToken {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let token = String::deserialize(deserializer)?;
        if token.is_empty() {
            return Ok(Self::none());
        }
        Ok(Self::fixed(token))
    }
}

/// Written as nothing but a placeholder: settings that are saved or logged never hold a token.
impl serde::Serialize for BearerToken {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.is_set() { "<redacted>" } else { "" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize);

    #[async_trait]
    impl TokenSource for Counting {
        async fn token(&self, _rejected: Option<&str>) -> Result<String> {
            Ok(format!("t{}", self.0.fetch_add(1, Ordering::SeqCst)))
        }
    }

    #[tokio::test]
    async fn a_source_is_asked_once_then_again_only_for_the_rejected_token() {
        let token = BearerToken::from_source(Arc::new(Counting(AtomicUsize::new(0))));
        assert_eq!(token.get().await.unwrap().as_deref(), Some("t0"));
        assert_eq!(token.get().await.unwrap().as_deref(), Some("t0"));
        assert_eq!(token.renew("t0").await.unwrap().as_deref(), Some("t1"));
        // A second request refused with the old token takes the renewed one.
        assert_eq!(token.renew("t0").await.unwrap().as_deref(), Some("t1"));
        assert_eq!(token.clone().get().await.unwrap().as_deref(), Some("t1"));
    }

    #[tokio::test]
    async fn a_fixed_token_is_not_renewed_and_never_shown() {
        let token = BearerToken::fixed("secret");
        assert_eq!(token.renew("secret").await.unwrap(), None);
        assert!(!format!("{token:?}").contains("secret"));
        assert!(!serde_json::to_string(&token).unwrap().contains("secret"));
    }
}
