//! `portcullis-admin-api` will own the control plane's HTTP API (axum): CRUD over the
//! policy store, what-if authorization, events in, snapshot and watch out to sidecars.
//!
//! Not built yet: it is the control-plane issue's work. The crate exists so the workspace
//! has the layout of DESIGN.md; it talks to the store only through
//! `portcullis_policy_store::store::Store`.
