//! What a request may not carry, checked before it is routed or decided: anything that
//! would let the upstream read the request differently from how it was decided.
//!
//! - One credential: a repeated `Authorization`, or one beside an `access_token` query
//!   parameter (RFC 6750 §2.3), is refused, since only one of them would be verified.
//! - Method overrides (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override` in
//!   every spelling, and the query parameters named in `enforcement.method_override_query`)
//!   naming another method than the one decided are refused (`method_override: refuse`,
//!   the default) or removed before forwarding (`strip`). The decision endpoint cannot
//!   remove anything from what the gateway forwards, so there it always refuses.
//! - `Host`: HTTP/1.1 needs exactly one, naming a host (or address) and an optional port.
//!
//! Every refusal is a 400 with a stable reason ([`RequestError::code`]).

use std::borrow::Cow;

use http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::headers::{METHOD_OVERRIDE_HEADERS, spells};
use super::path::decode_param;

/// Why a request was refused as ambiguous before routing (every variant is a 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// More than one credential.
    CredentialsRepeated,
    /// A method override names another method than the request's.
    MethodOverride,
    /// HTTP/1.1 without `Host`.
    HostMissing,
    /// `Host` repeated, or not a host and optional port.
    HostInvalid,
    /// Decision endpoint: the gateway's original-method header is missing.
    GatewayMethodMissing,
    /// Decision endpoint: the gateway's original-URI header is missing.
    GatewayUriMissing,
    /// Decision endpoint: a header naming the original method or URI is repeated, in
    /// whatever spelling.
    GatewayHeaderRepeated,
    /// Decision endpoint: headers naming the original method or URI disagree.
    GatewayHeadersConflict,
    /// Decision endpoint: the original method is not an HTTP method.
    GatewayMethodInvalid,
    /// A context attribute the route takes from the request is not of its schema type, or
    /// is given more than once.
    BadContext,
}

impl RequestError {
    /// A short, stable code for responses, logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Self::CredentialsRepeated => "credentials_repeated",
            Self::MethodOverride => "method_override",
            Self::HostMissing => "host_missing",
            Self::HostInvalid => "host_invalid",
            Self::GatewayMethodMissing => "gateway_method_missing",
            Self::GatewayUriMissing => "gateway_uri_missing",
            Self::GatewayHeaderRepeated => "gateway_header_repeated",
            Self::GatewayHeadersConflict => "gateway_headers_conflict",
            Self::GatewayMethodInvalid => "gateway_method_invalid",
            Self::BadContext => "bad_context",
        }
    }
}

/// What to do with a method override that names another method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodOverride {
    /// Refuse the request (400 `method_override`).
    #[default]
    Refuse,
    /// Remove the override before forwarding; the request is decided as its own method.
    Strip,
}

/// The screening settings, from `enforcement`.
#[derive(Debug, Clone, Default)]
pub struct Screen {
    /// Refuse or strip.
    pub method_override: MethodOverride,
    /// Query parameters that act as method overrides (e.g. `_method`).
    pub override_query: Vec<String>,
}

/// The query parameter of RFC 6750 §2.3.
const ACCESS_TOKEN: &str = "access_token";

/// A query parameter's name or value as a server decodes it (`+` a space, `%XX` a byte);
/// borrowed when there is nothing to decode (the usual case, on every request).
fn decode_form(text: &str) -> Option<Cow<'_, str>> {
    if text.contains(['%', '+']) {
        decode_param(&text.replace('+', " ")).map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(text))
    }
}

/// `(decoded name, raw pair)` of each `&`-separated query parameter.
pub(super) fn query_params(query: &str) -> impl Iterator<Item = (Option<Cow<'_, str>>, &str)> {
    query.split('&').map(|pair| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        (decode_form(name), pair)
    })
}

/// The decoded value of a `name=value` pair (empty without `=`).
pub(super) fn query_value(pair: &str) -> Option<Cow<'_, str>> {
    decode_form(pair.split_once('=').map_or("", |(_, v)| v))
}

impl Screen {
    /// Whether a (decoded) query parameter name is a configured method override.
    fn is_override(&self, name: &str) -> bool {
        self.override_query.iter().any(|o| o == name)
    }

