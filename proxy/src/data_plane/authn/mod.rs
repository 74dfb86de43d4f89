//! Authentication: `Authorization: Bearer <JWT>` checked against the configured keys.
//!
//! - Algorithms come from an allow-list; symmetric ones are refused outright, so a token
//!   signed with HMAC over a public key (RS256 → HS256 confusion) never verifies.
//! - `iss` (one string), `aud` and `exp` are required; `exp`, `nbf` and `iat` are judged
//!   against the data plane's own clock (pinned by `context.fixed_time` too), with a
//!   configured leeway: a token issued in the future beyond it is refused.
//! - A token whose header names `crit` extensions is refused: none is understood
//!   (RFC 7515 §4.1.11).
//! - A verified token is cached under the SHA-256 of the whole token, never past its `exp`,
//!   so a signature is checked once per token rather than once per request. When a key
//!   leaves the key set, every cached token is verified again, so a removed key stops the
//!   tokens it signed at once.
//! - A `kid` the key set does not hold asks the key source for a refetch (at most once per
//!   cooldown) and the request is refused: no network call happens on the request path.
//!
//! Failures are typed ([`AuthnError`]); the data plane turns them into 401 responses in one
//! place.

pub mod keys;
pub mod source;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Validation};
use portcullis_model::{EntityRef, PrincipalKind, principal_ref};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use keys::KeySet;

/// Parses an `alg` name from configuration; symmetric algorithms are refused.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg: Algorithm = name
        .parse()
        .map_err(|_| format!("`{name}` is not a JWS algorithm"))?;
    if alg.family() == AlgorithmFamily::Hmac {
        return Err(format!(
            "`{name}` is symmetric; only public-key algorithms are accepted"
        ));
    }
    Ok(alg)
}

/// Why a request was not authenticated. Every variant is a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthnError {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <token>`.
    NotBearer,
    /// The token is not a JWT.
    Malformed,
    /// The header is larger than allowed.
    TooLarge,
    /// The token's `alg` is not allowed, or does not fit its key.
    AlgorithmNotAllowed,
    /// No key for the token's `kid`.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// Past `exp`.
    Expired,
    /// Before `nbf`.
    NotYetValid,
    /// Wrong `iss`.
    WrongIssuer,
    /// Wrong `aud`.
    WrongAudience,
    /// A required claim (`exp`, `iss`, `aud`, subject) is missing or malformed.
    MissingClaim,
    /// `iat` is later than now, beyond the leeway.
    IssuedInFuture,
    /// The header names `crit` extensions.
    CriticalHeader,
    /// No keys are loaded yet.
    NoKeys,
}

impl AuthnError {
    /// A short, stable code (metric label and log field).
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::NotBearer => "not_bearer",
            Self::Malformed => "malformed",
            Self::TooLarge => "too_large",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim => "missing_claim",
            Self::IssuedInFuture => "issued_in_future",
            Self::CriticalHeader => "critical_header",
            Self::NoKeys => "no_keys",
        }
    }

    /// The RFC 6750 `error` parameter: none when no credentials were sent.
    pub fn bearer_error(self) -> Option<&'static str> {
        match self {
            Self::Missing => None,
            Self::NotBearer | Self::TooLarge => Some("invalid_request"),
            _ => Some("invalid_token"),
        }
    }

    /// Every code, for metric initialisation.
    pub const ALL: [Self; 15] = [
        Self::Missing,
        Self::NotBearer,
        Self::Malformed,
        Self::TooLarge,
        Self::AlgorithmNotAllowed,
        Self::UnknownKey,
        Self::BadSignature,
        Self::Expired,
        Self::NotYetValid,
        Self::WrongIssuer,
        Self::WrongAudience,
        Self::MissingClaim,
        Self::IssuedInFuture,
        Self::CriticalHeader,
        Self::NoKeys,
    ];
}

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `User::"<sub>"` or, for client-credentials tokens, `Service::"<sub>"`.
    pub principal: EntityRef,
    /// The tenant claim, if any (the store's tenant decides).
    pub tenant: Option<String>,
    /// Authenticated with a second factor (`amr` / `acr`).
    pub mfa: bool,
    /// Risk score claim, 0..100 (an unreadable claim counts as 100).
    pub risk_score: Option<i64>,
    /// Device id claim.
    pub device_id: Option<String>,
    /// `sid` and `jti`, checked against revoked sessions on every request.
    pub session_ids: Vec<String>,
    /// `exp`, seconds since the epoch.
    pub expires_at: i64,
    /// `iat`, seconds since the epoch, if the token says (checked against a revocation of
    /// all the principal's sessions).
    pub issued_at: Option<i64>,
}

