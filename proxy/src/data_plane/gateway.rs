//! The decision endpoint's reading of the request another gateway asks about: which method
//! and target it will forward if Portcullis allows.
//!
//! Each gateway kind says it in exactly one way, and only that way is read
//! (`decision_endpoint.gateway`):
//!
//! | kind | method | target |
//! |---|---|---|
//! | `nginx` (`auth_request`) | `X-Original-Method` | `X-Original-URI` |
//! | `traefik` (forwardAuth) | `X-Forwarded-Method` | `X-Forwarded-Uri` |
//! | `envoy` (HTTP ext_authz) | the request's method | the path after the endpoint's |
//!
//! Gateways pass the client's own headers along, so a client can add any of the others. A
//! request is refused (400) when the kind's header is missing (a missing method is never
//! taken to be `GET`), when it is repeated in any spelling (case, `_` or `.` for `-`), or
//! when any other header naming an original method or URI disagrees with it.

use std::borrow::Cow;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::headers::{ORIGINAL_URL_HEADERS, spells};
use super::screen::RequestError;

/// The gateway in front of the decision endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayKind {
    /// nginx `auth_request`.
    Nginx,
    /// Traefik forwardAuth.
    Traefik,
    /// Envoy's HTTP ext_authz (`path_prefix`).
    Envoy,
}

/// Headers that name the original method.
const ORIGINAL_METHOD_HEADERS: &[&str] = &["x-original-method", "x-forwarded-method"];

impl GatewayKind {
    /// The headers this kind names the method and target in; `None` for Envoy.
    fn headers(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Nginx => Some(("x-original-method", "x-original-uri")),
            Self::Traefik => Some(("x-forwarded-method", "x-forwarded-uri")),
            Self::Envoy => None,
        }
    }
}

/// The request the gateway asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginalRequest<'a> {
    /// Its method, as the gateway gave it.
    pub method: &'a str,
    /// Its target, not yet normalised.
    pub target: Cow<'a, [u8]>,
}

/// The single value of `canonical` in any spelling; an error if repeated.
fn only_value<'a>(
    headers: &'a HeaderMap,
    canonical: &str,
) -> Result<Option<&'a [u8]>, RequestError> {
    let mut found = None;
    for (name, value) in headers {
        if spells(name.as_str(), canonical) {
            if found.is_some() {
                return Err(RequestError::GatewayHeaderRepeated);
            }
            found = Some(value.as_bytes());
        }
    }
    Ok(found)
}

/// Whether every header in `family` (any spelling), other than the one read, equals `value`.
fn agrees(headers: &HeaderMap, family: &[&str], value: &[u8]) -> bool {
    headers
        .iter()
        .all(|(name, v)| !family.iter().any(|f| spells(name.as_str(), f)) || v.as_bytes() == value)
}

