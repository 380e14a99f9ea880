//! The metrics endpoint of real `peerpost run` processes (issue #17): scraped over HTTP, the
//! OpenMetrics text checked by Python's prometheus_client parser (a real, strict parser), the
//! delivery counter and latency histogram moving after a `peerpost send`, and hostile HTTP
//! clients (a huge head, POST, other paths, slowloris) answered with errors without harm.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::flow::eventually;
use crate::util::{RunNode, TestHome};

/// Debian's python3-prometheus-client is installed for the system Python (scripts/setup).
const PYTHON: &str = "/usr/bin/python3";

/// Parses an OpenMetrics exposition with prometheus_client and prints one line per sample:
/// `name{k="v",…} value` (labels sorted). The parser raises on any format error.
const PARSE: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = sys.stdin.read()
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        print("%s{%s} %r" % (s.name, labels, s.value))
"#;

/// One raw HTTP exchange: writes `request`, reads until the server closes.
fn exchange(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `GET /metrics`, checked by the parser: every sample by `name{labels}`.
pub(crate) fn scrape(port: u16) -> HashMap<String, f64> {
    let reply = exchange(
        port,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/openmetrics-text\r\n\r\n",
    );
    let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{head}"
    );
    let mut py = Command::new(PYTHON)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    py.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejects the exposition: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// The sample names the Grafana dashboard (contrib/grafana/peerpost.json) queries whose
/// name starts with `prefix`.
pub(crate) fn dashboard_samples(prefix: &str) -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana/peerpost.json");
    let json = std::fs::read_to_string(path).expect("the dashboard");
    let mut names: Vec<String> = json
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with(prefix))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    assert!(!names.is_empty(), "no {prefix} sample in the dashboard");
    names
}

/// Every `prefix` sample the dashboard queries is in the scrape `m` (a panel that queries a
/// misspelt or removed metric would show "No data" forever).
pub(crate) fn assert_dashboard_matches(m: &HashMap<String, f64>, prefix: &str, except: &str) {
    for name in dashboard_samples(prefix) {
        if name.starts_with(except) {
            continue;
        }
        let sample = |k: &String| k.split('{').next() == Some(name.as_str());
        assert!(
            m.keys().any(sample),
            "the dashboard queries {name}, which the node does not export"
        );
    }
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("{key} missing from the scrape: {m:?}"))
}

fn overlay_addr(n: &RunNode) -> String {
    n.started
        .iter()
        .filter_map(|l| l.trim().strip_prefix("listening on "))
        .find(|a| a.contains("/tcp/"))
        .expect("an overlay address")
        .to_string()
}

const DELIVERED: &str = "peerpost_delivery_delivered_total{route=\"overlay\"}";
const LATENCY_COUNT: &str = "peerpost_delivery_latency_seconds_count{}";
const QUEUED: &str = "peerpost_delivery_queued_total{}";

