//! The identity assertion (`identity_assertion`): a short-lived JWT, signed with an Ed25519
//! key of Portcullis's own, telling the upstream whom a request was allowed for, so that it
//! can verify its caller instead of trusting headers. The public key is published as a JWKS
//! on the ops listener (`/.well-known/jwks.json`); the assertion travels in
//! `x-portcullis-assertion`, which no client can send (every `x-portcullis-` header is
//! stripped from client requests).
//!
//! Claims: `iss`, `aud`, `sub` (the principal id), `principal_type` (`user` or `service`),
//! `tenant` (when the principal has one), `roles` (in force for this request), `iat` and
//! `exp` on the data plane's clock. Nothing in it belongs to one request (the decision id
//! travels in `x-portcullis-decision-id`), so one assertion per principal, tenant and roles
//! is signed and reused for the first half of its life: signing is the costly part.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Grant;

/// What an assertion says, as signed.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    principal_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<&'a str>,
    roles: &'a [String],
    iat: i64,
    exp: i64,
}

/// Signs identity assertions with one key.
pub struct Asserter {
    key: EncodingKey,
    header: Header,
    issuer: String,
    audience: String,
    lifetime_seconds: i64,
    jwks: Vec<u8>,
    /// Signed assertions by principal, tenant and roles, with their `iat`.
    minted: moka::sync::Cache<String, (i64, Arc<str>)>,
}

impl std::fmt::Debug for Asserter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asserter")
            .field("kid", &self.header.kid)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Assertions kept for reuse.
const MINTED_ENTRIES: u64 = 100_000;

impl Asserter {
    /// An asserter with the Ed25519 key at `key_file` (created, mode 0600, when missing),
    /// naming itself `issuer` to `audience`, each assertion valid `lifetime_seconds`.
    pub fn new(
        key_file: &Path,
        issuer: &str,
        audience: &str,
        lifetime_seconds: u64,
    ) -> Result<Self, String> {
        let (signing, created) = crate::ed25519_key::ed25519_key(key_file)?;
        if created {
            tracing::info!(key = %key_file.display(), "identity assertion key created");
        }
        let pem = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_pem(
            &signing,
            ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF,
        )
        .map_err(|e| format!("`{}`: {e}", key_file.display()))?;
        let key = EncodingKey::from_ed_pem(pem.as_bytes())
            .map_err(|e| format!("`{}`: {e}", key_file.display()))?;
        // The key id names the key itself: a new key file is a new `kid`, which verifiers
        // that cache the JWKS see as unknown and fetch anew.
        let digest = Sha256::digest(signing.verifying_key().as_bytes());
        let kid = portcullis_ledger::hex::hex(digest.get(..8).unwrap_or_default());
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        let lifetime_seconds = i64::try_from(lifetime_seconds).unwrap_or(i64::MAX);
        Ok(Self {
            key,
            header,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            lifetime_seconds,
            jwks: crate::ed25519_key::ed25519_jwks(&signing, &kid),
            minted: moka::sync::Cache::builder()
                .max_capacity(MINTED_ENTRIES)
                .time_to_live(Duration::from_secs(
                    u64::try_from(lifetime_seconds / 2).unwrap_or(0),
                ))
                .build(),
        })
    }

    /// The JWKS document with the public key.
    pub fn jwks(&self) -> &[u8] {
        &self.jwks
    }

    /// The assertion for `grant` at `now` (seconds on the data plane's clock): one signed
    /// less than half a lifetime ago for the same principal, tenant and roles, or a new one.
    pub fn assertion(&self, grant: &Grant, now: i64) -> Result<Arc<str>, String> {
        let mut key = String::with_capacity(
            grant.subject.len() + grant.roles.iter().map(|r| r.len() + 1).sum::<usize>() + 32,
        );
        for part in [
            grant.principal_type,
            grant.subject.as_str(),
            grant.tenant.as_deref().unwrap_or_default(),
        ] {
            key.push_str(part);
            key.push('\0');
        }
        for role in &grant.roles {
            key.push_str(role);
            key.push('\0');
        }
        if let Some((iat, token)) = self.minted.get(&key)
            && (iat..iat + self.lifetime_seconds / 2).contains(&now)
        {
            return Ok(token);
        }
        let claims = Claims {
            iss: &self.issuer,
            aud: &self.audience,
            sub: &grant.subject,
            principal_type: grant.principal_type,
            tenant: grant.tenant.as_deref(),
            roles: &grant.roles,
            iat: now,
            exp: now.saturating_add(self.lifetime_seconds),
        };
        let token: Arc<str> = jsonwebtoken::encode(&self.header, &claims, &self.key)
            .map_err(|e| format!("cannot sign the identity assertion: {e}"))?
            .into();
        self.minted.insert(key, (now, Arc::clone(&token)));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::Value;

    use super::*;

    fn grant(subject: &str, roles: &[&str]) -> Grant {
        Grant {
            subject: subject.to_owned(),
            principal_type: "user",
            tenant: Some(String::from("t1")),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            decision_id: String::from("d"),
            assertion: None,
        }
    }

    #[test]
    fn an_assertion_verifies_against_the_published_jwks_and_is_reused_for_half_its_life() {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-assertion-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let asserter = Asserter::new(&dir.join("key.pem"), "portcullis", "app", 60).unwrap();
        let again = Asserter::new(&dir.join("key.pem"), "portcullis", "app", 60).unwrap();
        assert_eq!(
            asserter.jwks(),
            again.jwks(),
            "the key file is read, not replaced"
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let now = 1_800_000_000;
        let token = asserter
            .assertion(&grant("alice", &["guest"]), now)
            .unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(asserter.jwks()).unwrap();
        let jwk = &jwks.keys[0];
        assert_eq!(
            jsonwebtoken::decode_header(&*token).unwrap().kid,
            jwk.common.key_id
        );
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["app"]);
        validation.set_issuer(&["portcullis"]);
        validation.validate_exp = false;
        let claims = jsonwebtoken::decode::<Value>(
            &*token,
            &DecodingKey::from_jwk(jwk).unwrap(),
            &validation,
        )
        .unwrap()
        .claims;
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["tenant"], "t1");
        assert_eq!(claims["roles"], serde_json::json!(["guest"]));
        assert_eq!(claims["exp"].as_i64(), Some(now + 60));

        let same = |at: i64, g: &Grant| *asserter.assertion(g, at).unwrap() == *token;
        assert!(same(now + 29, &grant("alice", &["guest"])), "reused");
        assert!(
            !same(now + 30, &grant("alice", &["guest"])),
            "half its life gone"
        );
        assert!(
            !same(now, &grant("alice", &["guest", "member"])),
            "other roles"
        );
        assert!(!same(now, &grant("bob", &["guest"])), "another principal");
    }
}
