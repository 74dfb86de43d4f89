//! The verification keys: a JWKS parsed once into decoding keys by `kid`, swapped whole
//! when it is reloaded. Keys only ever come from configuration (a file, a URL, or the dev
//! key of `serve`), never from a token's `jku`, `x5u` or embedded `jwk`.

use std::collections::{BTreeSet, HashMap};

use sha2::{Digest, Sha256};

use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// One usable key.
pub struct Key {
    /// The decoding key.
    pub decoding: DecodingKey,
    /// The algorithm the JWK pins, if it names one.
    pub algorithm: Option<Algorithm>,
}

/// The keys in force.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Key>,
    without_kid: Vec<Key>,
    /// SHA-256 of each usable JWK as parsed, to tell whether a reload removed a key.
    fingerprints: BTreeSet<[u8; 32]>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .field("without_kid", &self.without_kid.len())
            .finish()
    }
}

impl KeySet {
    /// Parses a JWKS document. Keys that are not for signatures or cannot be used are
    /// skipped and named in the returned warnings; a document without one usable key is an
    /// error.
    pub fn from_jwks(json: &[u8]) -> Result<(Self, Vec<String>), String> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Self::default();
        let mut warnings = Vec::new();
        for jwk in &set.keys {
            let name = jwk
                .common
                .key_id
                .clone()
                .unwrap_or_else(|| String::from("(no kid)"));
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                warnings.push(format!("key `{name}` is for encryption; skipped"));
                continue;
            }
            let decoding = match DecodingKey::from_jwk(jwk) {
                Ok(k) => k,
                Err(e) => {
                    warnings.push(format!("key `{name}` cannot be used: {e}"));
                    continue;
                }
            };
            let algorithm = match jwk
                .common
                .key_algorithm
                .map(|a| a.to_string().parse::<Algorithm>())
            {
                None => None,
                Some(Ok(a)) => Some(a),
                Some(Err(_)) => {
                    warnings.push(format!("key `{name}` names an algorithm we do not verify"));
                    continue;
                }
            };
            let key = Key {
                decoding,
                algorithm,
            };
            let canonical = serde_json::to_vec(jwk).map_err(|e| format!("key `{name}`: {e}"))?;
            keys.fingerprints.insert(Sha256::digest(&canonical).into());
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), key);
                }
                None => keys.without_kid.push(key),
            }
        }
        if keys.is_empty() {
            return Err(String::from("the JWKS holds no usable signing key"));
        }
        Ok((keys, warnings))
    }

    /// The key for a token's `kid`. A token without `kid` is accepted only when the set has
    /// exactly one key.
    pub fn find(&self, kid: Option<&str>) -> Option<&Key> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None => match (self.by_kid.len(), self.without_kid.len()) {
                (1, 0) => self.by_kid.values().next(),
                (0, 1) => self.without_kid.first(),
                _ => None,
            },
        }
    }

    /// Whether there is no key at all.
    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty() && self.without_kid.is_empty()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    /// Whether every key of `other` is still here (same `kid`, same key material).
    pub fn holds_all_of(&self, other: &Self) -> bool {
        other.fingerprints.is_subset(&self.fingerprints)
    }
}
