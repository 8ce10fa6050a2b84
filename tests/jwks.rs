//! `[[auth.jwks]]`: tokens signed by an identity provider are checked with the keys of its JWK
//! Set, served here by a test provider on 127.0.0.1 with throwaway keys. Keys rotate (a token
//! with a new `kid` fetches the set again at once), the server goes on with the keys it has
//! while the provider is down, slow or sends too much, and keys it must not trust (shared
//! secrets) are passed over.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pushpull::ServerConfig;
use pushpull_auth::{AuthConfig, JwksConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the test provider answers.
#[derive(Clone)]
enum Answer {
    Set(Value),
    Status(u16),
    Silent,
    Bytes(usize),
}

/// An identity provider's JWKS endpoint: answers as told, counts the fetches.
struct Provider {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    fetches: Arc<AtomicUsize>,
}

impl Provider {
    async fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (state, count) = (answer.clone(), fetches.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else { return };
                let (state, count) = (state.clone(), count.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let answer = state.lock().unwrap().clone();
                    let (status, body) = match answer {
                        Answer::Set(set) => (200, set.to_string().into_bytes()),
                        Answer::Status(status) => (status, b"{}".to_vec()),
                        Answer::Bytes(size) => (200, vec![b' '; size]),
                        Answer::Silent => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                    };
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                });
            }
        });
        Self { addr, answer, fetches }
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A throwaway ES256 key: its JWK (public) and a signer.
struct Es256 {
    kid: String,
    private_pem: String,
    jwk: Value,
}

impl Es256 {
    fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw(); // 0x04 ‖ x ‖ y
        assert_eq!(point.len(), 65);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        });
        Self { kid: kid.into(), private_pem: pair.serialize_pem(), jwk }
    }

    fn token(&self, topic: &str) -> String {
        sign(&self.kid, &self.private_pem, topic)
    }
}

fn sign(kid: &str, pem: &str, topic: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = json!({ "sub": "idp-user", "exp": exp, "pushpull": { "subscribe": [topic] } });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

fn set(keys: &[&Value]) -> Answer {
    Answer::Set(json!({ "keys": keys }))
}

async fn read(server: SocketAddr, token: &str) -> support::Reply {
    support::raw(
        server,
        &format!("GET /v1/topics/news/messages HTTP/1.1\r\nAuthorization: Bearer {token}"),
        b"",
    )
    .await
}

fn config(provider: &Provider, tune: impl FnOnce(&mut JwksConfig)) -> ServerConfig {
    let mut jwks = JwksConfig::new(format!("http://{}/realms/main/certs", provider.addr));
    jwks.refresh = Duration::from_secs(3600);
    jwks.min_refresh = Duration::from_millis(200);
    tune(&mut jwks);
    let mut auth = AuthConfig::default();
    auth.jwks = vec![jwks];
    let mut config = ServerConfig::default();
    config.auth = Some(auth);
    config
}

#[tokio::test]
async fn tokens_of_the_provider_are_checked_with_its_keys_and_keys_rotate() {
    let first = Es256::new("2026-11");
    let provider = Provider::start(set(&[&first.jwk])).await;
    let server = support::server(config(&provider, |_| {})).await;
    let addr = server.local_addr();

    let reply = read(addr, &first.token("news")).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    // The token grants `news` only.
    let other = support::raw(
        addr,
        &format!(
            "GET /v1/topics/other/messages HTTP/1.1\r\nAuthorization: Bearer {}",
            first.token("news")
        ),
        b"",
    )
    .await;
    assert_eq!(other.status, 403);

    // The provider rotates: a token with the new kid fetches the set again, and passes at once.
    let second = Es256::new("2026-12");
    provider.answer(set(&[&first.jwk, &second.jwk]));
    tokio::time::sleep(Duration::from_millis(250)).await; // past min_refresh
    let before = provider.fetches();
    let reply = read(addr, &second.token("news")).await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(provider.fetches(), before + 1);

    // A key the provider signs with but no set has is refused, after one fetch at most per
    // min_refresh: a flood of unknown kids cannot make the server hammer the provider.
    let stranger = Es256::new("unknown");
    let before = provider.fetches();
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let reply = read(addr, &stranger.token("news")).await;
        assert_eq!(reply.status, 401);
        assert!(String::from_utf8_lossy(&reply.body).contains("unknown"), "names the kid");
    }
    // One fetch per min_refresh (200 ms) at most, however long the requests took.
    let allowed = 1 + (started.elapsed().as_millis() / 200) as usize;
    let fetched = provider.fetches() - before;
    assert!(fetched <= allowed, "{fetched} fetches for 20 requests, at most {allowed} allowed");

    // A forged token under a known kid fails its signature.
    let forged = sign(&first.kid, &stranger.private_pem, "news");
    let reply = read(addr, &forged).await;
    assert_eq!(reply.status, 401);
    assert!(String::from_utf8_lossy(&reply.body).contains("signature"));
}

