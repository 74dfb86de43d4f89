//! CORS per route (`cors` in the route map): which origins a browser may call a route from,
//! with which methods and request headers, and whether with credentials.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered by
//! Portcullis itself from the route the request it announces would take: 204 with the
//! `Access-Control-Allow-*` headers when the policy allows it, 403 `cors_refused` (without
//! them, so the browser stops) when not. It is never authenticated, decided or forwarded.
//! The actual request is authenticated and decided like any other; its answer — forwarded
//! or refused — carries `Access-Control-Allow-Origin` for an allowed origin, so the page can
//! read a 401 or 429 too. Every answer of a route with a policy says `Vary: Origin`.

use http::{HeaderMap, HeaderName, HeaderValue};

/// A route's CORS policy, compiled from the route map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsPolicy {
    /// Allowed origins (`scheme://host[:port]`, lower case); empty with `any_origin`.
    origins: Vec<String>,
    /// `*`: any origin (never with credentials).
    any_origin: bool,
    /// Methods a preflight may announce.
    methods: Vec<String>,
    /// `Access-Control-Allow-Methods`.
    methods_value: HeaderValue,
    /// Request headers a preflight may announce (lower case), beyond the safelisted ones.
    headers: Vec<HeaderName>,
    /// Cookies and `Authorization` may be sent: `Access-Control-Allow-Credentials: true`.
    credentials: bool,
    /// `Access-Control-Max-Age`.
    max_age: HeaderValue,
}

/// The CORS route-map entry.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsSpec {
    origins: Vec<String>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    credentials: bool,
    #[serde(default = "default_max_age")]
    max_age_seconds: u32,
}

fn default_max_age() -> u32 {
    600
}

/// Request headers a browser sends without asking (the CORS-safelisted ones).
const SAFELISTED: &[&str] = &[
    "accept",
    "accept-language",
    "content-language",
    "content-type",
];

/// `Access-Control-Request-Method`.
pub const REQUEST_METHOD: &str = "access-control-request-method";
const REQUEST_HEADERS: &str = "access-control-request-headers";
const ALLOW_ORIGIN: &str = "access-control-allow-origin";
const ALLOW_CREDENTIALS: &str = "access-control-allow-credentials";
const ALLOW_METHODS: &str = "access-control-allow-methods";
const ALLOW_HEADERS: &str = "access-control-allow-headers";
const MAX_AGE: &str = "access-control-max-age";

/// Whether `origin` is an origin: `scheme://host[:port]`, nothing after.
fn is_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
}

