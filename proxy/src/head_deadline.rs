//! A deadline for reading a whole request head (`listen.request_head_timeout_ms`), against
//! slowloris: Pingora's read timeout is per read, so a client sending one byte every few
//! seconds could keep a request — and a worker's connection slot — open forever.
//!
//! [`HeadDeadline`] wraps the data plane's Pingora app and each connection it is given in
//! a [`DeadlineStream`] that watches the bytes go by: from the first byte of a request head
//! to the blank line that ends it, at most the deadline may pass, or the read fails and the
//! connection is closed (counted in `portcullis_request_head_timeouts_total`). Bodies, the
//! wait between keep-alive requests (Pingora's keep-alive timeout), `100 Continue` and
//! upgraded connections (`101`, e.g. WebSocket) are not limited; neither is HTTP/2 (by
//! ALPN, or cleartext with prior knowledge: its connection preface), whose frames carry no
//! head to find.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The end of a request head.
const END_OF_HEAD: &[u8] = b"\r\n\r\n";

/// The start of the HTTP/2 connection preface: a cleartext HTTP/2 connection (prior
/// knowledge) opens with it, and then carries frames, not heads. No HTTP/1 request starts
/// so (`PRI` is no method).
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0\r\n";

/// How long a peek waits for the first byte of a request: Pingora's HTTP/1 keep-alive
/// timeout, which its peek comes before.
const KEEPALIVE_WAIT: Duration = Duration::from_secs(60);

/// The whole HTTP/2 connection preface, which Pingora peeks for on a plain connection.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `a` followed by `b` (at most three bytes each), on the stack, with its length.
fn joined(a: &[u8], b: &[u8]) -> ([u8; 6], usize) {
    let mut out = [0_u8; 6];
    for (slot, byte) in out.iter_mut().zip(a.iter().chain(b)) {
        *slot = *byte;
    }
    (out, (a.len() + b.len()).min(6))
}

/// Where the connection is in its current request.
#[derive(Debug)]
enum Phase {
    /// Between requests: no byte of the next head yet.
    Idle,
    /// A head is arriving; it must end before the timer fires. The timer is made the first
    /// time the head is incomplete and a read must wait (a head that arrives whole, the
    /// usual case, never makes one). `tail` holds the last bytes read, for an end split
    /// across reads.
    Head {
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        tail: [u8; 3],
        tail_len: usize,
    },
    /// The head ended: a body, then the response. The response's first write starts the
    /// wait for the next head (unless it is `100 Continue`).
    Request,
    /// Upgraded (`101`) or HTTP/2: nothing more to watch.
    Passthrough,
}

/// A connection whose request heads must arrive within a deadline.
#[derive(Debug)]
pub struct DeadlineStream {
    inner: Stream,
    limit: Duration,
    phase: Phase,
    /// Bytes a peek read ahead (`ahead[..ahead_len]`, from `ahead_at` on not yet read).
    ahead: [u8; 24],
    ahead_len: usize,
    ahead_at: usize,
    /// `portcullis_request_head_timeouts_total`.
    timeouts: prometheus::IntCounter,
}

impl DeadlineStream {
    fn new(inner: Stream, limit: Duration, timeouts: prometheus::IntCounter) -> Self {
        let h2 = inner.selected_alpn_proto() == Some(ALPN::H2);
        Self {
            inner,
            limit,
            timeouts,
            phase: if h2 { Phase::Passthrough } else { Phase::Idle },
            ahead: [0; 24],
            ahead_len: 0,
            ahead_at: 0,
        }
    }

