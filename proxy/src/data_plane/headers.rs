//! The identity headers Portcullis sets for the upstream, and the client headers it never
//! lets through.
//!
//! Set on every allowed request (and removed from every client request, in any spelling:
//! case, `_` or `.` for `-`, repeated):
//!
//! | header | value |
//! |---|---|
//! | `x-portcullis-subject` | the principal id (token subject) |
//! | `x-portcullis-principal-type` | `user` or `service` |
//! | `x-portcullis-tenant` | the principal's tenant in the store (or, for a principal from claims, its claimed tenant), if any |
//! | `x-portcullis-roles` | roles in force for this request, comma-separated |
//! | `x-portcullis-decision-id` | the decision's id (also in the audit record) |
//! | `x-portcullis-assertion` | with `identity_assertion` on: a JWT saying the above, signed by Portcullis ([`super::assertion`]) |
//! | `traceparent` | W3C trace context: the caller's trace with a new span, or a new trace |
//!
//! Also removed from client requests, in every spelling ([`strip_client_headers`]):
//! - every header that claims an "original" URL ([`ORIGINAL_URL_HEADERS`]), because some
//!   frameworks route by them;
//! - `Proxy-Authorization`, a credential Portcullis never checks;
//! - forwarding and client-address headers ([`FORWARDING_HEADERS`]) unless a trusted hop
//!   sent them in their exact spelling; `X-Forwarded-For` and `X-Forwarded-Proto` are then
//!   set from what Portcullis itself saw;
//! - `Authorization` when no credential was verified on a protected route, or when
//!   `auth.forward_credential` is `none`;
//! - method-override headers (those naming another method than the request's were refused
//!   unless `enforcement.method_override` is `strip`).

use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use portcullis_ledger::hex::{hex, push_hex};
use rand::RngCore;

use super::Grant;

/// Prefix of every identity header.
pub const PREFIX: &str = "x-portcullis-";
/// The principal id.
pub const SUBJECT: &str = "x-portcullis-subject";
/// `user` or `service`.
pub const PRINCIPAL_TYPE: &str = "x-portcullis-principal-type";
/// The principal's tenant.
pub const TENANT: &str = "x-portcullis-tenant";
/// Roles in force, comma-separated.
pub const ROLES: &str = "x-portcullis-roles";
/// The decision id.
pub const DECISION_ID: &str = "x-portcullis-decision-id";
/// The signed identity assertion.
pub const ASSERTION: &str = "x-portcullis-assertion";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Headers that claim an original URL; some frameworks route by them.
pub const ORIGINAL_URL_HEADERS: &[&str] = &[
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-forwarded-uri",
    "x-forwarded-prefix",
    "x-forwarded-path",
    "x-envoy-original-path",
];

/// Headers that make frameworks treat a request as another method.
pub const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers that say who the client is or how it reached us. Believed only from a trusted
/// hop, and only in their exact spelling; `x-forwarded-for` is then rewritten from the
/// peer address.
pub const FORWARDING_HEADERS: &[&str] = &[
    "x-forwarded-for",
    "forwarded",
    "x-forwarded",
    "forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-host",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-originating-ip",
];

/// `Proxy-Authorization`: a credential for a proxy, which Portcullis never reads.
pub const PROXY_AUTHORIZATION: &str = "proxy-authorization";

/// Whether `name` is `canonical` (lower case, `-` between words) in some spelling: any
/// case, and `_` or `.` for `-`. Servers that read headers as CGI-style variables
/// (`HTTP_X_FORWARDED_FOR`) cannot tell these spellings apart, so neither may we. Runs for
/// every header of every request, so it compares in place.
pub fn spells(name: &str, canonical: &str) -> bool {
    name.len() == canonical.len() && spells_prefix(name.as_bytes(), canonical)
}

fn spells_prefix(name: &[u8], canonical: &str) -> bool {
    let fold = |b: &u8| match b {
        b'_' | b'.' => b'-',
        b => b.to_ascii_lowercase(),
    };
    name.get(..canonical.len())
        .is_some_and(|head| head.iter().map(fold).eq(canonical.bytes()))
}

/// Whether a client header must never reach the upstream: an identity header or an
/// original-URL header, in any spelling.
pub fn is_reserved(name: &str) -> bool {
    spells_prefix(name.as_bytes(), PREFIX) || ORIGINAL_URL_HEADERS.iter().any(|r| spells(name, r))
}

/// The canonical forwarding header `name` spells, if any.
fn forwarding(name: &str) -> Option<&'static str> {
    FORWARDING_HEADERS.iter().copied().find(|f| spells(name, f))
}