/// The method and target `kind` asks about. `method` and `raw_path` are the endpoint
/// request's own; `prefix_len` is the length of the endpoint path in `raw_path`.
pub fn original_request<'a>(
    kind: GatewayKind,
    headers: &'a HeaderMap,
    method: &'a str,
    raw_path: &'a [u8],
    prefix_len: usize,
) -> Result<OriginalRequest<'a>, RequestError> {
    let (method, target): (&[u8], Cow<'a, [u8]>) = match kind.headers() {
        Some((method_header, uri_header)) => {
            let method =
                only_value(headers, method_header)?.ok_or(RequestError::GatewayMethodMissing)?;
            let uri = only_value(headers, uri_header)?.ok_or(RequestError::GatewayUriMissing)?;
            (method, Cow::Borrowed(uri))
        }
        None => {
            let rest = raw_path.get(prefix_len..).unwrap_or_default();
            let target = if rest.first() == Some(&b'?') || rest.is_empty() {
                Cow::Owned([b"/".as_slice(), rest].concat())
            } else {
                Cow::Borrowed(rest)
            };
            (method.as_bytes(), target)
        }
    };
    if !agrees(headers, ORIGINAL_METHOD_HEADERS, method)
        || !agrees(headers, ORIGINAL_URL_HEADERS, &target)
    {
        return Err(RequestError::GatewayHeadersConflict);
    }
    let method = std::str::from_utf8(method)
        .ok()
        .filter(|m| http::Method::from_bytes(m.as_bytes()).is_ok())
        .ok_or(RequestError::GatewayMethodInvalid)?;
    Ok(OriginalRequest { method, target })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::data_plane::headers::header_map as headers;

    const ENDPOINT: &[u8] = b"/.portcullis/authz";

    fn ask(kind: GatewayKind, pairs: &[(&str, &str)]) -> Result<(String, String), RequestError> {
        ask_at(kind, pairs, ENDPOINT)
    }

    fn ask_at(
        kind: GatewayKind,
        pairs: &[(&str, &str)],
        raw_path: &[u8],
    ) -> Result<(String, String), RequestError> {
        let h = headers(pairs);
        original_request(kind, &h, "GET", raw_path, ENDPOINT.len()).map(|o| {
            (
                o.method.to_owned(),
                String::from_utf8(o.target.into_owned()).unwrap(),
            )
        })
    }

    fn ok(method: &str, target: &str) -> Result<(String, String), RequestError> {
        Ok((method.to_owned(), target.to_owned()))
    }

    #[test]
    fn each_kind_reads_its_own_headers_only() {
        use GatewayKind::*;
        let nginx = [("x-original-method", "DELETE"), ("x-original-uri", "/a")];
        let traefik = [("x-forwarded-method", "PUT"), ("x-forwarded-uri", "/b")];
        assert_eq!(ask(Nginx, &nginx), ok("DELETE", "/a"));
        assert_eq!(ask(Traefik, &traefik), ok("PUT", "/b"));
        assert_eq!(
            ask(Nginx, &traefik),
            Err(RequestError::GatewayMethodMissing)
        );
        assert_eq!(
            ask(Traefik, &nginx),
            Err(RequestError::GatewayMethodMissing)
        );
        assert_eq!(
            ask_at(Envoy, &[], b"/.portcullis/authz/c?x=1"),
            ok("GET", "/c?x=1")
        );
        assert_eq!(
            ask_at(Envoy, &[], b"/.portcullis/authz?x=1"),
            ok("GET", "/?x=1")
        );
        assert_eq!(ask_at(Envoy, &[], ENDPOINT), ok("GET", "/"));
    }

    #[test]
    fn a_missing_method_or_uri_is_refused_never_taken_as_get() {
        use GatewayKind::*;
        assert_eq!(
            ask(Nginx, &[("x-original-uri", "/a")]),
            Err(RequestError::GatewayMethodMissing)
        );
        assert_eq!(
            ask(Traefik, &[("x-forwarded-uri", "/a")]),
            Err(RequestError::GatewayMethodMissing)
        );
        assert_eq!(
            ask(Nginx, &[("x-original-method", "GET")]),
            Err(RequestError::GatewayUriMissing)
        );
        assert_eq!(
            ask(Traefik, &[("x-forwarded-method", "GET")]),
            Err(RequestError::GatewayUriMissing)
        );
    }

    #[test]
    fn a_client_supplied_header_of_another_kind_that_disagrees_is_refused() {
        use GatewayKind::*;
        // The bypass: Traefik sets X-Forwarded-Uri, the client adds X-Original-URI.
        let cases: &[(GatewayKind, &[(&str, &str)])] = &[
            (
                Traefik,
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/public"),
                    ("x-original-uri", "/admin"),
                ],
            ),
            (
                Traefik,
                &[
                    ("x-forwarded-method", "GET"),
                    ("x-forwarded-uri", "/public"),
                    ("X_Original_URL", "/admin"),
                ],
            ),
            (
                Traefik,
                &[
                    ("x-forwarded-method", "DELETE"),
                    ("x-forwarded-uri", "/a"),
                    ("x-original-method", "GET"),
                ],
            ),
            (
                Nginx,
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/a"),
                    ("x-forwarded-uri", "/b"),
                ],
            ),
            (
                Nginx,
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/a"),
                    ("x-envoy-original-path", "/b"),
                ],
            ),
            (
                Nginx,
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/a"),
                    ("x-rewrite-url", "/b"),
                ],
            ),
            (
                Nginx,
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/a"),
                    ("x-forwarded-method", "DELETE"),
                ],
            ),
            (Envoy, &[("x-original-uri", "/admin")]),
            (Envoy, &[("x-forwarded-method", "DELETE")]),
        ];
        for (kind, pairs) in cases {
            assert_eq!(
                ask_at(*kind, pairs, b"/.portcullis/authz/a"),
                Err(RequestError::GatewayHeadersConflict),
                "{kind:?} {pairs:?}"
            );
        }
        // Another kind's header that says the same is no conflict.
        assert_eq!(
            ask(
                Nginx,
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/a"),
                    ("x-forwarded-uri", "/a")
                ]
            ),
            ok("GET", "/a")
        );
    }

    #[test]
    fn the_kinds_headers_repeated_in_any_spelling_are_refused() {
        use GatewayKind::*;
        for (kind, method, uri) in [
            (Nginx, "x-original-method", "x-original-uri"),
            (Traefik, "x-forwarded-method", "x-forwarded-uri"),
        ] {
            for twin in [uri.to_owned(), uri.replace('-', "_"), uri.replace('-', ".")] {
                let pairs = [(method, "GET"), (uri, "/a"), (twin.as_str(), "/a")];
                assert_eq!(
                    ask(kind, &pairs),
                    Err(RequestError::GatewayHeaderRepeated),
                    "{twin}"
                );
            }
            let twin = method.replace('-', "_");
            let pairs = [(method, "GET"), (twin.as_str(), "GET"), (uri, "/a")];
            assert_eq!(ask(kind, &pairs), Err(RequestError::GatewayHeaderRepeated));
        }
    }

    #[test]
    fn the_method_must_be_an_http_method() {
        for bad in ["", "GE T", "G\u{e9}T", "GET,DELETE"] {
            let h = {
                let mut map = HeaderMap::new();
                map.append(
                    "x-original-method",
                    http::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
                );
                map.append("x-original-uri", http::HeaderValue::from_static("/a"));
                map
            };
            assert_eq!(
                original_request(GatewayKind::Nginx, &h, "GET", ENDPOINT, ENDPOINT.len()),
                Err(RequestError::GatewayMethodInvalid),
                "`{bad}`"
            );
        }
    }
}
