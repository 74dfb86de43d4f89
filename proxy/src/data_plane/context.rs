//! The request context: the clock in the configured time zone, the client address, and the
//! risk score and device id — from the token, or from headers only when the peer is a
//! configured trusted hop; and the attributes a route takes from the request (headers —
//! from trusted hops only unless the route says otherwise —, query and path parameters,
//! claims), each parsed to its schema type or refused.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use portcullis_engine::decision::{ContextKind, ContextValue, LocalTime, RequestFacts};
use serde_json::Value;

use super::authn::Identity;
use crate::routes::{ContextFrom, ContextSource};

/// Context settings, parsed once.
#[derive(Debug, Clone)]
pub struct ContextSettings {
    time_zone: jiff::tz::TimeZone,
    fixed_now_ms: Option<i64>,
    trusted_hops: Vec<IpNet>,
    risk_header: HeaderName,
    device_header: HeaderName,
}

/// What [`ContextSettings::extra`] reads of one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The verified identity (its claims, when kept).
    pub identity: &'a Identity,
    /// The peer's address.
    pub peer: Option<IpAddr>,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The query string, without `?`.
    pub query: Option<&'a str>,
    /// The route's path parameters.
    pub params: &'a matchit::Params<'a, 'a>,
}

/// A claim as a value of `kind`: a string as a `String` (or parsed, for the others), a
/// number as a `Long`, a boolean as a `Bool`.
fn claim_value(kind: ContextKind, value: &Value) -> Option<ContextValue> {
    match (kind, value) {
        (_, Value::String(text)) => kind.parse(text),
        (ContextKind::Long, Value::Number(n)) => n.as_i64().map(ContextValue::Long),
        (ContextKind::Bool, Value::Bool(b)) => Some(ContextValue::Bool(*b)),
        _ => None,
    }
}

/// `X-Forwarded-For`.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// An address as text (`10.1.2.3`, `::1`), as `Display` writes it; IPv4 without `fmt`,
/// whose padding support makes it the dearer part of every request's two formattings
/// (the context and `X-Forwarded-For`).
pub fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    let mut digits = itoa::Buffer::new();
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        text.push_str(digits.format(octet));
    }
    text
}

impl ContextSettings {
    /// Settings of parsed values (see `crate::prepare::context`): the time zone local
    /// hours and weekdays are read in, a pinned clock (tests and demos), the peers whose
    /// forwarded headers are trusted, and the headers carrying a risk score and a device id.
    pub fn new(
        time_zone: jiff::tz::TimeZone,
        fixed_now_ms: Option<i64>,
        trusted_hops: Vec<IpNet>,
        risk_header: HeaderName,
        device_header: HeaderName,
    ) -> Self {
        Self {
            time_zone,
            fixed_now_ms,
            trusted_hops,
            risk_header,
            device_header,
        }
    }

    /// Whether the clock is pinned (`context.fixed_time`).
    pub fn clock_is_fixed(&self) -> bool {
        self.fixed_now_ms.is_some()
    }

    /// Now, in milliseconds since the epoch (the pinned instant if configured).
    pub fn now_ms(&self) -> i64 {
        self.fixed_now_ms
            .unwrap_or_else(|| jiff::Timestamp::now().as_millisecond())
    }