/// Which claims say what (`auth.claims`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNames {
    /// The principal id.
    pub subject: String,
    /// The principal's tenant (informational: the store's tenant is authoritative).
    pub tenant: String,
    /// Risk score 0..100.
    pub risk_score: String,
    /// Device id.
    pub device_id: String,
    /// `amr` values that count as a second factor.
    pub mfa_amr: Vec<String>,
    /// `acr` values that count as a second factor.
    pub mfa_acr: Vec<String>,
    /// A token is a service's (client credentials) when this claim ...
    pub service_claim: String,
    /// ... has this value.
    pub service_value: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            subject: String::from("sub"),
            tenant: String::from("tenant"),
            risk_score: String::from("risk_score"),
            device_id: String::from("device_id"),
            mfa_amr: ["mfa", "otp", "hwk", "swk", "sms", "fpt", "face", "pop"]
                .map(String::from)
                .to_vec(),
            mfa_acr: Vec::new(),
            service_claim: String::from("gty"),
            service_value: String::from("client-credentials"),
        }
    }
}

/// Authentication settings, prepared from `auth` by the application.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Required issuer.
    pub issuer: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// Allowed algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Leeway for `exp`/`nbf`.
    pub leeway_seconds: u64,
    /// Cap on the `Authorization` header.
    pub max_token_bytes: usize,
    /// Cooldown between refetches caused by unknown `kid`s.
    pub unknown_kid_cooldown: Duration,
    /// Claim names.
    pub claims: ClaimNames,
}

/// A verified token's identity, and the key-set generation it was verified under.
#[derive(Clone)]
struct Verified {
    identity: Arc<Identity>,
    key_generation: u64,
}

/// Verifies bearer tokens.
pub struct Authenticator {
    settings: AuthSettings,
    keys: ArcSwap<KeySet>,
    /// Moves on whenever a key leaves the set: tokens cached under an older generation are
    /// verified again.
    key_generation: std::sync::atomic::AtomicU64,
    verified: moka::sync::Cache<[u8; 32], Verified>,
    refetch: tokio::sync::Notify,
    started: Instant,
    /// Milliseconds since `started` of the last refetch request, -1 if none.
    last_refetch_ms: AtomicI64,
    keys_loaded: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuer", &self.settings.issuer)
            .field("keys", &self.keys.load())
            .finish_non_exhaustive()
    }
}

/// Cached identities live until their token's `exp`.
struct UntilExpiry;

impl moka::Expiry<[u8; 32], Verified> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Verified,
        _created_at: Instant,
    ) -> Option<Duration> {
        // Memory only: whether a cached token is still valid is judged on every hit
        // against the data plane's clock.
        let now = jiff::Timestamp::now().as_second();
        Some(Duration::from_secs(
            u64::try_from(value.identity.expires_at.saturating_sub(now)).unwrap_or(0),
        ))
    }
}