    /// Refuses what is ambiguous about the request's credentials and method. With
    /// `can_strip` (the request is forwarded by Portcullis) and `strip` configured, method
    /// overrides are left for [`Self::strip_query`] and the header filter to remove.
    pub fn check(
        &self,
        method: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        can_strip: bool,
    ) -> Result<(), RequestError> {
        let mut authorizations = headers.get_all(http::header::AUTHORIZATION).iter();
        let has_authorization = authorizations.next().is_some();
        if authorizations.next().is_some() {
            return Err(RequestError::CredentialsRepeated);
        }
        let params = || query.into_iter().flat_map(query_params);
        if has_authorization && params().any(|(name, _)| name.as_deref() == Some(ACCESS_TOKEN)) {
            return Err(RequestError::CredentialsRepeated);
        }
        if can_strip && self.method_override == MethodOverride::Strip {
            return Ok(());
        }
        let other_method =
            |value: &[u8]| !value.trim_ascii().eq_ignore_ascii_case(method.as_bytes());
        let header_override = headers.iter().any(|(name, value)| {
            METHOD_OVERRIDE_HEADERS
                .iter()
                .any(|m| spells(name.as_str(), m))
                && other_method(value.as_bytes())
        });
        let query_override = || {
            params().any(|(name, pair)| {
                name.is_some_and(|n| self.is_override(&n))
                    && query_value(pair).is_none_or(|v| other_method(v.as_bytes()))
            })
        };
        if header_override || (!self.override_query.is_empty() && query_override()) {
            return Err(RequestError::MethodOverride);
        }
        Ok(())
    }

    /// The query without its override parameters, when they are to be stripped; `None`
    /// when it stays as it is.
    pub fn strip_query(&self, query: Option<&str>) -> Option<Option<String>> {
        let query = query?;
        if self.method_override != MethodOverride::Strip || self.override_query.is_empty() {
            return None;
        }
        let is_override =
            |name: &Option<Cow<'_, str>>| name.as_ref().is_some_and(|n| self.is_override(n));
        if !query_params(query).any(|(name, _)| is_override(&name)) {
            return None;
        }
        let kept: Vec<&str> = query_params(query)
            .filter(|(name, _)| !is_override(name))
            .map(|(_, pair)| pair)
            .collect();
        Some((!kept.is_empty()).then(|| kept.join("&")))
    }
}

/// The host name a request names, without port, and without a trailing dot (so
/// `example.com.` routes like `example.com`): from its single `Host` header, or the
/// authority of an HTTP/2 request. HTTP/1.1 without `Host`, a repeated `Host` and one that
/// is not `host[:port]` are refused.
pub fn host<'a>(
    version: http::Version,
    headers: &'a HeaderMap,
    authority: Option<&'a str>,
) -> Result<Option<&'a str>, RequestError> {
    let mut values = headers.get_all(http::header::HOST).iter();
    let Some(value) = values.next() else {
        return match (version, authority) {
            (_, Some(authority)) => host_name(authority).map(Some),
            (http::Version::HTTP_10 | http::Version::HTTP_09, None) => Ok(None),
            (_, None) => Err(RequestError::HostMissing),
        };
    };
    if values.next().is_some() {
        return Err(RequestError::HostInvalid);
    }
    let text = value.to_str().map_err(|_| RequestError::HostInvalid)?;
    host_name(text).map(Some)
}

/// The name of `host[:port]` (a `[v6]` literal kept in brackets), its trailing dot removed.
fn host_name(text: &str) -> Result<&str, RequestError> {
    if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(RequestError::HostInvalid)?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| RequestError::HostInvalid)?;
        if !after.is_empty() {
            valid_port(after.strip_prefix(':').ok_or(RequestError::HostInvalid)?)?;
        }
        return text.get(..v6.len() + 2).ok_or(RequestError::HostInvalid);
    }
    let name = match text.rsplit_once(':') {
        Some((name, port)) => {
            valid_port(port)?;
            name
        }
        None => text,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..");
    if valid {
        Ok(name)
    } else {
        Err(RequestError::HostInvalid)
    }
}

