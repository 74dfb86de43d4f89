//! `portcullis-proxy` owns the data plane and the `portcullis` command line. So far it holds
//! the policy-as-code tools (loading and validating a policies directory, the route map,
//! the declarative policy tests) and the CLI; the Pingora proxy itself is the next step.

pub mod cli;
pub mod policy_dir;
pub mod policy_tests;
pub mod routes;
