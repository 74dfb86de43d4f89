//! `portcullis-proxy` owns the data plane and the `portcullis` command line:
//!
//! - [`data_plane`]: the enforcing proxy (Pingora) — path normalisation, routing,
//!   authentication, context, decision, identity headers, the decision endpoint;
//! - [`app`]: the composition root of `serve`, `control` and `proxy`; [`control`]: the
//!   control plane's parts in the process (store, publisher, admin API); [`admin_tls`]:
//!   the admin listener over TLS;
//! - [`process`]: the process every mode runs in — the background tasks under one shutdown
//!   signal, and the order things stop in;
//! - [`server`], [`ops`], [`tls`]: the listeners, health and metrics, the HTTPS certificate;
//!   [`head_deadline`]: the deadline for a whole request head;
//! - [`audit`]: the audit ledger of the process (files, signing key, sinks, counts);
//!   [`metrics`]: the process's Prometheus registry;
//! - [`config`], [`reload`], [`file_watch`]: the configuration, its live reload, and how
//!   changed files are noticed; [`prepare`]: the
//!   data plane's settings made from it (the data plane reads no configuration);
//! - [`embedded`], [`devkey`]: the embedded store and dev key of `portcullis serve`;
//!   [`admin_jwt`]: admin JWTs for the admin API, verified with the data plane's keys;
//! - [`inject`]: the Kubernetes sidecar injection (webhook and `portcullis inject`);
//! - [`follow`]: how `portcullis proxy` follows a control plane, with a last-known-good file;
//!   [`state_cache`]: the users, services and entities it holds apart in cached state
//!   mode;
//! - [`policy_dir`], [`routes`], [`policy_tests`]: policy as code;
//! - [`cli`]: one module per subcommand.

#[cfg(feature = "control-plane")]
pub mod admin_jwt;
#[cfg(feature = "control-plane")]
pub mod admin_tls;
pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
#[cfg(feature = "control-plane")]
pub mod control;
pub mod data_plane;
pub mod devkey;
pub mod ed25519_key;
#[cfg(feature = "control-plane")]
pub mod embedded;
pub mod file_watch;
pub mod follow;
pub mod head_deadline;
#[cfg(feature = "control-plane")]
pub mod inject;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod policy_dir;
#[cfg(feature = "control-plane")]
pub mod policy_tests;
pub mod prepare;
pub mod process;
pub mod reload;
pub mod routes;
pub mod server;
pub mod state_cache;
pub mod tls;
