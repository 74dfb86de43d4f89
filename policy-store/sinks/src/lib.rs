//! `portcullis-sinks` owns shipping the audit ledger out of the process, in order and
//! without loss: to a Redis Stream ([`redis_sink`], feature `redis`) or an SQS queue
//! ([`sqs_sink`], feature `sqs`, whose client the event sources share); and the jittered
//! [`backoff`] every reconnect loop of the workspace uses. A binary built without a sink's
//! feature links neither its client nor its dependencies. Tests get servers of their own
//! from [`testing`] (feature `test-support`).

pub mod backoff;
#[cfg(feature = "redis")]
pub mod redis_sink;
#[cfg(feature = "sqs")]
pub mod sqs_sink;
#[cfg(feature = "test-support")]
pub mod testing;