/// What [`strip_client_headers`] removes beside the reserved headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strip {
    /// The peer is a trusted hop: forwarding headers in their exact spelling pass.
    pub trusted_peer: bool,
    /// Remove `Authorization` (none was verified, or credentials are not forwarded).
    pub authorization: bool,
}

/// Removes, in every spelling, what a client may not send the upstream: the reserved
/// headers, `Proxy-Authorization`, method overrides (those naming another method were
/// refused unless `enforcement.method_override` is `strip`), forwarding headers (unless
/// from a trusted hop in their exact spelling) and, when `strip` says, `Authorization`.
/// One pass; allocates only when something is removed.
pub fn strip_client_headers(headers: &mut HeaderMap, strip: Strip) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let name = n.as_str();
            is_reserved(name)
                || spells(name, PROXY_AUTHORIZATION)
                || (strip.authorization && *n == http::header::AUTHORIZATION)
                || METHOD_OVERRIDE_HEADERS.iter().any(|m| spells(name, m))
                || forwarding(name).is_some_and(|f| !strip.trusted_peer || name != f)
        })
        .cloned()
        .collect();
    for name in names {
        // `remove` removes every value of the name.
        headers.remove(&name);
    }
}

/// The identity headers of a grant.
pub fn identity_headers(grant: &Grant) -> impl Iterator<Item = (HeaderName, String)> {
    let assertion = grant
        .assertion
        .as_deref()
        .map(|a| (const { HeaderName::from_static(ASSERTION) }, a.to_owned()));
    [
        (
            const { HeaderName::from_static(SUBJECT) },
            grant.subject.clone(),
        ),
        (
            const { HeaderName::from_static(PRINCIPAL_TYPE) },
            grant.principal_type.to_owned(),
        ),
        (
            const { HeaderName::from_static(TENANT) },
            grant.tenant.clone().unwrap_or_default(),
        ),
        (
            const { HeaderName::from_static(ROLES) },
            grant.roles.join(","),
        ),
        (
            const { HeaderName::from_static(DECISION_ID) },
            grant.decision_id.clone(),
        ),
    ]
    .into_iter()
    .chain(assertion)
}

/// A header value, or the error Pingora reports for one that is not allowed (a control
/// character).
pub fn value(text: impl Into<String>) -> pingora::Result<HeaderValue> {
    HeaderValue::try_from(text.into())
        .map_err(|_| pingora::Error::explain(pingora::ErrorType::InvalidHTTPHeader, "header value"))
}

/// Edits the request for the upstream as plain `http` parts, then hands it back to
/// Pingora without header-name case: the upstream sees lower-case names (standard ones
/// title-cased), as it would from Envoy or over HTTP/2. Pingora's own setters parse every
/// name again and keep a second map for its case; on the parts, names prepared at compile
/// time go straight into a map whose room is reserved once.
pub fn edit_upstream_request(
    request: &mut RequestHeader,
    edit: impl FnOnce(&mut Parts) -> pingora::Result<()>,
) -> pingora::Result<()> {
    let end_stream = request.send_end_stream();
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = Parts::from(std::mem::replace(request, empty));
    let edited = edit(&mut parts);
    *request = RequestHeader::from(parts);
    if let Some(end_stream) = end_stream {
        request.set_send_end_stream(end_stream);
    }
    edited
}

/// A W3C trace context for the next hop: the caller's trace id and flags with a new span id,
/// or a new sampled trace when the caller sent none (or an invalid one). Returns the header
/// value and the trace id.
pub fn next_traceparent(incoming: Option<&str>) -> (String, String) {
    let mut rng = rand::thread_rng();
    let mut span = [0_u8; 8];
    rng.fill_bytes(&mut span);
    if span == [0; 8] {
        span[7] = 1;
    }
    let (trace_id, flags) = match incoming.and_then(parse_traceparent) {
        Some((trace_id, flags)) => (trace_id.to_owned(), flags),
        None => {
            let mut trace = [0_u8; 16];
            rng.fill_bytes(&mut trace);
            if trace == [0; 16] {
                trace[15] = 1;
            }
            (hex(&trace), "01")
        }
    };
    let mut header = String::with_capacity(55);
    header.push_str("00-");
    header.push_str(&trace_id);
    header.push('-');
    push_hex(&mut header, &span);
    header.push('-');
    header.push_str(flags);
    (header, trace_id)
}

/// `(trace id, flags)` of a valid version-00 `traceparent`.
fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = parts.next().is_none()
        && version == "00"
        && lower_hex(trace, 32)
        && lower_hex(parent, 16)
        && lower_hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then_some((trace, flags))
}

