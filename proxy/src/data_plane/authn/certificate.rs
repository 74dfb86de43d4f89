//! Workload identity from client certificates (`listen.tls.client_ca_file`): the HTTPS
//! listener verifies a certificate a client presents against the configured CA, and the
//! handshake leaves the identity the verified leaf gives ([`ClientIdentity`]) on the
//! connection, worked out once for all its requests. A request without `Authorization` on
//! such a connection is then a `Service` principal: the certificate's SPIFFE ID (its
//! `spiffe://` URI SAN, from an allowed trust domain) or its first DNS SAN, as
//! `auth.certificates.principal_from` says. A request with a token is judged by its token,
//! as on any other connection.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use portcullis_model::{PrincipalKind, principal_ref};
use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;

use super::{AuthnError, Identity};

/// What a verified client certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The `spiffe://` URI SAN, if exactly one.
    pub spiffe_id: Option<String>,
    /// The DNS SANs.
    pub dns_names: Vec<String>,
    /// `notAfter`, seconds since the epoch.
    pub not_after: i64,
}

impl PeerCertificate {
    /// Reads a DER certificate (already verified by the handshake).
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                        uris.push((*uri).to_owned());
                    }
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                    _ => {}
                }
            }
        }
        // A SPIFFE SVID carries exactly one SPIFFE ID; a certificate with several names
        // no one identity.
        let spiffe_id = (uris.len() == 1).then(|| uris.swap_remove(0));
        Ok(Self {
            spiffe_id,
            dns_names,
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// Which name of a client certificate becomes the principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalFrom {
    /// The SPIFFE ID (`spiffe://trust-domain/path`).
    #[default]
    Spiffe,
    /// The first DNS SAN.
    Dns,
}

/// How client certificates identify workloads (`auth.certificates`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CertificateMapping {
    /// Which name becomes the `Service` principal.
    pub principal_from: PrincipalFrom,
    /// SPIFFE trust domains accepted (empty: any the CA vouches for).
    pub trust_domains: Vec<String>,
}

impl CertificateMapping {
    /// The identity `cert` gives, or why it gives none.
    pub fn identity(&self, cert: &PeerCertificate) -> Result<Identity, AuthnError> {
        let name = match self.principal_from {
            PrincipalFrom::Spiffe => {
                let id = cert
                    .spiffe_id
                    .as_deref()
                    .ok_or(AuthnError::NoCertificateName)?;
                let domain = id
                    .strip_prefix("spiffe://")
                    .and_then(|rest| rest.split('/').next())
                    .unwrap_or_default();
                if !self.trust_domains.is_empty() && !self.trust_domains.iter().any(|d| d == domain)
                {
                    return Err(AuthnError::UntrustedDomain);
                }
                id
            }
            PrincipalFrom::Dns => cert
                .dns_names
                .first()
                .map(String::as_str)
                .ok_or(AuthnError::NoCertificateName)?,
        };
        Ok(Identity {
            principal: principal_ref(PrincipalKind::Service, name),
            tenant: None,
            mfa: false,
            risk_score: None,
            device_id: None,
            session_ids: Vec::new(),
            expires_at: cert.not_after,
            issued_at: None,
            claimed: None,
            claims: None,
        })
    }
}

/// The identity a connection's verified client certificate gives, or why it gives none.
#[derive(Debug)]
pub struct ClientIdentity(Result<Arc<Identity>, AuthnError>);

impl ClientIdentity {
    /// The identity at `now` (seconds): refused once the certificate has expired (a
    /// connection may outlive it).
    pub fn at(&self, now: i64) -> Result<Arc<Identity>, AuthnError> {
        let identity = self.0.as_ref().map_err(|e| *e)?;
        if identity.expires_at <= now {
            return Err(AuthnError::Expired);
        }
        Ok(Arc::clone(identity))
    }
}

/// Leaves the identity of the verified client certificate on the connection (its TLS
/// digest's extension), for the requests on it to read.
#[derive(Debug)]
pub struct CaptureCertificate {
    /// How certificates name workloads (`auth.certificates`).
    pub mapping: CertificateMapping,
}

#[async_trait]
impl TlsAccept for CaptureCertificate {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let der = tls.peer_certificate_der()?;
        match PeerCertificate::from_der(der) {
            Ok(cert) => Some(Arc::new(ClientIdentity(
                self.mapping.identity(&cert).map(Arc::new),
            ))),
            Err(e) => {
                tracing::warn!(error = %e, "client certificate verified but not readable");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(spiffe: Option<&str>, dns: &[&str]) -> PeerCertificate {
        PeerCertificate {
            spiffe_id: spiffe.map(str::to_owned),
            dns_names: dns.iter().map(|d| (*d).to_owned()).collect(),
            not_after: 2_000_000_000,
        }
    }

    #[test]
    fn a_certificate_names_a_service_by_its_spiffe_id_or_dns_name() {
        let spiffe = CertificateMapping {
            principal_from: PrincipalFrom::Spiffe,
            trust_domains: vec![String::from("prod.example")],
        };
        let id = spiffe
            .identity(&cert(Some("spiffe://prod.example/ns/shop/sa/api"), &[]))
            .unwrap();
        assert_eq!(
            id.principal.to_string(),
            r#"Service::"spiffe://prod.example/ns/shop/sa/api""#
        );
        assert_eq!(id.expires_at, 2_000_000_000);
        let on_connection = ClientIdentity(Ok(Arc::new(id.clone())));
        assert!(on_connection.at(1_999_999_999).is_ok());
        assert_eq!(
            on_connection.at(2_000_000_000),
            Err(AuthnError::Expired),
            "a connection outliving its certificate"
        );
        assert_eq!(
            spiffe.identity(&cert(Some("spiffe://dev.example/ns/shop/sa/api"), &[])),
            Err(AuthnError::UntrustedDomain)
        );
        assert_eq!(
            spiffe.identity(&cert(Some("spiffe://prod.example.evil/x"), &[])),
            Err(AuthnError::UntrustedDomain)
        );
        assert_eq!(
            spiffe.identity(&cert(None, &["api.shop"])),
            Err(AuthnError::NoCertificateName)
        );
        let dns = CertificateMapping {
            principal_from: PrincipalFrom::Dns,
            trust_domains: Vec::new(),
        };
        assert_eq!(
            dns.identity(&cert(None, &["api.shop", "x"]))
                .unwrap()
                .principal
                .to_string(),
            r#"Service::"api.shop""#
        );
    }

    #[test]
    fn the_names_are_read_from_a_real_certificate() {
        let mut params = rcgen::CertificateParams::new(vec![String::from("api.shop")]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::Ia5String::try_from("spiffe://prod.example/ns/shop/sa/api").unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let der = params.clone().self_signed(&key).unwrap().der().to_vec();
        let read = PeerCertificate::from_der(&der).unwrap();
        assert_eq!(
            read.spiffe_id.as_deref(),
            Some("spiffe://prod.example/ns/shop/sa/api")
        );
        assert_eq!(read.dns_names, ["api.shop"]);

        // Two SPIFFE IDs: no identity.
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::Ia5String::try_from("spiffe://prod.example/other").unwrap(),
        ));
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(PeerCertificate::from_der(&der).unwrap().spiffe_id, None);
    }
}
