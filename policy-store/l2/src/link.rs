//! One connection to Redis, made on first use and remade by itself, every call bounded by
//! a deadline; after a failed connect no new one is tried for a second, so a Redis that is
//! down costs a caller nothing but that check.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::L2Error;

/// The connection, shared by the calls of one client.
pub(crate) struct Link {
    client: redis::Client,
    connection: ArcSwapOption<ConnectionManager>,
    /// No connect is tried before this instant (ms since `started`): after a failure.
    retry_at_ms: AtomicI64,
    started: Instant,
    pub(crate) timeout: Duration,
}

impl Link {
    /// A link to the Redis at `url` (`redis://host:port/db`). Does not connect yet.
    pub(crate) fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis url: {e}"))?;
        Ok(Self {
            client,
            connection: ArcSwapOption::empty(),
            retry_at_ms: AtomicI64::new(0),
            started: Instant::now(),
            timeout,
        })
    }

    fn elapsed_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// The connection, made now if there is none (at most one attempt a second).
    pub(crate) async fn connection(&self) -> Result<ConnectionManager, L2Error> {
        if let Some(connection) = self.connection.load_full() {
            return Ok((*connection).clone());
        }
        if self.elapsed_ms() < self.retry_at_ms.load(Ordering::Relaxed) {
            return Err(L2Error::Unavailable(String::from(
                "not connected; retrying shortly",
            )));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1);
        let made = tokio::time::timeout(
            self.timeout,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await;
        match made {
            Ok(Ok(connection)) => {
                self.connection
                    .store(Some(std::sync::Arc::new(connection.clone())));
                Ok(connection)
            }
            Ok(Err(e)) => {
                self.retry_at_ms
                    .store(self.elapsed_ms() + 1000, Ordering::Relaxed);
                Err(L2Error::Unavailable(e.to_string()))
            }
            Err(_) => {
                self.retry_at_ms
                    .store(self.elapsed_ms() + 1000, Ordering::Relaxed);
                Err(L2Error::Unavailable(String::from("connect timed out")))
            }
        }
    }

    /// Runs one call with the deadline.
    pub(crate) async fn call<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, L2Error> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(L2Error::Unavailable(e.to_string())),
            Err(_) => Err(L2Error::Unavailable(String::from("timed out"))),
        }
    }
}
