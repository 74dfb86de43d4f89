//! The decision record: which checked requests leave a record in the audit ledger, what
//! goes into it, and what a request does when the ledger cannot take it — by default it
//! waits, then is refused (503); dropping must be configured and is counted.
//!
//! Recorded: every decision (allow, deny, shadow deny) and every refusal (bad credentials,
//! ambiguous target, no route). Not recorded: public routes (unless `audit.record_public`)
//! and a configured share of allows (`audit.allow_sample_rate`). Never recorded: tokens,
//! the `Authorization` header, request bodies. Context is redacted by band: on AMBER and RED
//! routes the client address and device id are replaced by a keyed hash by default;
//! `audit.redact` names what is hashed or left out (the principal too).
//!
//! The ledger itself (its files, checkpoints, sinks) is the application's: see
//! [`crate::audit`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use portcullis_ledger::writer::{AppendError, Ledger};
use portcullis_ledger::{
    EncodeError, EncodedEntry, EntryRef, RecordKind, Redaction, RedactionSalt, band_redacts,
    timestamp_now,
};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::Verdict;
use super::respond::Rejection;
use crate::metrics::Outcome;

/// The context members of a decision record, in the order its map is written.
pub const CONTEXT_KEYS: [&str; 7] = [
    "band",
    "device_id",
    "hour",
    "ip",
    "mfa",
    "risk_score",
    "weekday",
];

/// What a full audit queue does to a request (`audit.on_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Wait, then fail closed (503).
    Wait,
    /// Forward without a record; counted.
    Drop,
}

/// How decisions are recorded, prepared from `audit` by the application.
#[derive(Debug, Clone)]
pub struct RecordSettings {
    /// What a full queue does.
    pub on_full: OnFull,
    /// How long a request waits for room (`OnFull::Wait`).
    pub max_wait: Duration,
    /// Whether public routes are recorded.
    pub record_public: bool,
    /// The share of allows recorded (0 to 1).
    pub allow_sample_rate: f64,
    /// The per-installation secret of redaction hashes.
    pub salt: RedactionSalt,
    /// What AMBER and RED routes do with the principal.
    pub redact_principal: Redaction,
    /// What AMBER and RED routes do with each of [`CONTEXT_KEYS`].
    pub redact_context: [Redaction; CONTEXT_KEYS.len()],
}

/// Records checked requests in a ledger.
#[derive(Debug)]
pub struct Recorder {
    ledger: Arc<Ledger>,
    settings: RecordSettings,
}

impl Recorder {
    /// Records into `ledger` as `settings` say.
    pub fn new(ledger: Arc<Ledger>, settings: RecordSettings) -> Self {
        Self { ledger, settings }
    }

    /// Whether this outcome is recorded.
    fn keeps(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Public | Outcome::Preflight => self.settings.record_public,
            Outcome::Allowed => {
                self.settings.allow_sample_rate >= 1.0
                    || rand::thread_rng().gen_bool(self.settings.allow_sample_rate.clamp(0.0, 1.0))
            }
            _ => true,
        }
    }

    /// Records a checked request before it is answered or forwarded. `Err` is the refusal
    /// to send instead (the ledger could not take the record and dropping is not allowed).
    pub async fn record(
        &self,
        verdict: &Verdict,
        route: &str,
        band: &str,
        trace_id: Option<&str>,
    ) -> Result<(), Rejection> {
        let outcome = verdict.outcome();
        if !self.keeps(outcome) {
            return Ok(());
        }
        let entry = match self.encode(verdict, outcome, route, band, trace_id) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::error!(error = %e, "decision not recorded; request refused");
                return Err(Rejection::Unavailable("audit_unavailable"));
            }
        };
        match self.settings.on_full {
            OnFull::Drop => {
                if !self.ledger.append_nowait(entry) {
                    tracing::warn!("audit queue full: record dropped (audit.on_full = drop)");
                }
                Ok(())
            }
            OnFull::Wait => match self.ledger.append(entry, self.settings.max_wait).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    tracing::error!(error = %e, "decision not recorded; request refused");
                    Err(Rejection::Unavailable(match e {
                        AppendError::Full => "audit_queue_full",
                        AppendError::Write(_) | AppendError::Closed => "audit_unavailable",
                    }))
                }
            },
        }
    }

    /// The record of a checked request, encoded from the request's own parts (nothing is
    /// copied into an intermediate entry: every request that is kept takes one).
    fn encode(
        &self,
        verdict: &Verdict,
        outcome: Outcome,
        route: &str,
        band: &str,
        trace_id: Option<&str>,
    ) -> Result<EncodedEntry, EncodeError> {
        let refusal = verdict.reason();
        let decision = match outcome {
            Outcome::Allowed => "allow",
            Outcome::Public => "public",
            Outcome::Preflight => "preflight",
            Outcome::ShadowDenied => "shadow_deny",
            Outcome::Denied => match refusal {
                Some(Rejection::Denied { .. }) => "deny",
                _ => "refused",
            },
            _ => "refused",
        };
        let ts = timestamp_now();
        let mut entry = EntryRef {
            ts: &ts,
            kind: RecordKind::Decision,
            decision_id: verdict.decision_id(),
            decision: Some(decision),
            reason: refusal.map(Rejection::reason),
            route: Some(route),
            trace_id,
            ..EntryRef::default()
        };
        let Some(d) = verdict.subject() else {
            return entry.encode();
        };
        let redacting = band_redacts(band);
        let principal = self
            .settings
            .redact_principal
            .when(redacting)
            .apply(Cow::Borrowed(d.principal.as_str()), &self.settings.salt);
        entry.principal = principal.as_deref();
        entry.action = Some(&d.action);
        entry.resource = Some(&d.resource);
        entry.policies = &d.policies;
        entry.errors = &d.errors;
        entry.claimed_roles = &d.claimed_roles;
        entry.latency_us = Some(u64::try_from(d.elapsed.as_micros()).unwrap_or(u64::MAX));
        let f = &d.facts;
        let (mut hour, mut weekday, mut risk) = (
            itoa::Buffer::new(),
            itoa::Buffer::new(),
            itoa::Buffer::new(),
        );
        // The values of `CONTEXT_KEYS`, in their order.
        let values = [
            Some(band),
            f.device_id.as_deref(),
            Some(hour.format(f.local_time.hour)),
            f.ip.as_deref(),
            Some(if f.mfa { "true" } else { "false" }),
            Some(risk.format(f.risk_score)),
            Some(weekday.format(f.local_time.weekday)),
        ];
        let mut recorded = Vec::with_capacity(CONTEXT_KEYS.len());
        for ((key, value), redaction) in CONTEXT_KEYS
            .into_iter()
            .zip(values)
            .zip(self.settings.redact_context)
        {
            let value = value.and_then(|v| {
                redaction
                    .when(redacting)
                    .apply(Cow::Borrowed(v), &self.settings.salt)
            });
            if let Some(value) = value {
                recorded.push((key, value));
            }
        }
        entry.context = &recorded;
        entry.encode()
    }
}
