//! TLS for servers (rustls, ALPN `h2` and `http/1.1`) and for clients (`https://`, `wss://`,
//! webhook targets), with one crypto provider, ring, named explicitly: a build that also pulls
//! in another provider (aws-lc-rs, say) still works, as nothing here relies on the process-wide
//! default.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use pushpull_core::{Error, ErrorKind};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub use rustls::{ClientConfig as RustlsClientConfig, ServerConfig as RustlsServerConfig};
pub use tokio_rustls::TlsAcceptor;

/// The crypto provider every TLS connection of pushpull uses.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// `[tls]` of a server: where its certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsFiles {
    /// A PEM file with the certificate chain, the server's own certificate first.
    pub cert_file: PathBuf,
    /// A PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl TlsFiles {
    /// The certificate chain in `cert_file` and its private key in `key_file`.
    pub fn new(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        Self { cert_file: cert_file.into(), key_file: key_file.into() }
    }

    /// The rustls configuration these files make: TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`
    /// (so browsers speak HTTP/2 and are not held to six connections per host; WebSocket
    /// upgrades come over `http/1.1` connections).
    pub fn server_config(&self) -> Result<Arc<RustlsServerConfig>, Error> {
        let certs = read_certificates(&self.cert_file, "tls.cert_file")?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file).map_err(|e| {
            config_error(format!(
                "tls.key_file: cannot read a private key from {}: {e}",
                self.key_file.display()
            ))
        })?;
        let mut config = RustlsServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error(format!("tls: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                config_error(format!("tls: the certificate and key do not make a server: {e}"))
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A TLS acceptor of [`server_config`](Self::server_config).
    pub fn acceptor(&self) -> Result<TlsAcceptor, Error> {
        Ok(TlsAcceptor::from(self.server_config()?))
    }
}

/// The client configuration trusting the system's roots plus, if given, the certificate
/// authorities in the PEM file `ca_file` (a private CA). No ALPN: see [`with_alpn`]. Without a
/// CA file the configuration is built once per process and shared.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<RustlsClientConfig>, Error> {
    static DEFAULT: OnceLock<Arc<RustlsClientConfig>> = OnceLock::new();
    match ca_file {
        None => {
            if let Some(config) = DEFAULT.get() {
                return Ok(config.clone());
            }
            let config = build_client_config(None)?;
            Ok(DEFAULT.get_or_init(|| config).clone())
        }
        Some(path) => build_client_config(Some(path)),
    }
}

/// `config` offering `alpn` (such as `http/1.1`): made once where a client is set up, not per
/// connection.
pub fn with_alpn(config: &Arc<RustlsClientConfig>, alpn: &[&[u8]]) -> Arc<RustlsClientConfig> {
    let mut with_alpn = (**config).clone();
    with_alpn.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(with_alpn)
}

fn build_client_config(ca_file: Option<&Path>) -> Result<Arc<RustlsClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(system_roots().iter().cloned());
    if let Some(path) = ca_file {
        let certs = read_certificates(path, "ca_file")?;
        for cert in certs {
            roots.add(cert).map_err(|e| {
                config_error(format!(
                    "ca_file: {} holds an unusable certificate: {e}",
                    path.display()
                ))
            })?;
        }
    }
    let config = RustlsClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(format!("tls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The system's trust anchors, read once per process.
fn system_roots() -> &'static [rustls_pki_types::TrustAnchor<'static>] {
    static ROOTS: OnceLock<Vec<rustls_pki_types::TrustAnchor<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        if let Some(error) = loaded.errors.first() {
            tracing::debug!(%error, "some system certificates could not be read");
        }
        let mut store = rustls::RootCertStore::empty();
        let (added, ignored) = store.add_parsable_certificates(loaded.certs);
        tracing::debug!(added, ignored, "system trust roots loaded");
        store.roots
    })
}

fn read_certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            config_error(format!("{key}: cannot read certificates from {}: {e}", path.display()))
        })?;
    if certs.is_empty() {
        return Err(config_error(format!("{key}: {} holds no certificate", path.display())));
    }
    Ok(certs)
}

fn config_error(message: String) -> Error {
    Error::new(ErrorKind::Config, message)
}

/// A client connection, plain or TLS.
#[derive(Debug)]
pub enum ClientStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// Connects to `addr` and, with `tls`, handshakes as a client of `host` (the name the
    /// certificate must carry), offering the configuration's ALPN (see [`with_alpn`]).
    pub async fn connect(
        addr: impl tokio::net::ToSocketAddrs,
        host: &str,
        tls: Option<&Arc<RustlsClientConfig>>,
    ) -> io::Result<ClientStream> {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let Some(config) = tls else {
            return Ok(ClientStream::Plain(stream));
        };
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?
            .to_owned();
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        Ok(ClientStream::Tls(Box::new(connector.connect(name, stream).await?)))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }
}
