//! Admin JWTs (`admin.jwt`): the admin API accepts tokens of the data plane's issuer,
//! verified with the same keys, when they carry the admin audience. Their roles claim names
//! the admin roles `policies/admin.cedar` knows; the tenant claim, the tenant a
//! `tenant-admin` manages. A token without roles is authenticated and permitted nothing.

use std::sync::Arc;

use portcullis_admin_api::auth::{Identity, JwtVerifier};
use serde_json::Value;

use crate::config::AdminJwtConfig;
use crate::data_plane::authn::Authenticator;

/// Verifies admin JWTs with the data plane's [`Authenticator`].
#[derive(Debug)]
pub struct AdminJwt {
    authn: Arc<Authenticator>,
    subject_claim: String,
    audiences: Vec<String>,
    roles_claim: String,
    tenant_claim: String,
}

impl AdminJwt {
    /// Admin JWTs as `config` says, checked by `authn` (its issuer and keys).
    pub fn new(authn: Arc<Authenticator>, config: &AdminJwtConfig) -> Self {
        let claims = authn
            .primary()
            .map(|p| p.claims.clone())
            .unwrap_or_default();
        let tenant_claim = config
            .tenant_claim
            .clone()
            .unwrap_or_else(|| claims.tenant.clone());
        Self {
            authn,
            subject_claim: claims.subject,
            audiences: vec![config.audience.clone()],
            roles_claim: config.roles_claim.clone(),
            tenant_claim,
        }
    }
}

impl JwtVerifier for AdminJwt {
    fn identify(&self, token: &str) -> Result<Identity, String> {
        if token.len() > self.authn.settings().max_token_bytes {
            return Err(String::from("token too large"));
        }
        let claims = self
            .authn
            .verified_claims(token, &self.audiences, jiff::Timestamp::now().as_second())
            .map_err(|e| e.code().to_owned())?;
        let subject = claims
            .get(&self.subject_claim)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| String::from("no subject"))?;
        let roles = match claims.get(&self.roles_claim) {
            Some(Value::Array(roles)) => roles
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(roles)) => roles.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Ok(Identity {
            subject: format!("jwt:{subject}"),
            roles,
            tenant: claims
                .get(&self.tenant_claim)
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}