    /// Follows the bytes just read through the head.
    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if matches!(self.phase, Phase::Idle) {
            if bytes.starts_with(H2_PREFACE_START) {
                // Cleartext HTTP/2 (the preface arrives whole in the first read).
                self.phase = Phase::Passthrough;
                return;
            }
            self.phase = Phase::Head {
                timer: None,
                tail: [0; 3],
                tail_len: 0,
            };
        }
        let Phase::Head { tail, tail_len, .. } = &mut self.phase else {
            return;
        };
        // A whole head in one read ends the read (a GET); otherwise search, across the
        // seam with the previous read's last bytes too.
        let kept = tail.get(..*tail_len).unwrap_or_default();
        let (seam, seam_len) = joined(kept, bytes.get(..3).unwrap_or(bytes));
        let ended = bytes.ends_with(END_OF_HEAD)
            || memchr::memmem::find(bytes, END_OF_HEAD).is_some()
            || memchr::memmem::find(seam.get(..seam_len).unwrap_or_default(), END_OF_HEAD)
                .is_some();
        if ended {
            self.phase = Phase::Request;
            return;
        }
        let recent = bytes.get(bytes.len().saturating_sub(3)..).unwrap_or(bytes);
        let (seen, seen_len) = joined(kept, recent);
        let last = seen
            .get(seen_len.saturating_sub(3)..seen_len)
            .unwrap_or_default();
        *tail_len = last.len();
        if let Some(t) = tail.get_mut(..last.len()) {
            t.copy_from_slice(last);
        }
    }

    /// Follows a write: a response's first bytes end the request, or the watching.
    fn wrote(&mut self, bytes: &[u8]) {
        if !matches!(self.phase, Phase::Request) || bytes.is_empty() {
            return;
        }
        let status = bytes.get(9..12);
        self.phase = match status {
            Some(b"101") => Phase::Passthrough,
            Some(b"100") => Phase::Request,
            _ => Phase::Idle,
        };
    }
}

/// The read error of a head past its deadline (counted).
fn timed_out(timeouts: &prometheus::IntCounter) -> io::Error {
    timeouts.inc();
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the request head did not arrive within listen.request_head_timeout_ms",
    )
}

impl AsyncRead for DeadlineStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // What a peek read ahead comes first, and is watched as it is read.
        if this.ahead_at < this.ahead_len {
            // A copy: `saw` borrows the stream.
            let ahead = this.ahead;
            let pending = ahead.get(this.ahead_at..this.ahead_len).unwrap_or_default();
            let given = pending
                .get(..pending.len().min(buf.remaining()))
                .unwrap_or_default();
            buf.put_slice(given);
            this.saw(given);
            this.ahead_at += given.len();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().get(before..).unwrap_or_default();
                this.saw(read);
                match &this.phase {
                    Phase::Head {
                        timer: Some(timer), ..
                    } if timer.is_elapsed() => Poll::Ready(Err(timed_out(&self.timeouts))),
                    _ => Poll::Ready(Ok(())),
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let limit = this.limit;
                match &mut this.phase {
                    Phase::Head { timer, .. } => {
                        let timer =
                            timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                        match timer.as_mut().poll(cx) {
                            Poll::Ready(()) => Poll::Ready(Err(timed_out(&self.timeouts))),
                            Poll::Pending => Poll::Pending,
                        }
                    }
                    _ => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for DeadlineStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            this.wrote(buf.get(..*n).unwrap_or_default());
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let (Poll::Ready(Ok(n)), Some(first)) = (&written, bufs.iter().find(|b| !b.is_empty())) {
            this.wrote(first.get(..(*n).min(first.len())).unwrap_or_default());
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for DeadlineStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for DeadlineStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for DeadlineStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for DeadlineStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for DeadlineStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for DeadlineStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

/// Pingora peeks at a new plain connection for the HTTP/2 preface (h2c) by reading until
/// its buffer is full. Here the peek reads only as long as what came can still be the
/// preface, within the head deadline: a short HTTP/1 request (`GET / HTTP/1.0`, 18 bytes)
/// is not left waiting for bytes that never come, and a client trickling bytes in is cut
/// at the deadline as its head would be. What was read is kept and read again first.
#[async_trait]
impl Peek for DeadlineStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        // Pingora peeks again on each kept-alive connection, before its own keep-alive
        // timeout applies: the first byte is waited for as long as that (60 s), then the
        // rest of the peek within the head deadline.
        // Bytes an earlier peek read ahead and nothing has read yet stay first.
        self.ahead
            .copy_within(self.ahead_at.min(self.ahead_len)..self.ahead_len, 0);
        self.ahead_len -= self.ahead_at.min(self.ahead_len);
        self.ahead_at = 0;
        let mut deadline = tokio::time::Instant::now()
            + if self.ahead_len == 0 {
                KEEPALIVE_WAIT
            } else {
                self.limit
            };
        let wanted = buf.len().min(self.ahead.len());
        while self.ahead_len < wanted
            && H2_PREFACE.starts_with(self.ahead.get(..self.ahead_len).unwrap_or_default())
        {
            let Some(room) = self.ahead.get_mut(self.ahead_len..wanted) else {
                break;
            };
            match tokio::time::timeout_at(deadline, self.inner.read(room)).await {
                Err(_) if self.ahead_len == 0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request on an idle connection",
                    ));
                }
                Err(_) => return Err(timed_out(&self.timeouts)),
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => {
                    if self.ahead_len == 0 {
                        deadline = tokio::time::Instant::now() + self.limit;
                    }
                    self.ahead_len += n;
                }
                Ok(Err(e)) => return Err(e),
            }
        }
        buf.fill(0);
        let peeked = self.ahead.get(..self.ahead_len).unwrap_or_default();
        if let Some(head) = buf.get_mut(..peeked.len()) {
            head.copy_from_slice(peeked);
        }
        Ok(true)
    }
}