fn valid_port(port: &str) -> Result<(), RequestError> {
    if !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(RequestError::HostInvalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::data_plane::headers::header_map as headers;

    #[test]
    fn one_credential_per_request() {
        let screen = Screen::default();
        let one = headers(&[("authorization", "Bearer a")]);
        let two = headers(&[("authorization", "Bearer a"), ("Authorization", "Bearer b")]);
        assert_eq!(screen.check("GET", None, &one, true), Ok(()));
        assert_eq!(
            screen.check("GET", None, &two, true),
            Err(RequestError::CredentialsRepeated)
        );
        for query in [
            "access_token=b",
            "x=1&access_token",
            "access%5Ftoken=b",
            "a=1&access_token=b",
        ] {
            assert_eq!(
                screen.check("GET", Some(query), &one, true),
                Err(RequestError::CredentialsRepeated),
                "{query}"
            );
        }
        // Alone, a query token is no second credential (and is not verified either).
        assert_eq!(
            screen.check("GET", Some("access_token=b"), &HeaderMap::new(), true),
            Ok(())
        );
        assert_eq!(
            screen.check("GET", Some("access_tokens=b"), &one, true),
            Ok(())
        );
    }

    #[test]
    fn method_overrides_naming_another_method_are_refused_in_every_spelling() {
        let screen = Screen {
            method_override: MethodOverride::Refuse,
            override_query: vec![String::from("_method")],
        };
        for name in [
            "X-HTTP-Method-Override",
            "x-http-method-override",
            "X_HTTP_Method_Override",
            "x.http.method.override",
            "X-HTTP-Method",
            "X-Method-Override",
            "x_method_override",
        ] {
            let h = headers(&[(name, "DELETE")]);
            assert_eq!(
                screen.check("GET", None, &h, true),
                Err(RequestError::MethodOverride),
                "{name}"
            );
            let same = headers(&[(name, " get ")]);
            assert_eq!(
                screen.check("GET", None, &same, true),
                Ok(()),
                "{name}: same method"
            );
        }
        for query in [
            "_method=DELETE",
            "a=1&_method=delete",
            "%5Fmethod=PUT",
            "_method",
        ] {
            assert_eq!(
                screen.check("GET", Some(query), &HeaderMap::new(), true),
                Err(RequestError::MethodOverride),
                "{query}"
            );
        }
        assert_eq!(
            screen.check("POST", Some("_method=post"), &HeaderMap::new(), true),
            Ok(())
        );
        let not_configured = Screen::default();
        assert_eq!(
            not_configured.check("GET", Some("_method=DELETE"), &HeaderMap::new(), true),
            Ok(())
        );
    }

    #[test]
    fn strip_mode_strips_when_portcullis_forwards_and_refuses_when_it_cannot() {
        let screen = Screen {
            method_override: MethodOverride::Strip,
            override_query: vec![String::from("_method")],
        };
        let h = headers(&[("x-http-method-override", "DELETE")]);
        assert_eq!(screen.check("GET", None, &h, true), Ok(()));
        assert_eq!(
            screen.check("GET", None, &h, false),
            Err(RequestError::MethodOverride),
            "the decision endpoint cannot strip"
        );
        assert_eq!(
            screen.strip_query(Some("a=1&_method=DELETE&b=2&%5Fmethod=PUT")),
            Some(Some(String::from("a=1&b=2")))
        );
        assert_eq!(screen.strip_query(Some("_method=DELETE")), Some(None));
        assert_eq!(screen.strip_query(Some("a=1")), None);
        let refuse = Screen {
            method_override: MethodOverride::Refuse,
            ..screen
        };
        assert_eq!(refuse.strip_query(Some("_method=DELETE")), None);
    }

    #[test]
    fn host_is_one_name_or_address_with_an_optional_port() {
        let v11 = http::Version::HTTP_11;
        let h = |v: &str| headers(&[("host", v)]);
        assert_eq!(host(v11, &h("example.com."), None), Ok(Some("example.com")));
        assert_eq!(
            host(v11, &h("example.com.:80"), None),
            Ok(Some("example.com"))
        );
        assert_eq!(
            host(v11, &h("Example.com:8080"), None),
            Ok(Some("Example.com"))
        );
        assert_eq!(host(v11, &h("[::1]:80"), None), Ok(Some("[::1]")));
        assert_eq!(host(v11, &h("10.0.0.1"), None), Ok(Some("10.0.0.1")));
        assert_eq!(
            host(v11, &HeaderMap::new(), None),
            Err(RequestError::HostMissing)
        );
        assert_eq!(
            host(http::Version::HTTP_10, &HeaderMap::new(), None),
            Ok(None)
        );
        assert_eq!(
            host(
                http::Version::HTTP_2,
                &HeaderMap::new(),
                Some("api.example")
            ),
            Ok(Some("api.example"))
        );
        for bad in [
            "", "a b", "a/b", "a@b", ".", "a..b", "[::1", "[x]", "a:", "a:123456", "a:8x",
            "[::1]x", "a..",
        ] {
            assert_eq!(
                host(v11, &h(bad), None),
                Err(RequestError::HostInvalid),
                "`{bad}`"
            );
        }
        let two = headers(&[("host", "a"), ("host", "b")]);
        assert_eq!(host(v11, &two, None), Err(RequestError::HostInvalid));
    }
}
