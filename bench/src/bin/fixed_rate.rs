//! A constant-rate HTTP/1.1 load generator (what `wrk2` and `oha -q` do), for latency at a
//! fixed offered rate: request `i` is due at `start + i / rate`, whatever happened to the
//! ones before it. When its connection was still waiting for the previous answer at that
//! moment, its latency runs from when it was due — so a stalled server shows up in the
//! percentiles instead of slowing the load down (no coordinated omission); otherwise from
//! when it was sent, because tokio's timer wakes with millisecond granularity and the
//! generator's own lateness is not the server's.
//!
//! ```text
//! fixed-rate --addr 127.0.0.1:19104 --path /v1/... --rate 5000 --seconds 10 \
//!            --connections 32 [--header 'authorization: Bearer ...']
//! ```
//!
//! Prints one line of `key=value` pairs: `sent ok errors rate p50_us p90_us p99_us
//! p999_us max_us p99_window_median_us`. The last is the median of the p99s of the run's
//! half-second windows (by due time): a stall of the machine that hits one window moves the
//! run's p99 but not this. Keep-alive connections; each takes every `connections`-th request.
//! Responses must carry `Content-Length` (nginx, Pingora and Portcullis all do here).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

struct Args {
    addr: SocketAddr,
    path: String,
    rate: f64,
    seconds: f64,
    connections: usize,
    headers: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 80)),
        path: String::from("/"),
        rate: 1000.0,
        seconds: 10.0,
        connections: 32,
        headers: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--addr" => args.addr = value.parse().map_err(|e| bad(&e))?,
            "--path" => args.path = value,
            "--rate" => args.rate = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => args.seconds = value.parse().map_err(|e| bad(&e))?,
            "--connections" => args.connections = value.parse().map_err(|e| bad(&e))?,
            "--header" => args.headers.push(value),
            other => return Err(format!("unknown flag `{other}`")),
        }
    }
    if !(args.rate > 0.0 && args.seconds > 0.0 && args.connections > 0) {
        return Err(String::from(
            "--rate, --seconds and --connections must be positive",
        ));
    }
    Ok(args)
}

/// Reads one response; returns whether its status was 2xx.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<bool, String> {
    buf.clear();
    let mut chunk = [0_u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(String::from("connection closed"));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };
    let head = String::from_utf8_lossy(buf.get(..head_end).unwrap_or_default()).into_owned();
    let ok = head.get(9..10) == Some("2");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .ok_or("a response without Content-Length")?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(String::from("connection closed mid-body"));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    Ok(ok)
}

/// One connection's share: requests `first, first + step, ...` due before `total`.
async fn connection(
    args: std::sync::Arc<Args>,
    start: Instant,
    first: usize,
    total: usize,
) -> (Vec<(usize, u64)>, usize) {
    let mut request = format!("GET {} HTTP/1.1\r\nhost: {}\r\n", args.path, args.addr);
    for h in &args.headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut latencies = Vec::with_capacity(total / args.connections + 1);
    let mut errors = 0;
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(8192);
    let mut previous_answered = start;
    for i in (first..total).step_by(args.connections) {
        let due = start + Duration::from_secs_f64(i as f64 / args.rate);
        tokio::time::sleep_until(due).await;
        // Busy past the due time: the server's delay counts; idle: from the send.
        let origin = if previous_answered > due {
            due
        } else {
            Instant::now()
        };
        if stream.is_none() {
            match TcpStream::connect(args.addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                Err(_) => {
                    errors += 1;
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let answered = match s.write_all(request.as_bytes()).await {
            Ok(()) => read_response(s, &mut buf).await,
            Err(e) => Err(e.to_string()),
        };
        previous_answered = Instant::now();
        match answered {
            Ok(true) => {
                let micros = u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX);
                latencies.push((i, micros));
            }
            Ok(false) => errors += 1,
            Err(_) => {
                errors += 1;
                stream = None;
            }
        }
    }
    (latencies, errors)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len()) - 1)
        .copied()
        .unwrap_or_default()
}

/// The median (the lower one of an even count) of the p99s of windows of `window` requests
/// by index; windows with fewer than half their requests answered are left out.
fn window_p99_median(latencies: &[(usize, u64)], window: usize) -> u64 {
    let mut windows: std::collections::BTreeMap<usize, Vec<u64>> =
        std::collections::BTreeMap::new();
    for &(i, micros) in latencies {
        windows.entry(i / window).or_default().push(micros);
    }
    let mut p99s: Vec<u64> = windows
        .into_values()
        .filter(|w| w.len() * 2 >= window)
        .map(|mut w| {
            w.sort_unstable();
            percentile(&w, 99.0)
        })
        .collect();
    p99s.sort_unstable();
    p99s.get(p99s.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => std::sync::Arc::new(a),
        Err(e) => {
            eprintln!("fixed-rate: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fixed-rate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let total = (args.rate * args.seconds) as usize;
    let (latencies, errors, elapsed) = runtime.block_on(async {
        let start = Instant::now() + Duration::from_millis(50);
        let tasks: Vec<_> = (0..args.connections)
            .map(|c| tokio::spawn(connection(std::sync::Arc::clone(&args), start, c, total)))
            .collect();
        let mut all = Vec::with_capacity(total);
        let mut errors = 0;
        for t in tasks {
            if let Ok((l, e)) = t.await {
                all.extend(l);
                errors += e;
            }
        }
        (all, errors, start.elapsed())
    });
    let window_p99 = window_p99_median(&latencies, ((args.rate * 0.5) as usize).max(1));
    let mut latencies: Vec<u64> = latencies.into_iter().map(|(_, micros)| micros).collect();
    latencies.sort_unstable();
    println!(
        "sent={total} ok={} errors={errors} rate={:.0} p50_us={} p90_us={} p99_us={} p999_us={} max_us={} p99_window_median_us={window_p99}",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 99.9),
        latencies.last().copied().unwrap_or_default(),
    );
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
