//! Error types of the engine, in Cedar's message style: lowercase, no final period,
//! user input in backticks.

use thiserror::Error;

use crate::policy::PolicyDiagnostic;

/// Policies, schema or roles that do not compile or validate. Carries every problem found.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("policy set is invalid: {} problem(s), first: {}", .0.len(), .0.first().map(ToString::to_string).unwrap_or_default())]
pub struct CompileError(pub Vec<PolicyDiagnostic>);