impl Authenticator {
    /// An authenticator with no keys yet (see [`Self::set_keys`]).
    pub fn new(settings: AuthSettings, cache_entries: u64) -> Self {
        Self {
            settings,
            keys: ArcSwap::from_pointee(KeySet::default()),
            key_generation: std::sync::atomic::AtomicU64::new(0),
            verified: moka::sync::Cache::builder()
                .max_capacity(cache_entries)
                .expire_after(UntilExpiry)
                .build(),
            refetch: tokio::sync::Notify::new(),
            started: Instant::now(),
            last_refetch_ms: AtomicI64::new(-1),
            keys_loaded: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// Replaces the key set. When a key leaves it, every cached token is verified again
    /// on its next use, so tokens signed by the removed key stop at once; a refresh that
    /// only keeps or adds keys leaves the cache alone.
    pub fn set_keys(&self, keys: KeySet) {
        let previous = self.keys.swap(Arc::new(keys));
        if !self.keys.load().holds_all_of(&previous) {
            self.key_generation.fetch_add(1, Ordering::AcqRel);
            self.verified.invalidate_all();
        }
        self.keys_loaded.store(true, Ordering::Release);
    }

    /// Whether a key set was loaded at least once (readiness).
    pub fn has_keys(&self) -> bool {
        self.keys_loaded.load(Ordering::Acquire)
    }

    /// Resolves when a token named an unknown `kid` (at most once per cooldown).
    pub async fn refetch_requested(&self) {
        self.refetch.notified().await;
    }

    fn request_refetch(&self) {
        let now = i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let cooldown = i64::try_from(self.settings.unknown_kid_cooldown.as_millis()).unwrap_or(0);
        let last = self.last_refetch_ms.load(Ordering::Relaxed);
        if (last < 0 || now - last >= cooldown)
            && self
                .last_refetch_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.refetch.notify_one();
        }
    }

    /// Authenticates from the raw `Authorization` header value, at `now` (seconds). Returns
    /// the identity and whether it came from the verified-token cache.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        now: i64,
    ) -> Result<(Arc<Identity>, bool), AuthnError> {
        let header = authorization.ok_or(AuthnError::Missing)?;
        if header.len() > self.settings.max_token_bytes {
            return Err(AuthnError::TooLarge);
        }
        let header = std::str::from_utf8(header).map_err(|_| AuthnError::NotBearer)?;
        let (scheme, token) = header.split_once(' ').ok_or(AuthnError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthnError::NotBearer);
        }
        let token = token.trim();
        if token.is_empty() || token.contains(' ') {
            return Err(AuthnError::Malformed);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Read before the keys: a key removed while this token is verified leaves it cached
        // under an old generation, verified again next time.
        let generation = self.key_generation.load(Ordering::Acquire);
        if let Some(hit) = self.verified.get(&digest)
            && hit.key_generation == generation
        {
            let leeway = i64::try_from(self.settings.leeway_seconds).unwrap_or(0);
            if hit.identity.expires_at + leeway > now {
                return Ok((hit.identity, true));
            }
            self.verified.invalidate(&digest);
            return Err(AuthnError::Expired);
        }
        let claims = self.verified_claims(token, &self.settings.audiences, now)?;
        let identity = Arc::new(identity_of(&claims, &self.settings.claims)?);
        self.verified.insert(
            digest,
            Verified {
                identity: Arc::clone(&identity),
                key_generation: generation,
            },
        );
        Ok((identity, false))
    }

    /// The claims of `token` once its header, signature, issuer, an audience among
    /// `audiences`, and `exp`/`nbf`/`iat` at `now` (seconds) check out (no cache: admin
    /// JWTs use this).
    pub fn verified_claims(
        &self,
        token: &str,
        audiences: &[String],
        now: i64,
    ) -> Result<Map<String, Value>, AuthnError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthnError::Malformed)?;
        // No `crit` extension is understood here; RFC 7515 §4.1.11 says to refuse then.
        if header.crit.is_some() {
            return Err(AuthnError::CriticalHeader);
        }
        if !self.settings.algorithms.contains(&header.alg) {
            return Err(AuthnError::AlgorithmNotAllowed);
        }
        let keys = self.keys.load();
        if keys.is_empty() {
            return Err(AuthnError::NoKeys);
        }
        let Some(key) = keys.find(header.kid.as_deref()) else {
            if header.kid.is_some() {
                self.request_refetch();
            }
            return Err(AuthnError::UnknownKey);
        };
        if key.algorithm.is_some_and(|a| a != header.alg)
            || key.decoding.family() != header.alg.family()
        {
            return Err(AuthnError::AlgorithmNotAllowed);
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        // Time is judged below, on our clock, not the library's system time.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = self.settings.leeway_seconds;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthnError::Expired,
                ErrorKind::ImmatureSignature => AuthnError::NotYetValid,
                ErrorKind::InvalidIssuer => AuthnError::WrongIssuer,
                ErrorKind::InvalidAudience => AuthnError::WrongAudience,
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                    AuthnError::MissingClaim
                }
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::InvalidKeyFormat
                | ErrorKind::MissingAlgorithm => AuthnError::AlgorithmNotAllowed,
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidEcdsaKey
                | ErrorKind::InvalidEddsaKey
                | ErrorKind::InvalidRsaKey(_) => AuthnError::BadSignature,
                _ => AuthnError::Malformed,
            })?;
        let claims = data.claims;
        if !claims.get("iss").is_some_and(Value::is_string) {
            return Err(AuthnError::WrongIssuer);
        }
        let leeway = i64::try_from(self.settings.leeway_seconds).unwrap_or(0);
        let time = |name: &str| match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or(AuthnError::MissingClaim),
        };
        let exp = time("exp")?.ok_or(AuthnError::MissingClaim)?;
        if exp.saturating_add(leeway) <= now {
            return Err(AuthnError::Expired);
        }
        if time("nbf")?.is_some_and(|nbf| nbf.saturating_sub(leeway) > now) {
            return Err(AuthnError::NotYetValid);
        }
        if time("iat")?.is_some_and(|iat| iat.saturating_sub(leeway) > now) {
            return Err(AuthnError::IssuedInFuture);
        }
        Ok(claims)
    }
}

