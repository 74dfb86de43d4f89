//! Signed checkpoints: every so often the writer signs `(seq, head hash, time, previous
//! checkpoint)` with an Ed25519 key and appends it to `checkpoints.jsonl`. A verifier holding
//! the public key can then tell a complete ledger from one whose tail was cut off or which
//! was rebuilt from a fresh genesis — neither of which the hash chain alone reveals — and,
//! since each checkpoint names the digest of the one before it ([`Checkpoint::digest`]),
//! from one whose checkpoint file lost a checkpoint in the middle or at its start.
//!
//! The writer signs one at every start too (seq 0 and the genesis hash for an empty
//! ledger), so a ledger that ever ran has at least one.
//!
//! The signed message is the UTF-8 text
//! `portcullis-audit-checkpoint-v2\n<seq>\n<hash>\n<ts>\n<prev>`, where `prev` is the
//! previous checkpoint's digest (64 zeros for the first); the signature is base64
//! (standard). A checkpoint without `prev` (written before checkpoints were linked) signs
//! `portcullis-audit-checkpoint\n<seq>\n<hash>\n<ts>`.

use std::path::Path;

use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::LedgerError;

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
    /// The previous checkpoint's [`Checkpoint::digest`] (64 zeros for the first); absent
    /// only in checkpoints written before they were linked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    /// Ed25519 signature of [`Checkpoint::message`], base64.
    pub signature: String,
}

impl Checkpoint {
    /// Signs a checkpoint of the head `(seq, hash)` following the checkpoint whose digest
    /// is `prev`.
    pub fn sign(key: &SigningKey, seq: u64, hash: &str, ts: &str, prev: &str) -> Self {
        let mut checkpoint = Self {
            seq,
            hash: hash.to_owned(),
            ts: ts.to_owned(),
            prev: Some(prev.to_owned()),
            signature: String::new(),
        };
        let signature = key.sign(checkpoint.message().as_bytes());
        checkpoint.signature =
            base64::engine::general_purpose::STANDARD.encode(signature.to_bytes());
        checkpoint
    }

    /// The signed text.
    pub fn message(&self) -> String {
        let (seq, hash, ts) = (self.seq, &self.hash, &self.ts);
        match &self.prev {
            Some(prev) => format!("portcullis-audit-checkpoint-v2\n{seq}\n{hash}\n{ts}\n{prev}"),
            None => format!("portcullis-audit-checkpoint\n{seq}\n{hash}\n{ts}"),
        }
    }

    /// What the next checkpoint names as `prev`: SHA-256 (hex) of the signed text, which
    /// holds this one's own `prev`, so the digest covers every checkpoint before it.
    pub fn digest(&self) -> String {
        super::sha256_hex(self.message().as_bytes())
    }

    /// Whether the signature is `key`'s.
    pub fn is_signed_by(&self, key: &VerifyingKey) -> bool {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&self.signature) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&bytes) else {
            return false;
        };
        key.verify(self.message().as_bytes(), &signature).is_ok()
    }
}

/// The digest of the last checkpoint in `path` that parses (a torn last line from a crash
/// is passed over), or the genesis value when there is none: what the next one links to.
/// Reads only the file's last 64 KiB (hundreds of checkpoints): a start costs the same
/// however long the ledger has run.
pub fn last_digest(path: &Path) -> Result<String, LedgerError> {
    use std::io::{Read, Seek, SeekFrom};
    const WINDOW: u64 = 64 * 1024;
    let cannot = |e: std::io::Error| LedgerError::io(path, "read")(e);
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(String::from(super::GENESIS));
        }
        Err(e) => return Err(cannot(e)),
    };
    let len = file.metadata().map_err(cannot)?.len();
    let from = len.saturating_sub(WINDOW);
    file.seek(SeekFrom::Start(from)).map_err(cannot)?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(cannot)?;
    let text = String::from_utf8_lossy(&tail);
    // Past the start of the file, the window's first line may be cut: not a checkpoint.
    let whole = if from > 0 {
        text.split_once('\n').map_or("", |(_, rest)| rest)
    } else {
        &text
    };
    Ok(whole
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Checkpoint>(line).ok())
        .map_or_else(|| String::from(super::GENESIS), |cp| cp.digest()))
}

/// Reads a signing key (PKCS#8 PEM), or creates one (mode 0600) with its public key beside it
/// (`<path>.pub`, SPKI PEM) when the file does not exist.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, LedgerError> {
    if path.exists() {
        let pem = std::fs::read_to_string(path).map_err(LedgerError::io(path, "read"))?;
        return SigningKey::from_pkcs8_pem(&pem).map_err(|e| LedgerError::NotAKey {
            path: path.to_path_buf(),
            expected: "an Ed25519 PKCS#8 key",
            detail: e.to_string(),
        });
    }
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| LedgerError::Encode {
            what: "checkpoint key",
            detail: e.to_string(),
        })?;
    crate::private_file::create(path, pem.as_bytes())?;
    let public = key
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| LedgerError::Encode {
            what: "checkpoint public key",
            detail: e.to_string(),
        })?;
    let public_path = public_key_path(path);
    std::fs::write(&public_path, public).map_err(LedgerError::io(&public_path, "write"))?;
    Ok(key)
}

/// Where the public key of a key file is written.
pub fn public_key_path(key: &Path) -> std::path::PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".pub");
    name.into()
}

/// Reads a public key (SPKI PEM).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, LedgerError> {
    let pem = std::fs::read_to_string(path).map_err(LedgerError::io(path, "read"))?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| LedgerError::NotAKey {
        path: path.to_path_buf(),
        expected: "an Ed25519 public key (SPKI PEM)",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_only_under_its_key_and_content() {
        let key = SigningKey::generate(&mut rand_core::OsRng);
        let other = SigningKey::generate(&mut rand_core::OsRng);
        let cp = Checkpoint::sign(&key, 7, "ab", "t", super::super::GENESIS);
        assert!(cp.is_signed_by(&key.verifying_key()));
        assert!(!cp.is_signed_by(&other.verifying_key()));
        let moved = Checkpoint {
            seq: 8,
            ..cp.clone()
        };
        assert!(!moved.is_signed_by(&key.verifying_key()));
        let relinked = Checkpoint {
            prev: Some(cp.digest()),
            ..cp.clone()
        };
        assert!(!relinked.is_signed_by(&key.verifying_key()));
        let next = Checkpoint::sign(&key, 9, "cd", "t", &cp.digest());
        assert_ne!(
            next.digest(),
            cp.digest(),
            "each digest covers its own content"
        );
    }
}