#[tokio::test]
async fn the_server_keeps_its_keys_while_the_provider_is_down_slow_or_too_big() {
    let key = Es256::new("k1");
    let provider = Provider::start(set(&[&key.jwk])).await;
    let server = support::server(config(&provider, |jwks| {
        jwks.timeout = Duration::from_millis(500);
        jwks.max_bytes = 4096;
    }))
    .await;
    let addr = server.local_addr();
    assert_eq!(read(addr, &key.token("news")).await.status, 200);

    for answer in [Answer::Status(503), Answer::Silent, Answer::Bytes(10_000), Answer::Status(404)]
    {
        provider.answer(answer);
        tokio::time::sleep(Duration::from_millis(250)).await;
        // An unknown kid makes the server try the provider, which fails; the known key stays.
        let stranger = Es256::new("new-kid");
        assert_eq!(read(addr, &stranger.token("news")).await.status, 401);
        assert_eq!(read(addr, &key.token("news")).await.status, 200);
    }
    // Back up: a new key is taken up.
    let next = Es256::new("k2");
    provider.answer(set(&[&key.jwk, &next.jwk]));
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(read(addr, &next.token("news")).await.status, 200);
}

#[tokio::test]
async fn shared_secrets_and_encryption_keys_in_a_set_are_never_used() {
    let secret = b"a shared secret of at least thirty-two bytes!";
    let signing = Es256::new("sig");
    let mut enc = Es256::new("enc");
    enc.jwk["use"] = "enc".into();
    let oct =
        json!({ "kty": "oct", "kid": "oct", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(secret) });
    let provider =
        Provider::start(set(&[&oct, &enc.jwk, &signing.jwk, &json!({"kty": "weird"})])).await;
    let server = support::server(config(&provider, |_| {})).await;
    let addr = server.local_addr();

    assert_eq!(read(addr, &signing.token("news")).await.status, 200, "the usable key is used");
    assert_eq!(read(addr, &enc.token("news")).await.status, 401);
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("oct".into());
    let hs = jsonwebtoken::encode(
        &header,
        &json!({ "exp": exp, "pushpull": { "subscribe": ["news"] } }),
        &jsonwebtoken::EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap();
    assert_eq!(read(addr, &hs).await.status, 401);
}

#[test]
fn a_provider_over_plain_http_elsewhere_is_a_config_error() {
    let cases = [
        ("url = \"http://idp.example.com/jwks\"", "https://"),
        ("url = \"ftp://idp.example.com/jwks\"", "https://"),
        ("url = \"https://idp.example.com/jwks\"\ntimeout = \"0s\"", "timeout"),
        ("url = \"https://idp.example.com/jwks\"\nrefresh = 5", "refresh"),
    ];
    for (section, says) in cases {
        let toml = format!("[[auth.jwks]]\n{section}\n");
        let config = ServerConfig::from_toml(&toml);
        let error = match config {
            Err(error) => error,
            Ok(config) => pushpull_auth::Verifier::new(config.auth.as_ref().unwrap()).unwrap_err(),
        };
        assert!(error.message().contains("auth.jwks"), "{section}: {error}");
        assert!(error.message().contains(says), "{section}: {error}");
    }
}