    /// Whether `peer` is a trusted hop.
    pub fn is_trusted(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| self.trusted_hops.iter().any(|net| net.contains(&ip)))
    }

    /// The context attributes `sources` take from the request, by name. `Err` names the
    /// first whose value is not of its type, or which the request gives more than once: the
    /// request is refused, not decided. An attribute the request does not carry (or a header
    /// from a peer it is not taken from) is left out.
    pub fn extra(
        &self,
        sources: &[ContextSource],
        request: &RequestParts<'_>,
    ) -> Result<Vec<(String, ContextValue)>, String> {
        let mut out = Vec::with_capacity(sources.len());
        for source in sources {
            let bad = || source.name.clone();
            let value = match &source.from {
                ContextFrom::Header { name, any_peer } => {
                    if !*any_peer && !self.is_trusted(request.peer) {
                        continue;
                    }
                    let mut values = request.headers.get_all(name).iter();
                    let first = values.next();
                    if values.next().is_some() {
                        return Err(bad());
                    }
                    let Some(value) = first else { continue };
                    let text = value.to_str().map_err(|_| bad())?.trim();
                    source.kind.parse(text).ok_or_else(bad)?
                }
                ContextFrom::Query(name) => {
                    // Decoded as the method-override screen decodes them: one reading.
                    let mut values = super::screen::query_params(request.query.unwrap_or_default())
                        .filter(|(key, _)| key.as_deref() == Some(name.as_str()));
                    let first = values.next();
                    if values.next().is_some() {
                        return Err(bad());
                    }
                    let Some((_, pair)) = first else { continue };
                    let text = super::screen::query_value(pair).ok_or_else(bad)?;
                    source.kind.parse(&text).ok_or_else(bad)?
                }
                ContextFrom::Path(name) => {
                    let Some(raw) = request.params.get(name) else {
                        continue;
                    };
                    let text = super::path::decode_param(raw).ok_or_else(bad)?;
                    source.kind.parse(&text).ok_or_else(bad)?
                }
                ContextFrom::Claim(pointer) => {
                    let Some(value) = request
                        .identity
                        .claims
                        .as_deref()
                        .and_then(|claims| super::authn::claims::at(claims, pointer))
                    else {
                        continue;
                    };
                    claim_value(source.kind, value).ok_or_else(bad)?
                }
            };
            out.push((source.name.clone(), value));
        }
        Ok(out)
    }

    /// The client address: the peer, or — when the peer is a trusted hop — the rightmost
    /// address of `X-Forwarded-For` that is not itself a trusted hop.
    pub fn client_ip(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut chain: Vec<IpAddr> = Vec::new();
        for value in headers.get_all(FORWARDED_FOR) {
            let Ok(text) = value.to_str() else {
                return peer;
            };
            for part in text.split(',') {
                match part.trim().parse::<IpAddr>() {
                    Ok(ip) => chain.push(ip),
                    // An unreadable entry ends what we can believe.
                    Err(_) => return peer,
                }
            }
        }
        let mut client = peer;
        for ip in chain.into_iter().rev() {
            client = Some(ip);
            if !self.is_trusted(Some(ip)) {
                break;
            }
        }
        client
    }

    /// The facts of one request.
    pub fn facts(
        &self,
        identity: &Identity,
        band: &str,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
        now_ms: i64,
    ) -> RequestFacts {
        let trusted = self.is_trusted(peer);
        let header_text = |name: &HeaderName| {
            trusted
                .then(|| headers.get(name))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let header_risk = header_text(&self.risk_header).map(|v| {
            v.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map_or(100, |f| f.round().clamp(0.0, 100.0) as i64)
        });
        // Both sources given: the higher risk counts.
        let risk_score = match (identity.risk_score, header_risk) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b).unwrap_or(0),
        };
        let device_id = identity
            .device_id
            .clone()
            .or_else(|| header_text(&self.device_header).map(str::to_owned));
        RequestFacts {
            now: now_ms,
            local_time: LocalTime::at(now_ms, &self.time_zone),
            risk_score,
            mfa: identity.mfa,
            device_id,
            ip: self.client_ip(peer, headers).map(ip_text),
            band: band.to_owned(),
            extra: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_model::principal_ref;

    fn settings(hops: &[&str]) -> ContextSettings {
        crate::prepare::context(&crate::config::ContextConfig {
            time_zone: String::from("Europe/Berlin"),
            fixed_time: Some(String::from("2026-01-05T08:30:00Z")),
            trusted_hops: hops.iter().map(|s| s.to_string()).collect(),
            ..crate::config::ContextConfig::default()
        })
        .unwrap()
    }

    fn identity() -> Identity {
        Identity {
            principal: principal_ref(portcullis_model::PrincipalKind::User, "a"),
            tenant: None,
            mfa: false,
            risk_score: None,
            device_id: None,
            session_ids: vec![],
            expires_at: 0,
            issued_at: None,
            claimed: None,
            claims: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.45",
            "255.255.255.255",
            "::1",
            "fe80::1:2",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
            assert_eq!(ip_text(ip), text);
        }
    }

    #[test]
    fn forwarded_for_counts_only_from_trusted_hops() {
        let s = settings(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 10.0.0.7")]);
        let untrusted: IpAddr = "192.0.2.1".parse().unwrap();
        let trusted: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(s.client_ip(Some(untrusted), &h), Some(untrusted));
        assert_eq!(s.client_ip(Some(trusted), &h), "1.2.3.4".parse().ok());
        let spoofed = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4")]);
        assert_eq!(s.client_ip(Some(trusted), &spoofed), "1.2.3.4".parse().ok());
        let junk = headers(&[("x-forwarded-for", "nonsense")]);
        assert_eq!(s.client_ip(Some(trusted), &junk), Some(trusted));
    }

    #[test]
    fn risk_and_device_headers_need_a_trusted_peer_and_the_clock_is_local() {
        let s = settings(&["10.0.0.0/8"]);
        let h = headers(&[("x-risk-score", "85"), ("x-device-id", "laptop")]);
        let f = s.facts(
            &identity(),
            "GREEN",
            "192.0.2.1".parse().ok(),
            &h,
            s.now_ms(),
        );
        assert_eq!((f.risk_score, f.device_id.as_deref()), (0, None));
        let f = s.facts(
            &identity(),
            "GREEN",
            "10.1.1.1".parse().ok(),
            &h,
            s.now_ms(),
        );
        assert_eq!((f.risk_score, f.device_id.as_deref()), (85, Some("laptop")));
        // 08:30 UTC on Monday 5 January 2026 is 09:30 in Berlin.
        assert_eq!((f.local_time.hour, f.local_time.weekday), (9, 1));
    }
}
