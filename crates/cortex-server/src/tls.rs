//! Native TLS with rustls (ring): TLS 1.3 preferred, TLS 1.2 minimum, AEAD suites only (rustls
//! has no CBC, RC4 or TLS 1.1 at all), ALPN h2 and http/1.1. The certificate and key are read
//! again on SIGHUP; connections already open keep their session, new ones get the new
//! certificate.

use std::io::BufReader;
use std::path::Path;
use std::sync::{Arc, RwLock};

use cortex_config::TlsPaths;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("CORTEX_TLS_CERT: cannot read {0}")]
    ReadCert(String),
    #[error("CORTEX_TLS_CERT: {0} holds no certificate")]
    NoCert(String),
    #[error("CORTEX_TLS_KEY: cannot read a private key from {0}")]
    Key(String),
    #[error("CORTEX_TLS_CERT/CORTEX_TLS_KEY: the certificate and key do not make a usable TLS configuration")]
    Config,
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|_| TlsError::ReadCert(shown.clone()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::ReadCert(shown.clone()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(shown));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|_| TlsError::Key(shown.clone()))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .ok()
        .flatten()
        .ok_or(TlsError::Key(shown))
}

pub fn server_config(paths: &TlsPaths) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&paths.cert)?;
    let key = load_key(&paths.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|_| TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|_| TlsError::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The current server configuration, swapped whole on reload.
pub struct ReloadableTls {
    paths: TlsPaths,
    current: RwLock<Arc<ServerConfig>>,
}

impl ReloadableTls {
    pub fn load(paths: &TlsPaths) -> Result<Arc<Self>, TlsError> {
        let current = server_config(paths)?;
        Ok(Arc::new(Self {
            paths: paths.clone(),
            current: RwLock::new(current),
        }))
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }

    /// Reads the files again; on any error the old configuration stays in use.
    pub fn reload(&self) {
        match server_config(&self.paths) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                tracing::info!("TLS certificate reloaded");
            }
            Err(err) => {
                tracing::error!(error = %err, "TLS reload failed; keeping the previous certificate")
            }
        }
    }
}
