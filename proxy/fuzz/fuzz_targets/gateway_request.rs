//! The decision endpoint's reading of a gateway's request on any header set: it never
//! panics, and whatever it accepts is what the configured kind's own header says, said
//! exactly once and contradicted by no other original-method or original-URI header.
//!
//! Input: a kind byte, then `name:value` lines (the first line is the endpoint request's
//! raw path), split on `\n`.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis_proxy::data_plane::gateway::{GatewayKind, original_request};
use portcullis_proxy::data_plane::headers::spells;
use portcullis_proxy::data_plane::path::normalize;

const ENDPOINT: &[u8] = b"/.portcullis/authz";

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let kind = match kind % 3 {
        0 => GatewayKind::Nginx,
        1 => GatewayKind::Traefik,
        _ => GatewayKind::Envoy,
    };
    let mut lines = rest.split(|&b| b == b'\n');
    let suffix = lines.next().unwrap_or_default();
    let raw_path = [ENDPOINT, suffix].concat();
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(value.get(1..).unwrap_or_default()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let Ok(asked) = original_request(kind, &headers, "GET", &raw_path, ENDPOINT.len()) else {
        return;
    };
    assert!(http::Method::from_bytes(asked.method.as_bytes()).is_ok());
    let said_by = |canonical: &str| -> Vec<&[u8]> {
        headers
            .iter()
            .filter(|(n, _)| spells(n.as_str(), canonical))
            .map(|(_, v)| v.as_bytes())
            .collect()
    };
    let (method_header, uri_header) = match kind {
        GatewayKind::Nginx => ("x-original-method", "x-original-uri"),
        GatewayKind::Traefik => ("x-forwarded-method", "x-forwarded-uri"),
        GatewayKind::Envoy => {
            assert_eq!(asked.method, "GET");
            ("x-forwarded-method", "x-forwarded-uri")
        }
    };
    if kind != GatewayKind::Envoy {
        assert_eq!(said_by(method_header), [asked.method.as_bytes()]);
        assert_eq!(said_by(uri_header), [&*asked.target]);
    }
    for other in ["x-original-method", "x-forwarded-method"] {
        assert!(said_by(other).iter().all(|v| *v == asked.method.as_bytes()));
    }
    for other in ["x-original-uri", "x-original-url", "x-forwarded-uri", "x-rewrite-url", "x-envoy-original-path"] {
        assert!(said_by(other).iter().all(|v| *v == &*asked.target));
    }
    // What is asked then goes through the same normaliser as any request.
    let _ = normalize(&asked.target);
});