#[test]
fn a_send_moves_the_delivery_counter_and_latency_histogram() {
    let (ta, tb) = (TestHome::new(), TestHome::new());
    ta.init("alice@metrics.test");
    tb.init("bob@metrics.test");
    // Bob is an overlay address (his domain vouches for his key), so the send goes overlay.
    crate::util::vouch(&[&ta, &tb], &[(&tb, "bob@metrics.test")]);
    let alice = RunNode::start(&ta, &[("pop3", "127.0.0.1:0")], &[]);
    let boot = overlay_addr(&alice);
    let bob = RunNode::start(&tb, &[], &["--bootstrap", &boot]);
    // Both homes were made with 127.0.0.1:0: two endpoints on one machine, no collision.
    let port = alice.port("metrics");
    assert_ne!(port, bob.port("metrics"));
    assert_ne!(port, 9464);
    let status = ta.run(&["status"]).success().stdout();
    assert!(
        status.contains(&format!("metrics:         http://127.0.0.1:{port}/metrics")),
        "{status}"
    );

    let before = scrape(port);
    for key in [
        "peerpost_store_objects{}",
        "peerpost_server_sessions_total{protocol=\"imap\"}",
        "peerpost_delivery_latency_seconds_bucket{le=\"+Inf\"}",
    ] {
        value(&before, key);
    }
    eventually("bob's record resolves", 30, || {
        ta.run(&["lookup", "bob@metrics.test"])
            .output
            .status
            .success()
            .then_some(())
    });
    ta.run_stdin(
        &["send", "bob@metrics.test"],
        Some("Subject: counted\n\nhello\n"),
    )
    .success();
    let after = eventually("the delivery is counted", 30, || {
        let m = scrape(port);
        (value(&m, DELIVERED) > value(&before, DELIVERED)).then_some(m)
    });
    assert_eq!(value(&after, DELIVERED), value(&before, DELIVERED) + 1.0);
    assert_eq!(value(&after, QUEUED), value(&before, QUEUED) + 1.0);
    assert_eq!(
        value(&after, LATENCY_COUNT),
        value(&before, LATENCY_COUNT) + 1.0
    );
    assert!(
        value(&after, "peerpost_delivery_latency_seconds_sum{}")
            >= value(&before, "peerpost_delivery_latency_seconds_sum{}")
    );
    // Bob's node counted nothing delivered: the families are per process.
    let bob_m = scrape(bob.port("metrics"));
    assert_eq!(value(&bob_m, DELIVERED), 0.0);
    // The notice went out as overlay frames (the inbox entry and the push), bob took them
    // in; alice's store committed the queue's rows; her quota is known and holds her mail.
    let traffic = |m: &HashMap<String, f64>, direction: &str| {
        ["blob", "notify"]
            .iter()
            .map(|p| {
                value(
                    m,
                    &format!("peerpost_overlay_protocol_bytes_total{{direction=\"{direction}\",protocol=\"{p}\"}}"),
                )
            })
            .sum::<f64>()
    };
    assert!(
        traffic(&after, "out") > traffic(&before, "out") + 200.0,
        "no frames counted out"
    );
    assert!(traffic(&bob_m, "in") > 200.0, "bob counted no frames in");
    assert!(
        value(&after, "peerpost_store_commits_total{}")
            > value(&before, "peerpost_store_commits_total{}")
    );
    let allowed = value(&after, "peerpost_quota_allowed_bytes{}");
    let used = value(&after, "peerpost_quota_used_bytes{}");
    assert!(
        allowed > 0.0 && used > 0.0 && used < allowed,
        "quota {used} of {allowed}"
    );
    // What the dashboard shows is what the node exports (the mount's families are checked
    // where a mount runs: run_mail).
    assert_dashboard_matches(&after, "peerpost_", "peerpost_mount_");
    for key in [
        "peerpost_durability_loss_probability{}",
        "peerpost_durability_bundles_below_target{}",
        "peerpost_overlay_held_blobs{}",
    ] {
        value(&after, key);
    }

    // Commands are counted by protocol and name; a line that does not parse as "invalid"
    // (never by what the client wrote).
    let capa = "peerpost_server_commands_total{command=\"CAPA\",protocol=\"pop3\"}";
    let invalid = "peerpost_server_commands_total{command=\"invalid\",protocol=\"pop3\"}";
    let count = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let before = scrape(port);
    let mut pop = TcpStream::connect(("127.0.0.1", alice.port("pop3"))).unwrap();
    pop.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    pop.write_all(b"CAPA\r\nXYZZY-{secret}\r\nQUIT\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = pop.read_to_string(&mut out);
    assert!(out.contains("+OK bye"), "{out}");
    let after = scrape(port);
    assert_eq!(count(&after, capa), count(&before, capa) + 1.0);
    assert_eq!(count(&after, invalid), count(&before, invalid) + 1.0);
    assert!(!after.keys().any(|k| k.contains("XYZZY")));
}

#[test]
fn hostile_http_clients_get_errors_and_the_endpoint_stays_up() {
    let t = TestHome::new();
    t.init("carol@metrics.test");
    let mut node = RunNode::start(&t, &[], &[]);
    let port = node.port("metrics");

    let status = |reply: &str| reply.lines().next().unwrap_or("").to_string();
    assert_eq!(
        status(&exchange(
            port,
            b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
        )),
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        status(&exchange(port, b"GET / HTTP/1.1\r\n\r\n")),
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        status(&exchange(port, b"GET /metrics/../etc HTTP/1.1\r\n\r\n")),
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        status(&exchange(
            port,
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n"
        )),
        "HTTP/1.1 400 Bad Request"
    );
    // A head past 8 KiB without its blank line: refused, not buffered.
    let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while huge.len() < 64 * 1024 {
        huge.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(&huge); // the server may close before it has all of it
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert!(
        String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 431 "),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );

    // Slowloris: more connections than the cap, each sending a byte now and then. They are
    // cut off with a 408 when the head's time is up; the endpoint answers again afterwards.
    let slow: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n");
            s
        })
        .collect();
    let started = Instant::now();
    let mut timed_out = 0;
    for mut s in slow {
        let _ = s.write_all(b"X");
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        // Over the cap: closed unanswered; within it: 408 once the head's time is up.
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408 "),
            "{text}"
        );
        timed_out += usize::from(!text.is_empty());
    }
    assert!(timed_out >= 1, "no slow client was answered 408");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "slow clients held the endpoint for {:?}",
        started.elapsed()
    );
    let m = scrape(port);
    assert!(value(&m, "peerpost_metrics_scrapes_total{}") >= 1.0);
    assert!(
        node.child.try_wait().unwrap().is_none(),
        "the node died under hostile HTTP clients"
    );
}
