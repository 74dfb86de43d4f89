//! The HTTPS listeners' certificate: read from the configured PEM files, served through a
//! rustls certificate resolver, and re-read when either file changes. A pair that does not
//! load keeps the certificate in force (logged, counted as a rejected reload). And the
//! verifier of client certificates, for the admin and the data-plane listeners alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{
    ClientCertVerifier, ClientHello, CryptoProvider, ResolvesServerCert, RootCertStore,
    WebPkiClientVerifier,
};

use crate::config::ClientAuth;

/// A verifier of client certificates chaining to the CAs of `ca_file`; with `Optional`,
/// a client may also present none. The error says what is wrong with the file.
pub fn client_verifier(
    ca_file: &Path,
    client_auth: ClientAuth,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    pingora::tls::load_ca_file_into_store(ca_file, &mut roots)
        .map_err(|e| format!("`{}`: {e}", ca_file.display()))?;
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
    let verifier = match client_auth {
        ClientAuth::Required => verifier,
        ClientAuth::Optional => verifier.allow_unauthenticated(),
    };
    verifier
        .build()
        .map_err(|e| format!("`{}`: {e}", ca_file.display()))
        .map(|v| v as Arc<dyn ClientCertVerifier>)
}

/// A certificate that follows its files.
#[derive(Debug)]
pub struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

fn load(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, String> {
    let (Some(cert), Some(key)) = (cert_file.to_str(), key_file.to_str()) else {
        return Err(String::from("certificate paths must be UTF-8"));
    };
    let (chain, key) = pingora::tls::load_certs_and_key_files(cert, key)
        .map_err(|e| format!("cannot read the certificate or key: {e}"))?
        .ok_or_else(|| {
            format!(
                "`{}` holds no certificate or `{}` no private key",
                cert_file.display(),
                key_file.display()
            )
        })?;
    let provider = CryptoProvider::get_default()
        .ok_or_else(|| String::from("no TLS crypto provider installed"))?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("`{}`: unusable private key: {e}", key_file.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    Ok(certified)
}

impl ReloadingCert {
    /// Loads the pair; an error names the file.
    pub fn new(cert_file: PathBuf, key_file: PathBuf) -> Result<Self, String> {
        let certified = load(&cert_file, &key_file)?;
        Ok(Self {
            current: ArcSwap::from_pointee(certified),
            cert_file,
            key_file,
        })
    }

    /// Re-reads the files whenever they change, until the process ends; counts each reload
    /// in `reloads` (`applied` or `rejected`).
    pub async fn watch(self: Arc<Self>, reloads: prometheus::IntCounterVec) {
        let files = vec![self.cert_file.clone(), self.key_file.clone()];
        crate::file_watch::reload_on_change(files, "TLS certificate", reloads, || {
            let certified = load(&self.cert_file, &self.key_file)?;
            self.current.store(Arc::new(certified));
            Ok(())
        })
        .await;
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
