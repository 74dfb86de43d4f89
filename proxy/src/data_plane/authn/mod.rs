//! Authentication: `Authorization: Bearer <JWT>` checked against the keys of its issuer.
//!
//! - Several issuers may be trusted (`auth` and `auth.issuers`), each with its own keys,
//!   audiences, algorithms, claim names and token policy. A token's issuer is chosen by its
//!   `iss` claim, read before the signature is checked, and the token is then verified with
//!   that issuer's keys only: a token naming one issuer and signed with another's key never
//!   verifies, and no key of any other issuer is tried.
//! - Token policy per issuer: a longest lifetime (`exp - iat`), subjects allowed and
//!   refused (`*` patterns), and how long keys stay trusted after the last successful JWKS
//!   fetch; past that, the issuer's tokens get 503 (fail closed) until a fetch succeeds.
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
//! - An issuer may describe principals the store does not hold by their claims
//!   (`unknown_principals: from_claims`, see [`claims`]); the description is built when the
//!   token is verified and cached with it.
//!
//! Failures are typed ([`AuthnError`]); the data plane turns them into 401 responses in one
//! place.

pub mod certificate;
pub mod claims;
pub mod keys;
pub mod source;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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
    /// `iss` names no trusted issuer.
    UnknownIssuer,
    /// `exp - iat` is longer than the issuer allows (or `iat` is missing where a longest
    /// lifetime is set).
    LifetimeTooLong,
    /// The subject is refused by the issuer's subject patterns.
    SubjectNotAllowed,
    /// The issuer's keys were last fetched longer ago than they are trusted.
    KeysStale,
    /// A verified client certificate without the name that identifies a workload.
    NoCertificateName,
    /// A client certificate's SPIFFE ID from a trust domain not allowed.
    UntrustedDomain,
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
            Self::UnknownIssuer => "unknown_issuer",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::SubjectNotAllowed => "subject_not_allowed",
            Self::KeysStale => "keys_stale",
            Self::NoCertificateName => "no_certificate_name",
            Self::UntrustedDomain => "untrusted_domain",
        }
    }

    /// The RFC 6750 `error` parameter: none when no credentials were sent.
    pub fn bearer_error(self) -> Option<&'static str> {
        match self {
            Self::Missing | Self::NoCertificateName | Self::UntrustedDomain => None,
            Self::NotBearer | Self::TooLarge => Some("invalid_request"),
            _ => Some("invalid_token"),
        }
    }

    /// Every code, for metric initialisation.
    pub const ALL: [Self; 21] = [
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
        Self::UnknownIssuer,
        Self::LifetimeTooLong,
        Self::SubjectNotAllowed,
        Self::KeysStale,
        Self::NoCertificateName,
        Self::UntrustedDomain,
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
    /// The principal as the claims describe it, when its issuer takes principals the store
    /// does not hold from their claims.
    pub claimed: Option<Arc<claims::FromClaims>>,
    /// The verified claims, kept only while some route takes context from them
    /// ([`Authenticator::keep_claims`]).
    pub claims: Option<Arc<Map<String, Value>>>,
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

/// Subjects an issuer's tokens may carry (`subjects`): `*` in a pattern stands for any run
/// of characters. A subject matching a `deny` pattern is refused; with `allow` patterns, a
/// subject must match one of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubjectRules {
    /// Subjects accepted (empty: all not denied).
    pub allow: Vec<String>,
    /// Subjects refused, whatever `allow` says.
    pub deny: Vec<String>,
}

