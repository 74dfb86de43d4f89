//! Ed25519 signing keys in files (PKCS#8 PEM, created mode 0600 when missing) and their
//! public halves as JWKS documents: the dev signing key and the identity assertion's key.

use std::path::Path;

use base64::Engine;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};

/// An Ed25519 key read from a PKCS#8 PEM file.
pub fn read_ed25519(path: &Path) -> Result<SigningKey, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("`{}`: cannot read the key: {e}", path.display()))?;
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| format!("`{}`: not an Ed25519 PKCS#8 key: {e}", path.display()))
}

/// The Ed25519 key at `path`, created (PKCS#8 PEM, mode 0600) when the file does not exist;
/// and whether it was created.
pub fn ed25519_key(path: &Path) -> Result<(SigningKey, bool), String> {
    if path.exists() {
        return read_ed25519(path).map(|k| (k, false));
    }
    let signing = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = signing
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| format!("cannot encode a new Ed25519 key: {e}"))?;
    portcullis_ledger::private_file::create(path, pem.as_bytes()).map_err(|e| e.to_string())?;
    Ok((signing, true))
}

/// The public half of `key` as a JWKS document with one key, `kid`.
pub fn ed25519_jwks(key: &SigningKey, kid: &str) -> Vec<u8> {
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
    serde_json::to_vec(&serde_json::json!({
        "keys": [{
            "kty": "OKP", "crv": "Ed25519", "x": x,
            "kid": kid, "alg": "EdDSA", "use": "sig"
        }]
    }))
    .unwrap_or_default()
}
