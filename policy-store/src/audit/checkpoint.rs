//! Signed checkpoints: every so often the writer signs `(seq, head hash, time)` with an
//! Ed25519 key and appends it to `checkpoints.jsonl`. A verifier holding the public key can
//! then tell a complete ledger from one whose tail was cut off or which was rebuilt from a
//! fresh genesis — neither of which the hash chain alone reveals.
//!
//! The writer signs one at every start too (seq 0 and the genesis hash for an empty
//! ledger), so a ledger that ever ran has at least one.
//!
//! The signed message is the UTF-8 text
//! `portcullis-audit-checkpoint\n<seq>\n<hash>\n<ts>`; the signature is base64 (standard).

use std::path::Path;

use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The checkpoint file in a ledger directory.
pub const FILE: &str = "checkpoints.jsonl";

/// One checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The last record covered.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// When the checkpoint was written.
    pub ts: String,
    /// Ed25519 signature of [`message`], base64.
    pub signature: String,
}

/// The signed text.
pub fn message(seq: u64, hash: &str, ts: &str) -> String {
    format!("portcullis-audit-checkpoint\n{seq}\n{hash}\n{ts}")
}

impl Checkpoint {
    /// Signs a checkpoint.
    pub fn sign(key: &SigningKey, seq: u64, hash: &str, ts: &str) -> Self {
        let signature = key.sign(message(seq, hash, ts).as_bytes());
        Self {
            seq,
            hash: hash.to_owned(),
            ts: ts.to_owned(),
            signature: base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
        }
    }

    /// Whether the signature is `key`'s.
    pub fn is_signed_by(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&self.signature) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&bytes) else {
            return false;
        };
        key.verify(
            message(self.seq, &self.hash, &self.ts).as_bytes(),
            &signature,
        )
        .is_ok()
    }
}

/// Reads a signing key (PKCS#8 PEM), or creates one (mode 0600) with its public key beside it
/// (`<path>.pub`, SPKI PEM) when the file does not exist.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, String> {
    if path.exists() {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("`{}`: cannot read: {e}", path.display()))?;
        return SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| format!("`{}`: not an Ed25519 PKCS#8 key: {e}", path.display()));
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| format!("cannot encode the checkpoint key: {e}"))?;
    crate::private_file::create(path, pem.as_bytes())?;
    let public = key
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| format!("cannot encode the checkpoint public key: {e}"))?;
    let public_path = public_key_path(path);
    std::fs::write(&public_path, public)
        .map_err(|e| format!("`{}`: cannot write: {e}", public_path.display()))?;
    Ok(key)
}

/// Where the public key of a key file is written.
pub fn public_key_path(key: &Path) -> std::path::PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".pub");
    name.into()
}

/// Reads a public key (SPKI PEM).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, String> {
    let pem = std::fs::read_to_string(path)
        .map_err(|e| format!("`{}`: cannot read: {e}", path.display()))?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
        format!(
            "`{}`: not an Ed25519 public key (SPKI PEM): {e}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_only_under_its_key_and_content() {
        let key = SigningKey::generate(&mut rand_core::OsRng);
        let other = SigningKey::generate(&mut rand_core::OsRng);
        let cp = Checkpoint::sign(&key, 7, "ab", "t");
        assert!(cp.is_signed_by(&key.verifying_key()));
        assert!(!cp.is_signed_by(&other.verifying_key()));
        let moved = Checkpoint { seq: 8, ..cp };
        assert!(!moved.is_signed_by(&key.verifying_key()));
    }
}
