//! The SQS sink of the audit ledger against a real SQS endpoint: moto's server (PyPI
//! `moto[server]`, which .ci/run installs), started and stopped by the test itself, spoken
//! to with the AWS SDK on both sides.

use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use portcullis_sinks::testing::Moto;
use serde_json::{Value, json};

use crate::harness::{Keys, Portcullis, Upstream, free_port, rt};
use crate::world;

const D1: &str = "/v1/spaces/s1/documents/d1";

/// Creates the FIFO queue `name`; its URL.
fn create_fifo(moto: &Moto, name: &str) -> String {
    rt().block_on(moto.create_queue(name, &[(QueueAttributeName::FifoQueue, "true")]))
}

/// Receives (and deletes) what the queue holds now, in order.
fn drain(moto: &Moto, url: &str) -> Vec<Value> {
    let client = moto.client();
    let mut out = Vec::new();
    loop {
        let got = rt()
            .block_on(
                client
                    .receive_message()
                    .queue_url(url)
                    .max_number_of_messages(10)
                    .message_attribute_names("All")
                    .send(),
            )
            .expect("receive");
        let messages = got.messages();
        if messages.is_empty() {
            return out;
        }
        for m in messages {
            let body: Value = serde_json::from_str(m.body().expect("body")).expect("json");
            let seq = m
                .message_attributes()
                .and_then(|a| a.get("seq"))
                .and_then(|v| v.string_value())
                .expect("seq attribute");
            assert_eq!(
                body["seq"].to_string(),
                seq,
                "the attribute is the record's"
            );
            out.push(body);
            rt().block_on(
                client
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(m.receipt_handle().expect("receipt"))
                    .send(),
            )
            .expect("delete");
        }
    }
}

#[test]
fn the_sqs_sink_delivers_every_record_in_order_across_an_outage() {
    let upstream = Upstream::start();
    let keys = Keys::generate();
    let port = free_port();
    let mut moto = Moto::start(port);
    let url = create_fifo(&moto, "audit-e2e.fifo");
    let p = Portcullis::start(
        &upstream,
        &keys,
        &format!(
            "audit:\n  sqs:\n    queue_url: {url}\n    region: us-east-1\n    endpoint_url: http://127.0.0.1:{port}\n"
        ),
    );
    p.seed(world::import());
    let alice = keys.token("alice", json!({}));
    let burst = |n: usize| {
        for _ in 0..n {
            assert_eq!(p.get(D1, Some(&alice), &[]).status, 200);
        }
    };
    // Everything the queue delivered, until it holds every record the ledger has.
    let mut delivered: Vec<Value> = Vec::new();
    let wait_complete = |moto: &Moto, delivered: &mut Vec<Value>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            delivered.extend(drain(moto, &url));
            if delivered.len() >= p.audit_records().len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the queue delivered {} of {}:\n{}",
                delivered.len(),
                p.audit_records().len(),
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    burst(20);
    wait_complete(&moto, &mut delivered);

    // SQS goes away: requests are still answered (the ledger files are the spool).
    drop(moto);
    burst(30);
    let started = Instant::now();
    while p
        .metric("portcullis_audit_sink_errors_total", &[("sink", "sqs")])
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the outage is not counted:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // It comes back empty (moto keeps nothing): once the queue exists again, the sink goes
    // on after the last record SQS accepted.
    moto = Moto::start(port);
    assert_eq!(create_fifo(&moto, "audit-e2e.fifo"), url);
    wait_complete(&moto, &mut delivered);

    let ledger = p.audit_records();
    let seqs: Vec<u64> = delivered
        .iter()
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        (1..=ledger.len() as u64).collect::<Vec<_>>(),
        "every record, once, in order"
    );
    assert_eq!(delivered, ledger, "as written, hash and all");
    assert!(
        p.metric("portcullis_audit_sink_forwarded_total", &[("sink", "sqs")])
            .unwrap_or(0.0)
            >= ledger.len() as f64
    );
}
