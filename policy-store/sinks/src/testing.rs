//! Test support (feature `test-support`): a `redis-server` and a moto SQS server of a test's
//! own, each on a port the test picks, stopped when dropped — so a test may also stop one
//! mid-run and start it again. Debian's `redis-server` and PyPI's `moto[server]`;
//! `tests/setup` installs both.

#![expect(
    clippy::expect_used,
    reason = "test support: a server that cannot start fails the test loudly"
)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on now, from below the kernel's ephemeral range (32768 and up
/// on Linux): a port the kernel hands out for `bind(0)` may be taken again at once as the
/// local port of some outgoing connection (a test's own client), before the server the
/// test starts has bound it. Drawn at random, so tests running at once rarely meet.
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = rng.gen_range(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A `redis-server` without persistence: a restart starts empty.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    /// Where it listens, on 127.0.0.1.
    pub port: u16,
}

impl RedisServer {
    /// Starts one on `port` and waits until it answers.
    pub fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (Debian package `redis-server`)");
        let me = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while me.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// What `redis-cli` prints for `args`.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The values of `field` in `stream`, in stream order.
    pub fn field_values(&self, stream: &str, field: &str) -> Vec<String> {
        let raw = self.cli(&["XRANGE", stream, "-", "+"]);
        let lines: Vec<&str> = raw.lines().collect();
        lines
            .windows(2)
            .filter(|w| w.first() == Some(&field))
            .filter_map(|w| w.get(1).map(|v| (*v).to_owned()))
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's server: a real SQS endpoint, in memory (a restart starts empty).
#[derive(Debug)]
pub struct Moto {
    child: Child,
    /// Where it listens, on 127.0.0.1.
    pub port: u16,
}

impl Moto {
    /// Starts one on `port` and waits until it accepts connections.
    pub fn start(port: u16) -> Self {
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs (moto[server] from PyPI; tests/setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { child, port }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client of this endpoint with test credentials, in `us-east-1`.
    pub fn client(&self) -> aws_sdk_sqs::Client {
        use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
        use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .http_client(http)
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }

    /// Creates the queue `name` with `attributes` (a FIFO queue: `FifoQueue` `true`); its URL.
    pub async fn create_queue(
        &self,
        name: &str,
        attributes: &[(aws_sdk_sqs::types::QueueAttributeName, &str)],
    ) -> String {
        let mut create = self.client().create_queue().queue_name(name);
        for (key, value) in attributes {
            create = create.attributes(key.clone(), *value);
        }
        let created = create.send().await.expect("create queue");
        created.queue_url().expect("queue url").to_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
