//! `clawpen up --tls`: the console and API over HTTPS with a self-signed
//! certificate, for reaching them from a phone on the LAN. The certificate
//! is made once and kept in the state dir (`tls/cert.pem`, `tls/key.pem`,
//! key 0600), so its SHA-256 fingerprint, printed at start-up, stays the
//! same and can be checked once on the phone.
//!
//! Handshakes run in their own tasks: a client that opens a connection and
//! sends nothing cannot hold up everyone else's `accept`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to finish its handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path} is not a usable PEM certificate or key: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] tokio_rustls::rustls::Error),
}

/// The certificate in use and its fingerprint.
pub struct Identity {
    pub acceptor: TlsAcceptor,
    /// SHA-256 of the certificate (DER), `AB:CD:...` as browsers show it.
    pub fingerprint: String,
    pub cert_path: PathBuf,
}

/// Loads the certificate from `dir`, making one (valid for `localhost`,
/// loopback and `listen`'s address) the first time.
pub fn identity(dir: &Path, listen: IpAddr) -> Result<Identity, TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if !cert_path.exists() || !key_path.exists() {
        generate(dir, &cert_path, &key_path, listen)?;
    }
    let pem_err = |path: &Path| {
        let path = path.to_owned();
        move |e: tokio_rustls::rustls::pki_types::pem::Error| TlsError::Pem {
            path,
            reason: e.to_string(),
        }
    };
    let cert = CertificateDer::from_pem_file(&cert_path).map_err(pem_err(&cert_path))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(pem_err(&key_path))?;
    let fingerprint = fingerprint(&cert);
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Identity {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        fingerprint,
        cert_path,
    })
}

fn generate(dir: &Path, cert_path: &Path, key_path: &Path, listen: IpAddr) -> Result<(), TlsError> {
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if !listen.is_unspecified() && !listen.is_loopback() {
        names.push(listen.to_string());
    }
    let certified = rcgen::generate_simple_self_signed(names)?;
    crate::private_file::write_private(key_path, certified.signing_key.serialize_pem().as_bytes())
        .map_err(|e| TlsError::Io {
            action: "write",
            path: e.path,
            source: e.source,
        })?;
    // The certificate last: its presence means both files are complete.
    let cert_tmp = cert_path.with_extension("pem.tmp");
    std::fs::write(&cert_tmp, certified.cert.pem()).map_err(io("write", &cert_tmp))?;
    std::fs::rename(&cert_tmp, cert_path).map_err(io("rename", &cert_tmp))?;
    Ok(())
}

/// `AB:CD:...`: the certificate's SHA-256, as browsers show it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A listener whose connections arrive with their TLS handshake done.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    _accept: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let accept = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            local,
            ready,
            _accept: accept,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(pair) => pair,
            // The accept task never ends on its own.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let first = identity(&tls, "192.168.1.7".parse().unwrap()).unwrap();
        let second = identity(&tls, "192.168.1.7".parse().unwrap()).unwrap();
        assert_eq!(first.fingerprint, second.fingerprint);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tls.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A damaged certificate is a clear error, not a new identity.
        std::fs::write(tls.join("cert.pem"), "garbage").unwrap();
        let err = identity(&tls, "127.0.0.1".parse().unwrap()).err().unwrap();
        assert!(err.to_string().contains("cert.pem"), "{err}");
    }
}
