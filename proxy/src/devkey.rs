//! The dev signing key of the embedded default: an Ed25519 key generated into the data
//! directory on the first `portcullis serve`, trusted by that `serve` only when no JWKS is
//! configured, and used by `portcullis token` to mint tokens for trying things out.
//!
//! It is a development convenience: the key file is private to its owner (mode 0600), its
//! tokens name the issuer [`DEV_ISSUER`], and `serve` says loudly at start that it trusts it.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;

use crate::ed25519_key::{ed25519_jwks, ed25519_key, read_ed25519};

/// `iss` of dev tokens.
pub const DEV_ISSUER: &str = "portcullis-dev";
/// `aud` of dev tokens (the default accepted audience).
pub const DEV_AUDIENCE: &str = "portcullis";
/// `kid` of the dev key.
pub const DEV_KID: &str = "portcullis-dev-1";
/// The key file in the data directory.
pub const KEY_FILE: &str = "dev-signing-key.pem";

/// The dev key.
pub struct DevKey {
    signing: SigningKey,
    path: PathBuf,
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl DevKey {
    /// Reads the key from `data_dir`.
    pub fn load(data_dir: &Path) -> Result<Self, String> {
        let path = data_dir.join(KEY_FILE);
        let signing = read_ed25519(&path).map_err(|e| {
            format!("{e}; `portcullis serve` creates the dev signing key on its first start")
        })?;
        Ok(Self { signing, path })
    }

    /// Reads the key, or creates it (mode 0600) when the file does not exist. Returns the key
    /// and whether it was created.
    pub fn load_or_create(data_dir: &Path) -> Result<(Self, bool), String> {
        let path = data_dir.join(KEY_FILE);
        let (signing, created) = ed25519_key(&path)?;
        Ok((Self { signing, path }, created))
    }

    /// Where the key lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> Vec<u8> {
        ed25519_jwks(&self.signing, DEV_KID)
    }

    /// Signs `claims` as an EdDSA JWT with the dev `kid`.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, String> {
        let pem = self
            .signing
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| e.to_string())?;
        let key =
            jsonwebtoken::EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(String::from(DEV_KID));
        jsonwebtoken::encode(&header, claims, &key).map_err(|e| e.to_string())
    }
}