/// A header map of `(name, value)` pairs, repeats kept (for tests).
#[cfg(test)]
pub(crate) fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_in_every_spelling() {
        for name in [
            "X-Portcullis-Subject",
            "x_portcullis_subject",
            "X.Portcullis.Roles",
            "x-portcullis-anything",
            "X-Original-URL",
            "x_forwarded_uri",
        ] {
            assert!(is_reserved(name), "{name}");
        }
        for name in [
            "authorization",
            "x-portcullisx",
            "x-forwarded-for",
            "traceparent",
        ] {
            assert!(!is_reserved(name), "{name}");
        }
    }

    fn stripped(names: &[&str], strip: Strip) -> Vec<String> {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for name in names {
            req.append_header(name.to_string(), "v").unwrap();
        }
        let mut headers = req.headers.clone();
        strip_client_headers(&mut headers, strip);
        headers.keys().map(|k| k.as_str().to_owned()).collect()
    }

    const UNTRUSTED: Strip = Strip {
        trusted_peer: false,
        authorization: false,
    };

    #[test]
    fn strip_removes_duplicates_and_variants() {
        let left = stripped(
            &[
                "X-Portcullis-Subject",
                "x-portcullis-subject",
                "X_Portcullis_Roles",
                "X-Original-URL",
                "Proxy-Authorization",
                "Proxy_Authorization",
                "Accept",
            ],
            UNTRUSTED,
        );
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn forwarding_headers_pass_only_from_a_trusted_hop_in_their_exact_spelling() {
        for canonical in FORWARDING_HEADERS {
            let variants = [
                canonical.to_string(),
                canonical.to_ascii_uppercase(),
                canonical.replace('-', "_"),
                canonical.replace('-', "."),
            ];
            for name in &variants {
                assert!(
                    stripped(&[name], UNTRUSTED).is_empty(),
                    "`{name}` from an untrusted peer"
                );
                let trusted = Strip {
                    trusted_peer: true,
                    ..UNTRUSTED
                };
                let left = stripped(&[name], trusted);
                // Header maps keep names in lower case: only `_`/`.` spellings differ.
                let exact = name.to_ascii_lowercase() == *canonical;
                assert_eq!(
                    left.len(),
                    usize::from(exact),
                    "`{name}` from a trusted hop"
                );
            }
        }
    }

    #[test]
    fn method_overrides_always_go_and_authorization_when_asked() {
        let names = [
            "Authorization",
            "X-HTTP-Method-Override",
            "x_http_method",
            "X.Method.Override",
            "Accept",
        ];
        assert_eq!(stripped(&names, UNTRUSTED), ["authorization", "accept"]);
        let all = Strip {
            trusted_peer: false,
            authorization: true,
        };
        assert_eq!(stripped(&names, all), ["accept"]);
    }

    #[test]
    fn an_edited_upstream_request_keeps_everything_but_the_case() {
        let mut req = RequestHeader::build("POST", b"/a?b=1", None).unwrap();
        req.append_header("X-Custom", "1").unwrap();
        req.append_header("Content-Type", "text/plain").unwrap();
        req.set_version(http::Version::HTTP_2);
        req.set_send_end_stream(false);
        edit_upstream_request(&mut req, |parts| {
            parts
                .headers
                .insert(const { HeaderName::from_static(SUBJECT) }, value("alice")?);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            (req.method.as_str(), req.raw_path()),
            ("POST", b"/a?b=1".as_slice())
        );
        assert_eq!(req.send_end_stream(), Some(false));
        let mut wire = Vec::new();
        req.header_to_h1_wire(&mut wire);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "x-custom: 1\r\nContent-Type: text/plain\r\nx-portcullis-subject: alice\r\n"
        );
        let failed = edit_upstream_request(&mut req, |parts| {
            parts
                .headers
                .insert(const { HeaderName::from_static(ROLES) }, value("a\nb")?);
            Ok(())
        });
        assert!(failed.is_err(), "a newline is not a header value");
        assert_eq!(req.headers.len(), 3, "what was edited before stays");
    }

    #[test]
    fn traceparent_keeps_the_trace_and_makes_a_new_span() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (next, trace) = next_traceparent(Some(incoming));
        assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(next.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!next.contains("00f067aa0ba902b7"));
        let (fresh, trace) = next_traceparent(Some("garbage"));
        assert_ne!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            parse_traceparent(&fresh).map(|(t, _)| t),
            Some(trace.as_str())
        );
    }
}
