//! A throwaway certificate authority for TLS tests: made at test time, written to a directory
//! of the test's own, gone with it.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};

/// A certificate authority and, signed by it, a server certificate for `localhost` and
/// `127.0.0.1`, as PEM files in a fresh temporary directory (removed on drop).
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    /// Makes the CA and the server's certificate and key.
    pub fn new() -> std::io::Result<Self> {
        let fail = |e: rcgen::Error| std::io::Error::other(e.to_string());
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "pushpull test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(fail)?)
            .map_err(fail)?;
        let server_key = KeyPair::generate().map_err(fail)?;
        let server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(fail)?
            .signed_by(&server_key, &ca)
            .map_err(fail)?;
        let dir = std::env::temp_dir().join(format!(
            "pushpull-ca-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        std::fs::write(dir.join("server.pem"), server.pem())?;
        std::fs::write(dir.join("server.key"), server_key.serialize_pem())?;
        Ok(Self { dir })
    }

    /// The CA's certificate (PEM): what clients trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server's certificate chain (PEM).
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's private key (PEM).
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
