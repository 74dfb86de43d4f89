//! End-to-end tests: the real `portcullis serve` binary between a real client and a real
//! upstream over loopback sockets, on its real SQLite store, with JWTs signed by real keys —
//! and, for the decision endpoint, a real nginx (Debian's) in front; the admin API is checked
//! against its OpenAPI document by schemathesis.

#![expect(
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test harness: failures end the test loudly"
)]

mod harness;
mod world;

mod admin;
mod audit;
mod audit_sqs;
mod cached_state;
mod chart;
mod cluster;
mod distribution;
mod enforcement;
mod events;
mod gateway;
mod hardening;
mod inject;
mod lifecycle;
mod requests;
mod shutdown;
mod tokens;
mod traffic;