impl SubjectRules {
    /// Whether no rule is set.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether `subject` passes.
    pub fn admits(&self, subject: &str) -> bool {
        !self.deny.iter().any(|p| matches_pattern(p, subject))
            && (self.allow.is_empty() || self.allow.iter().any(|p| matches_pattern(p, subject)))
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters (no other
/// character is special).
fn matches_pattern(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        // No `*`: the whole text.
        return rest.is_empty();
    };
    for part in parts {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// One trusted issuer, prepared from `auth` (the first) or an `auth.issuers` entry.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// Allowed algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Claim names.
    pub claims: ClaimNames,
    /// Every subject is of this kind; `None`: the claims say (`claims.service_claim`).
    pub principal_kind: Option<PrincipalKind>,
    /// Longest `exp - iat` accepted, in seconds.
    pub max_token_lifetime_seconds: Option<u64>,
    /// Subjects accepted and refused.
    pub subjects: SubjectRules,
    /// How long keys stay trusted after the last successful load.
    pub keys_max_age: Option<Duration>,
    /// Set when a subject the store does not hold is taken from its claims
    /// (`unknown_principals: from_claims`): where its parts are found.
    pub from_claims: Option<claims::ClaimMapping>,
}

/// Authentication settings, prepared from `auth` by the application.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The trusted issuers; the first is `auth`'s own, whose tokens may also be admin
    /// credentials.
    pub issuers: Vec<IssuerSettings>,
    /// Leeway for `exp`/`nbf`/`iat`.
    pub leeway_seconds: u64,
    /// Cap on the `Authorization` header.
    pub max_token_bytes: usize,
    /// Cooldown between refetches caused by unknown `kid`s.
    pub unknown_kid_cooldown: Duration,
}

/// A verified token's identity, its issuer, and that issuer's key-set generation it was
/// verified under.
#[derive(Clone)]
struct Verified {
    identity: Arc<Identity>,
    issuer: usize,
    key_generation: u64,
}

/// One issuer's keys and their freshness.
struct IssuerKeys {
    keys: ArcSwap<KeySet>,
    /// Moves on whenever a key leaves the set: tokens cached under an older generation are
    /// verified again.
    generation: AtomicU64,
    refetch: tokio::sync::Notify,
    /// Milliseconds since the authenticator started of the last refetch request, -1 if none.
    last_refetch_ms: AtomicI64,
    /// Milliseconds since the authenticator started of the last successful load, -1 if none.
    loaded_ms: AtomicI64,
}

/// Verifies bearer tokens.
pub struct Authenticator {
    settings: AuthSettings,
    /// Beside `settings.issuers`, index for index.
    keys: Vec<IssuerKeys>,
    verified: moka::sync::Cache<[u8; 32], Verified>,
    started: Instant,
    /// Whether identities keep their claims (some route reads them).
    keep_claims: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<&str> = self
            .settings
            .issuers
            .iter()
            .map(|i| i.issuer.as_str())
            .collect();
        f.debug_struct("Authenticator")
            .field("issuers", &issuers)
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

/// The `iss` of a token's payload, read before anything is verified (it only chooses
/// whose keys verify the token).
#[derive(Deserialize)]
struct IssuerClaim {
    iss: Option<String>,
}

/// The `sub` of a token's payload, read without verifying it (for counting failures only).
#[derive(Deserialize)]
struct SubjectClaim {
    sub: Option<String>,
}

/// A token's payload, decoded but not verified.
fn unverified_payload<T: serde::de::DeserializeOwned>(token: &str) -> Option<T> {
    let payload = token.split('.').nth(1)?;
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl Authenticator {
    /// An authenticator with no keys yet (see [`Self::set_keys`]).
    pub fn new(settings: AuthSettings, cache_entries: u64) -> Self {
        let keys = settings
            .issuers
            .iter()
            .map(|_| IssuerKeys {
                keys: ArcSwap::from_pointee(KeySet::default()),
                generation: AtomicU64::new(0),
                refetch: tokio::sync::Notify::new(),
                last_refetch_ms: AtomicI64::new(-1),
                loaded_ms: AtomicI64::new(-1),
            })
            .collect();
        Self {
            settings,
            keys,
            verified: moka::sync::Cache::builder()
                .max_capacity(cache_entries)
                .expire_after(UntilExpiry)
                .build(),
            started: Instant::now(),
            keep_claims: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether identities keep their verified claims: on while some route takes context
    /// attributes from claims (they cost memory in the token cache otherwise). Turned on,
    /// the tokens verified without them are verified again.
    pub fn keep_claims(&self, keep: bool) {
        if !self.keep_claims.swap(keep, Ordering::AcqRel) && keep {
            self.verified.invalidate_all();
        }
    }

    /// The settings.
    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// The first issuer (`auth`'s own): the one admin JWTs come from.
    pub fn primary(&self) -> Option<&IssuerSettings> {
        self.settings.issuers.first()
    }

    fn elapsed_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Replaces issuer `issuer`'s key set (its index in the settings). When a key leaves
    /// it, every token of that issuer in the cache is verified again on its next use, so
    /// tokens signed by the removed key stop at once; a refresh that only keeps or adds
    /// keys leaves the cache alone. Either way the keys count as fresh from now.
    pub fn set_keys(&self, issuer: usize, keys: KeySet) {
        let Some(slot) = self.keys.get(issuer) else {
            return;
        };
        let previous = slot.keys.swap(Arc::new(keys));
        if !slot.keys.load().holds_all_of(&previous) {
            slot.generation.fetch_add(1, Ordering::AcqRel);
        }
        slot.loaded_ms.store(self.elapsed_ms(), Ordering::Release);
    }

    /// Whether every issuer's key set was loaded at least once (readiness).
    pub fn has_keys(&self) -> bool {
        self.keys
            .iter()
            .all(|k| k.loaded_ms.load(Ordering::Acquire) >= 0)
    }

    /// Whether issuer `issuer`'s key set was loaded at least once.
    pub fn has_keys_of(&self, issuer: usize) -> bool {
        self.keys
            .get(issuer)
            .is_some_and(|k| k.loaded_ms.load(Ordering::Acquire) >= 0)
    }

    /// Resolves when a token of issuer `issuer` named an unknown `kid` (at most once per
    /// cooldown).
    pub async fn refetch_requested(&self, issuer: usize) {
        match self.keys.get(issuer) {
            Some(slot) => slot.refetch.notified().await,
            None => std::future::pending().await,
        }
    }

    fn request_refetch(&self, slot: &IssuerKeys) {
        let now = self.elapsed_ms();
        let cooldown = i64::try_from(self.settings.unknown_kid_cooldown.as_millis()).unwrap_or(0);
        let last = slot.last_refetch_ms.load(Ordering::Relaxed);
        if (last < 0 || now - last >= cooldown)
            && slot
                .last_refetch_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.refetch.notify_one();
        }
    }

    /// Issuer `issuer`'s settings and keys.
    fn issuer(&self, issuer: usize) -> Result<(&IssuerSettings, &IssuerKeys), AuthnError> {
        self.settings
            .issuers
            .get(issuer)
            .zip(self.keys.get(issuer))
            .ok_or(AuthnError::UnknownIssuer)
    }

    /// Issuer `issuer`'s keys, refused when not loaded, or last loaded longer ago than they
    /// are trusted.
    fn keys_usable(&self, issuer: usize) -> Result<&IssuerKeys, AuthnError> {
        let (settings, slot) = self.issuer(issuer)?;
        let loaded = slot.loaded_ms.load(Ordering::Acquire);
        if loaded < 0 {
            return Err(AuthnError::NoKeys);
        }
        if let Some(max_age) = settings.keys_max_age {
            let age = u128::try_from(self.elapsed_ms().saturating_sub(loaded)).unwrap_or(0);
            if age > max_age.as_millis() {
                // The fetch loop retries on its own; a request asks it to hurry.
                self.request_refetch(slot);
                return Err(AuthnError::KeysStale);
            }
        }
        Ok(slot)
    }

    /// The issuer whose keys verify `token`: the only one when one is trusted, else the one
    /// its `iss` names.
    fn issuer_of(&self, token: &str) -> Result<usize, AuthnError> {
        if self.settings.issuers.len() == 1 {
            return Ok(0);
        }
        let claim: IssuerClaim = unverified_payload(token).ok_or(AuthnError::Malformed)?;
        let iss = claim.iss.ok_or(AuthnError::MissingClaim)?;
        self.settings
            .issuers
            .iter()
            .position(|i| i.issuer == iss)
            .ok_or(AuthnError::UnknownIssuer)
    }

    /// The subject a bearer token in `authorization` claims, unverified: what a refused
    /// token is counted against by the lockout. `None` when it is no bearer token within
    /// `max_token_bytes` or names none.
    pub fn claimed_subject(&self, authorization: &[u8]) -> Option<String> {
        if authorization.len() > self.settings.max_token_bytes {
            return None;
        }
        let header = std::str::from_utf8(authorization).ok()?;
        let (scheme, token) = header.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        unverified_payload::<SubjectClaim>(token.trim())?.sub
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
        if let Some(hit) = self.verified.get(&digest) {
            let slot = self.keys_usable(hit.issuer)?;
            // A key removed since leaves the token to be verified again below.
            if hit.key_generation == slot.generation.load(Ordering::Acquire) {
                let leeway = i64::try_from(self.settings.leeway_seconds).unwrap_or(0);
                if hit.identity.expires_at + leeway > now {
                    return Ok((hit.identity, true));
                }
                self.verified.invalidate(&digest);
                return Err(AuthnError::Expired);
            }
        }
        let issuer = self.issuer_of(token)?;
        // Read before the keys: a key removed while this token is verified leaves it cached
        // under an old generation, verified again next time.
        let generation = self.keys_usable(issuer)?.generation.load(Ordering::Acquire);
        let (settings, _) = self.issuer(issuer)?;
        let claims = self.verify(issuer, token, &settings.audiences, now)?;
        let mut identity = identity_of(&claims, settings)?;
        if self.keep_claims.load(Ordering::Acquire) {
            identity.claims = Some(Arc::new(claims));
        }
        let identity = Arc::new(identity);
        self.verified.insert(
            digest,
            Verified {
                identity: Arc::clone(&identity),
                issuer,
                key_generation: generation,
            },
        );
        Ok((identity, false))
    }

    /// The claims of `token`, a token of the first issuer, once its header, signature,
    /// issuer, an audience among `audiences`, its times at `now` (seconds) and the issuer's
    /// token policy check out (no cache: admin JWTs use this; other issuers' tokens are
    /// never admin credentials).
    pub fn verified_claims(
        &self,
        token: &str,
        audiences: &[String],
        now: i64,
    ) -> Result<Map<String, Value>, AuthnError> {
        self.keys_usable(0)?;
        self.verify(0, token, audiences, now)
    }

    /// The claims of `token` verified with issuer `issuer`'s keys and policy.
    fn verify(
        &self,
        issuer: usize,
        token: &str,
        audiences: &[String],
        now: i64,
    ) -> Result<Map<String, Value>, AuthnError> {
        let (settings, slot) = self.issuer(issuer)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthnError::Malformed)?;
        // No `crit` extension is understood here; RFC 7515 §4.1.11 says to refuse then.
        if header.crit.is_some() {
            return Err(AuthnError::CriticalHeader);
        }
        if !settings.algorithms.contains(&header.alg) {
            return Err(AuthnError::AlgorithmNotAllowed);
        }
        let keys = slot.keys.load();
        if keys.is_empty() {
            return Err(AuthnError::NoKeys);
        }
        let Some(key) = keys.find(header.kid.as_deref()) else {
            if header.kid.is_some() {
                self.request_refetch(slot);
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
        validation.set_issuer(&[&settings.issuer]);
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
        let iat = time("iat")?;
        if iat.is_some_and(|iat| iat.saturating_sub(leeway) > now) {
            return Err(AuthnError::IssuedInFuture);
        }
        if let Some(max) = settings.max_token_lifetime_seconds {
            let max = i64::try_from(max).unwrap_or(i64::MAX);
            let iat = iat.ok_or(AuthnError::LifetimeTooLong)?;
            if exp.saturating_sub(iat) > max {
                return Err(AuthnError::LifetimeTooLong);
            }
        }
        if !settings.subjects.is_empty() {
            let subject = claims
                .get(&settings.claims.subject)
                .and_then(Value::as_str)
                .ok_or(AuthnError::MissingClaim)?;
            if !settings.subjects.admits(subject) {
                return Err(AuthnError::SubjectNotAllowed);
            }
        }
        Ok(claims)
    }
}

/// The identity a verified claim set describes.
fn identity_of(
    claims: &Map<String, Value>,
    issuer: &IssuerSettings,
) -> Result<Identity, AuthnError> {
    let names = &issuer.claims;
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
    let subject = text(&names.subject)
        .filter(|s| !s.is_empty())
        .ok_or(AuthnError::MissingClaim)?;
    let expires_at = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(AuthnError::MissingClaim)?;
    let kind = match issuer.principal_kind {
        Some(kind) => kind,
        None if text(&names.service_claim).as_deref() == Some(names.service_value.as_str()) => {
            PrincipalKind::Service
        }
        None => PrincipalKind::User,
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
    let principal = principal_ref(kind, &subject);
    let claimed = issuer
        .from_claims
        .as_ref()
        .map(|mapping| Arc::new(mapping.principal(&principal, kind, claims)));
    Ok(Identity {
        principal,
        tenant: text(&names.tenant),
        mfa: amr_mfa || acr_mfa,
        risk_score,
        device_id: text(&names.device_id),
        session_ids,
        expires_at,
        issued_at: claims.get("iat").and_then(Value::as_i64),
        claimed,
        claims: None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn symmetric_and_unknown_algorithms_are_refused() {
        assert!(parse_algorithm("RS256").is_ok());
        assert!(parse_algorithm("EdDSA").is_ok());
        assert!(parse_algorithm("HS256").unwrap_err().contains("symmetric"));
        assert!(parse_algorithm("none").is_err());
    }

    fn issuer(name: &str) -> IssuerSettings {
        IssuerSettings {
            issuer: String::from(name),
            audiences: vec![String::from("portcullis")],
            algorithms: vec![Algorithm::EdDSA],
            claims: ClaimNames::default(),
            principal_kind: None,
            max_token_lifetime_seconds: None,
            subjects: SubjectRules::default(),
            keys_max_age: None,
            from_claims: None,
        }
    }

    fn authenticator(issuers: Vec<IssuerSettings>) -> Authenticator {
        Authenticator::new(
            AuthSettings {
                issuers,
                leeway_seconds: 0,
                max_token_bytes: 8192,
                unknown_kid_cooldown: Duration::from_secs(30),
            },
            100,
        )
    }

    /// A dev key of its own in a fresh directory (every one has the same `kid`).
    fn key(tag: &str) -> crate::devkey::DevKey {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-authn-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (key, _) = crate::devkey::DevKey::load_or_create(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        key
    }

    fn keys_of(key: &crate::devkey::DevKey) -> KeySet {
        KeySet::from_jwks(&key.jwks()).unwrap().0
    }

    const NOW: i64 = 1_800_000_000;

    fn bearer(
        key: &crate::devkey::DevKey,
        iss: &str,
        sub: &str,
        extra: serde_json::Value,
    ) -> String {
        let mut claims = serde_json::json!({
            "iss": iss, "aud": "portcullis", "sub": sub, "iat": NOW - 60, "exp": NOW + 600,
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        format!("Bearer {}", key.sign(&claims).unwrap())
    }

    fn check(authn: &Authenticator, header: &str) -> Result<Arc<Identity>, AuthnError> {
        authn
            .authenticate(Some(header.as_bytes()), NOW)
            .map(|(id, _)| id)
    }

    #[test]
    fn subject_patterns_match_runs_of_any_characters() {
        for (pattern, text, expected) in [
            ("alice", "alice", true),
            ("alice", "alice2", false),
            ("*", "", true),
            (
                "system:serviceaccount:*",
                "system:serviceaccount:shop:api",
                true,
            ),
            (
                "system:serviceaccount:shop:*",
                "system:serviceaccount:kube-system:x",
                false,
            ),
            ("*@example.com", "bob@example.com", true),
            ("*@example.com", "bob@example.com.evil", false),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "a-c-b", false),
            ("ab*b", "ab", false),
            ("*.*", "no-dot", false),
        ] {
            assert_eq!(
                matches_pattern(pattern, text),
                expected,
                "`{pattern}` against `{text}`"
            );
        }
        let rules = SubjectRules {
            allow: vec![String::from("system:serviceaccount:shop:*")],
            deny: vec![String::from("*:debug")],
        };
        assert!(rules.admits("system:serviceaccount:shop:api"));
        assert!(
            !rules.admits("system:serviceaccount:shop:debug"),
            "deny wins"
        );
        assert!(!rules.admits("alice"), "not allowed");
    }

    #[test]
    fn a_token_is_verified_with_the_keys_of_the_issuer_it_names_and_no_other() {
        let (idp, cluster) = (key("idp"), key("cluster"));
        let mut workloads = issuer("https://kubernetes.default.svc");
        workloads.principal_kind = Some(PrincipalKind::Service);
        let authn = authenticator(vec![issuer("https://idp"), workloads]);
        authn.set_keys(0, keys_of(&idp));
        assert!(!authn.has_keys(), "ready only when every issuer has keys");
        authn.set_keys(1, keys_of(&cluster));
        assert!(authn.has_keys());

        let alice = check(&authn, &bearer(&idp, "https://idp", "alice", json!({}))).unwrap();
        assert_eq!(alice.principal.to_string(), r#"User::"alice""#);
        let sa = "system:serviceaccount:shop:api";
        let api = check(
            &authn,
            &bearer(&cluster, "https://kubernetes.default.svc", sa, json!({})),
        )
        .unwrap();
        assert_eq!(api.principal.to_string(), format!(r#"Service::"{sa}""#));

        // Both keys share their `kid`: only the named issuer's key is ever tried.
        assert_eq!(
            check(
                &authn,
                &bearer(&idp, "https://kubernetes.default.svc", sa, json!({}))
            ),
            Err(AuthnError::BadSignature)
        );
        assert_eq!(
            check(&authn, &bearer(&cluster, "https://idp", "alice", json!({}))),
            Err(AuthnError::BadSignature)
        );
        assert_eq!(
            check(
                &authn,
                &bearer(&idp, "https://elsewhere", "alice", json!({}))
            ),
            Err(AuthnError::UnknownIssuer)
        );
        // Admin JWTs come from the first issuer only.
        let token = |h: String| h.trim_start_matches("Bearer ").to_owned();
        let audiences = [String::from("portcullis")];
        assert!(
            authn
                .verified_claims(
                    &token(bearer(&idp, "https://idp", "a", json!({}))),
                    &audiences,
                    NOW
                )
                .is_ok()
        );
        assert_eq!(
            authn.verified_claims(
                &token(bearer(
                    &cluster,
                    "https://kubernetes.default.svc",
                    "a",
                    json!({})
                )),
                &audiences,
                NOW
            ),
            Err(AuthnError::BadSignature),
            "checked with the first issuer's keys, whatever its `iss`"
        );
    }

    #[test]
    fn the_token_policy_bounds_lifetime_and_subjects() {
        let idp = key("policy");
        let mut settings = issuer("https://idp");
        settings.max_token_lifetime_seconds = Some(3600);
        settings.subjects.deny = vec![String::from("svc-*")];
        let authn = authenticator(vec![settings]);
        authn.set_keys(0, keys_of(&idp));
        let token = |sub: &str, extra| bearer(&idp, "https://idp", sub, extra);

        assert!(check(&authn, &token("alice", json!({"exp": NOW - 60 + 3600}))).is_ok());
        assert_eq!(
            check(&authn, &token("alice", json!({"exp": NOW - 60 + 3601}))),
            Err(AuthnError::LifetimeTooLong)
        );
        assert_eq!(
            check(&authn, &token("bob", json!({"iat": null}))),
            Err(AuthnError::MissingClaim),
            "an `iat` that is not a number"
        );
        let mut no_iat =
            json!({"iss": "https://idp", "aud": "portcullis", "sub": "carol", "exp": NOW + 60});
        no_iat.as_object_mut().unwrap().remove("iat");
        assert_eq!(
            check(&authn, &format!("Bearer {}", idp.sign(&no_iat).unwrap())),
            Err(AuthnError::LifetimeTooLong),
            "without `iat` the lifetime cannot be shown"
        );
        assert_eq!(
            check(&authn, &token("svc-backup", json!({}))),
            Err(AuthnError::SubjectNotAllowed)
        );
    }

    #[test]
    fn keys_past_their_trust_bound_fail_closed_until_loaded_again() {
        let idp = key("stale");
        let mut settings = issuer("https://idp");
        settings.keys_max_age = Some(Duration::from_millis(50));
        let authn = authenticator(vec![settings]);
        let header = bearer(&idp, "https://idp", "alice", json!({}));
        assert_eq!(check(&authn, &header), Err(AuthnError::NoKeys));
        authn.set_keys(0, keys_of(&idp));
        assert!(check(&authn, &header).is_ok());
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(
            check(&authn, &header),
            Err(AuthnError::KeysStale),
            "a cached token too"
        );
        authn.set_keys(0, keys_of(&idp));
        let (_, cached) = authn.authenticate(Some(header.as_bytes()), NOW).unwrap();
        assert!(cached, "the same keys again: the cache stands");
    }

    #[test]
    fn claims_map_to_an_identity() {
        let names = issuer("https://idp");
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