impl CorsPolicy {
    /// Compiles `spec` for a route answering `route_methods`; every problem in one message.
    pub fn compile(spec: &CorsSpec, route_methods: &[String]) -> Result<Self, String> {
        let mut problems = Vec::new();
        let any_origin = spec.origins.iter().any(|o| o == "*");
        if spec.origins.is_empty() {
            problems.push(String::from(
                "`origins` must name at least one origin (or \"*\")",
            ));
        }
        for origin in spec.origins.iter().filter(|o| *o != "*") {
            if !is_origin(origin) {
                problems.push(format!(
                    "`{origin}` is not an origin like https://app.example.com"
                ));
            }
        }
        if any_origin && spec.origins.len() > 1 {
            problems.push(String::from("\"*\" stands alone in `origins`"));
        }
        if any_origin && spec.credentials {
            problems.push(String::from(
                "`credentials: true` needs the origins named: browsers refuse \"*\" with credentials",
            ));
        }
        let methods = spec
            .methods
            .clone()
            .unwrap_or_else(|| route_methods.to_vec());
        for m in &methods {
            if !route_methods.contains(m) {
                problems.push(format!("method `{m}` is not one the route answers"));
            }
        }
        let mut headers = Vec::new();
        for h in &spec.headers {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => headers.push(name),
                Err(_) => problems.push(format!("`{h}` is not a header name")),
            }
        }
        let methods_value = HeaderValue::from_str(&methods.join(", "));
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Self {
            origins: spec
                .origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            any_origin,
            methods,
            methods_value: methods_value.map_err(|e| e.to_string())?,
            headers,
            credentials: spec.credentials,
            max_age: HeaderValue::from(spec.max_age_seconds),
        })
    }

    /// The request's `Origin`, if this policy allows it.
    pub fn allowed_origin<'h>(&self, headers: &'h HeaderMap) -> Option<&'h HeaderValue> {
        let origin = headers.get(http::header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        (self.any_origin || self.origins.iter().any(|o| o.eq_ignore_ascii_case(text)))
            .then_some(origin)
    }

    /// The headers of an answer to an allowed origin's actual request.
    pub fn response_headers(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(2);
        out.push((HeaderName::from_static(ALLOW_ORIGIN), origin.clone()));
        if self.credentials {
            out.push((
                HeaderName::from_static(ALLOW_CREDENTIALS),
                HeaderValue::from_static("true"),
            ));
        }
        out
    }

    /// The answer to a preflight: the headers of a 204, or why it is refused.
    pub fn preflight(
        &self,
        headers: &HeaderMap,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, &'static str> {
        let origin = self.allowed_origin(headers).ok_or("origin")?;
        let method = headers
            .get(REQUEST_METHOD)
            .and_then(|m| m.to_str().ok())
            .ok_or("method")?;
        if !self.methods.iter().any(|m| m == method) {
            return Err("method");
        }
        let asked = headers
            .get_all(REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty());
        let mut allowed_headers = Vec::new();
        for h in asked {
            let name = h.to_ascii_lowercase();
            if !SAFELISTED.contains(&name.as_str())
                && !self.headers.iter().any(|allowed| allowed.as_str() == name)
            {
                return Err("header");
            }
            allowed_headers.push(name);
        }
        let mut out = self.response_headers(origin);
        out.push((
            HeaderName::from_static(ALLOW_METHODS),
            self.methods_value.clone(),
        ));
        if !allowed_headers.is_empty()
            && let Ok(value) = HeaderValue::from_str(&allowed_headers.join(", "))
        {
            out.push((HeaderName::from_static(ALLOW_HEADERS), value));
        }
        out.push((HeaderName::from_static(MAX_AGE), self.max_age.clone()));
        Ok(out)
    }
}

/// Whether a request is a CORS preflight.
pub fn is_preflight(method: &str, headers: &HeaderMap) -> bool {
    method == "OPTIONS"
        && headers.contains_key(http::header::ORIGIN)
        && headers.contains_key(REQUEST_METHOD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> CorsSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn methods() -> Vec<String> {
        vec![String::from("GET"), String::from("PUT")]
    }

    #[test]
    fn a_preflight_is_allowed_only_for_named_origins_methods_and_headers() {
        let policy = CorsPolicy::compile(
            &spec("origins: [https://app.example.com]\nheaders: [authorization, x-trace]\ncredentials: true\nmax_age_seconds: 60\n"),
            &methods(),
        )
        .unwrap();
        let ok = policy
            .preflight(&headers(&[
                ("origin", "https://app.example.com"),
                (REQUEST_METHOD, "PUT"),
                (REQUEST_HEADERS, "Authorization, content-type"),
            ]))
            .unwrap();
        let got: Vec<(String, String)> = ok
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let want = [
            (ALLOW_ORIGIN, "https://app.example.com"),
            (ALLOW_CREDENTIALS, "true"),
            (ALLOW_METHODS, "GET, PUT"),
            (ALLOW_HEADERS, "authorization, content-type"),
            (MAX_AGE, "60"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(got, want);
        for (pairs, why) in [
            (
                &[("origin", "https://evil.example"), (REQUEST_METHOD, "GET")][..],
                "origin",
            ),
            (
                &[
                    ("origin", "https://app.example.com"),
                    (REQUEST_METHOD, "DELETE"),
                ][..],
                "method",
            ),
            (
                &[
                    ("origin", "https://app.example.com"),
                    (REQUEST_METHOD, "GET"),
                    (REQUEST_HEADERS, "x-admin"),
                ][..],
                "header",
            ),
        ] {
            assert_eq!(policy.preflight(&headers(pairs)), Err(why));
        }
    }

    #[test]
    fn every_bad_policy_is_named() {
        let problems = CorsPolicy::compile(
            &spec("origins: [\"*\", https://app.example.com/path]\nmethods: [DELETE]\ncredentials: true\nheaders: [\"bad header\"]\n"),
            &methods(),
        )
        .unwrap_err();
        for part in [
            "https://app.example.com/path",
            "stands alone",
            "credentials",
            "`DELETE`",
            "`bad header`",
        ] {
            assert!(problems.contains(part), "{part}: {problems}");
        }
    }
}