/// The identity a verified claim set describes.
fn identity_of(claims: &Map<String, Value>, names: &ClaimNames) -> Result<Identity, AuthnError> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let subject = text(&names.subject)
        .filter(|s| !s.is_empty())
        .ok_or(AuthnError::MissingClaim)?;
    let expires_at = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(AuthnError::MissingClaim)?;
    let kind = if text(&names.service_claim).as_deref() == Some(names.service_value.as_str()) {
        PrincipalKind::Service
    } else {
        PrincipalKind::User
    };
    let amr_mfa = claims
        .get("amr")
        .and_then(Value::as_array)
        .is_some_and(|amr| {
            amr.iter()
                .filter_map(Value::as_str)
                .any(|m| names.mfa_amr.iter().any(|n| n == m))
        });
    let acr_mfa = text("acr").is_some_and(|acr| names.mfa_acr.contains(&acr));
    let risk_score = claims.get(&names.risk_score).map(|v| match v {
        Value::Number(n) => n
            .as_f64()
            .map_or(100, |f| f.round().clamp(0.0, 100.0) as i64),
        Value::String(s) => s.trim().parse::<f64>().map_or(100, |f| {
            if f.is_finite() {
                f.round().clamp(0.0, 100.0) as i64
            } else {
                100
            }
        }),
        _ => 100,
    });
    let session_ids = ["sid", "jti"].iter().filter_map(|c| text(c)).collect();
    Ok(Identity {
        principal: principal_ref(kind, &subject),
        tenant: text(&names.tenant),
        mfa: amr_mfa || acr_mfa,
        risk_score,
        device_id: text(&names.device_id),
        session_ids,
        expires_at,
        issued_at: claims.get("iat").and_then(Value::as_i64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_unknown_algorithms_are_refused() {
        assert!(parse_algorithm("RS256").is_ok());
        assert!(parse_algorithm("EdDSA").is_ok());
        assert!(parse_algorithm("HS256").unwrap_err().contains("symmetric"));
        assert!(parse_algorithm("none").is_err());
    }

    #[test]
    fn claims_map_to_an_identity() {
        let names = ClaimNames::default();
        let claims: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "sub": "billing", "exp": 10, "gty": "client-credentials", "amr": ["pwd", "otp"],
            "risk_score": "17.4", "sid": "s1", "jti": "j1", "tenant": "t1"
        }))
        .unwrap();
        let id = identity_of(&claims, &names).unwrap();
        assert_eq!(id.principal.to_string(), r#"Service::"billing""#);
        assert!(id.mfa);
        assert_eq!(id.risk_score, Some(17));
        assert_eq!(id.session_ids, ["s1", "j1"]);
        let odd: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"sub": "a", "exp": 1, "risk_score": [1]}))
                .unwrap();
        assert_eq!(identity_of(&odd, &names).unwrap().risk_score, Some(100));
        let nosub: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"exp": 1})).unwrap();
        assert_eq!(identity_of(&nosub, &names), Err(AuthnError::MissingClaim));
    }
}