/// A Pingora app whose connections read their request heads within a deadline.
pub struct HeadDeadline<A> {
    inner: Arc<A>,
    limit: Duration,
    timeouts: prometheus::IntCounter,
}

impl<A> HeadDeadline<A> {
    /// Wraps `inner`; `limit` is the time a whole request head may take; each connection
    /// closed for taking longer is counted in `timeouts`.
    pub fn new(inner: A, limit: Duration, timeouts: prometheus::IntCounter) -> Self {
        Self {
            inner: Arc::new(inner),
            limit,
            timeouts,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeadDeadline<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // A kept-alive connection comes back already wrapped.
        let stream: Stream = if stream.as_any().is::<DeadlineStream>() {
            stream
        } else {
            Box::new(DeadlineStream::new(
                stream,
                self.limit,
                self.timeouts.clone(),
            ))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase_after(reads: &[&[u8]]) -> &'static str {
        let (client, _server) = tokio::io::duplex(64);
        let mut stream = DeadlineStream::new(
            Box::new(Fake(client)),
            Duration::from_secs(1),
            prometheus::IntCounter::new("t", "t").unwrap(),
        );
        for read in reads {
            stream.saw(read);
        }
        match stream.phase {
            Phase::Idle => "idle",
            Phase::Head { .. } => "head",
            Phase::Request => "request",
            Phase::Passthrough => "passthrough",
        }
    }

    #[derive(Debug)]
    struct Fake(tokio::io::DuplexStream);

    impl AsyncRead for Fake {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Fake {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    #[async_trait]
    impl Shutdown for Fake {
        async fn shutdown(&mut self) {}
    }

    impl UniqueID for Fake {
        fn id(&self) -> UniqueIDType {
            0
        }
    }

    impl Ssl for Fake {}

    impl GetTimingDigest for Fake {
        fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
            Vec::new()
        }
    }

    impl GetProxyDigest for Fake {
        fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
            None
        }
    }

    impl GetSocketDigest for Fake {
        fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
            None
        }
    }

    #[async_trait]
    impl Peek for Fake {}

    #[tokio::test]
    async fn the_head_ends_at_the_blank_line_however_the_reads_split_it() {
        assert_eq!(phase_after(&[]), "idle");
        assert_eq!(phase_after(&[b"G"]), "head");
        assert_eq!(
            phase_after(&[b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"]),
            "request"
        );
        assert_eq!(
            phase_after(&[b"GET / HTTP/1.1\r\nhost: a\r", b"\n", b"\r", b"\nbody"]),
            "request"
        );
        assert_eq!(
            phase_after(&[b"GET / HTTP/1.1\r\n\r\r\n"]),
            "head",
            "no blank line yet"
        );
        assert_eq!(phase_after(&[b"GET / HTTP/1.1\r\r\n\r\n"]), "request");
    }

    #[tokio::test]
    async fn every_split_of_a_head_into_three_reads_ends_it_at_its_blank_line() {
        let head: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\nx: \r\r\n\r\n";
        for i in 1..head.len() {
            for j in i..head.len() {
                let (a, rest) = head.split_at(i);
                let (b, c) = rest.split_at(j - i);
                assert_eq!(phase_after(&[a, b, c]), "request", "{i} {j}");
                let short = &c[..c.len() - 1];
                assert_eq!(
                    phase_after(&[a, b, short]),
                    "head",
                    "{i} {j} without the last byte"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_response_starts_the_wait_for_the_next_head_unless_it_continues_or_upgrades() {
        let (client, _server) = tokio::io::duplex(64);
        let mut stream = DeadlineStream::new(
            Box::new(Fake(client)),
            Duration::from_secs(1),
            prometheus::IntCounter::new("t", "t").unwrap(),
        );
        stream.saw(b"POST / HTTP/1.1\r\nexpect: 100-continue\r\n\r\n");
        stream.wrote(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(
            matches!(stream.phase, Phase::Request),
            "the body may follow slowly"
        );
        stream.wrote(b"HTTP/1.1 200 OK\r\n");
        assert!(matches!(stream.phase, Phase::Idle));
        stream.saw(b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\n\r\n");
        stream.wrote(b"HTTP/1.1 101 Switching Protocols\r\n");
        assert!(matches!(stream.phase, Phase::Passthrough));
        stream.saw(b"frames");
        assert!(matches!(stream.phase, Phase::Passthrough));
    }

    #[tokio::test]
    async fn the_h2c_peek_reads_only_what_can_be_a_preface_and_keeps_it_for_the_reads() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let timeouts = prometheus::IntCounter::new("t", "t").unwrap();
        let connection = || {
            let (client, server) = tokio::io::duplex(64);
            let stream = DeadlineStream::new(
                Box::new(Fake(server)),
                Duration::from_millis(200),
                timeouts.clone(),
            );
            (client, stream)
        };
        // A request shorter than the preface: peeked without waiting for more, then read.
        let (mut client, mut stream) = connection();
        client.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut peeked = [0_u8; 24];
        assert!(stream.try_peek(&mut peeked).await.unwrap());
        assert_ne!(&peeked, H2_PREFACE);
        assert!(peeked.starts_with(b"GET / HTTP/1.0\r\n\r\n"));
        let mut read = [0_u8; 18];
        stream.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"GET / HTTP/1.0\r\n\r\n");
        assert!(
            matches!(stream.phase, Phase::Request),
            "watched as it was read"
        );

        // The preface, split: peeked whole.
        let (mut client, mut stream) = connection();
        client.write_all(b"PRI * HTTP/2").await.unwrap();
        let peek = tokio::spawn(async move {
            let mut peeked = [0_u8; 24];
            stream.try_peek(&mut peeked).await.map(|_| peeked)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b".0\r\n\r\nSM\r\n\r\n").await.unwrap();
        assert_eq!(&peek.await.unwrap().unwrap(), H2_PREFACE);

        // A preface trickling in past the head deadline: cut and counted.
        let (mut client, mut stream) = connection();
        client.write_all(b"PRI ").await.unwrap();
        let cut = stream.try_peek(&mut [0_u8; 24]).await.unwrap_err();
        assert_eq!(cut.kind(), io::ErrorKind::TimedOut);
        assert_eq!(timeouts.get(), 1);
    }

    #[tokio::test]
    async fn a_cleartext_http2_connection_is_not_read_for_heads() {
        assert_eq!(
            phase_after(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04"]),
            "passthrough"
        );
        // Only at the start of a connection, and only the whole preface line.
        assert_eq!(phase_after(&[b"PRI * HTTP/2"]), "head");
        assert_eq!(
            phase_after(&[b"GET / HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n"]),
            "head"
        );
    }
}
