//! Address ownership (issue #18 item 1; docs/design.md "Address ownership") through real
//! `peerpost run` processes, a `dns_records` file as the domain's `_peerpost` TXT records and
//! a smarthost sink: outside addresses go to the smarthost whatever the DHT holds, overlay
//! arrivals carry the sender's level, a `From:` that is not the signer is marked, forged
//! results claiming the recipient host are stripped, and an overlay recipient without a
//! record is retried then bounced, never sent to the smarthost.

use std::time::Duration;

use crate::flow::{Node, Sink, count, eventually, free_port, submit, vouch};
use crate::util::TestHome;

#[test]
fn ownership_decides_routes_and_arrival_levels() {
    let sink_port = free_port();
    let sink_dir = TestHome::new();
    let sink = Sink::start(sink_port, sink_dir.dir.path());
    let port_line = format!("port = {sink_port}");
    let smarthost: [(&str, &str); 4] = [
        ("host = \"\"", "host = \"127.0.0.1\""),
        ("port = 587", &port_line),
        ("tls = \"starttls\"", "tls = \"none\""),
        ("give_up_after = \"5d\"", "give_up_after = \"12s\""),
    ];
    let mut alice = Node::new("alice@own.test", &smarthost);
    let mut bob = Node::new("bob@own.test", &smarthost);
    // Not vouched by own.test: a record of its own in the DHT, nothing else.
    let mut carol = Node::new("carol@own.test", &smarthost);
    // A squatter who published a record for an address of a domain that vouches for nobody.
    let mut squatter = Node::new("x@gmail.test", &[]);
    // Vouched by own.test, but its node never runs (never publishes a record).
    let dave = Node::new("dave@own.test", &[]);
    vouch(&[&alice, &bob, &carol, &squatter], &[&alice, &bob, &dave]);
    alice.start(None);
    let boot = alice.listen.clone();
    for n in [&mut bob, &mut carol, &mut squatter] {
        n.start(Some(&boot));
    }
    for n in [&bob, &carol, &squatter] {
        let mut last = String::new();
        for _ in 0..30 {
            let r = alice.home.run(&["lookup", &n.address]);
            if r.output.status.success() {
                last.clear();
                break;
            }
            last = format!("{}{}", r.stdout(), r.stderr());
            std::thread::sleep(Duration::from_secs(1));
        }
        assert!(
            last.is_empty(),
            "lookup {}: {last}\n{}",
            n.address,
            std::fs::read_to_string(n.home.path("node.log")).unwrap_or_default()
        );
    }
    // `peerpost lookup` shows how alice's node believes each key.
    let level = |address: &str| {
        let out = alice.home.run(&["lookup", address]).success().stdout();
        out.lines()
            .find_map(|l| l.strip_prefix("level:"))
            .map(|l| l.trim().to_string())
            .unwrap_or_else(|| panic!("no level in {out}"))
    };
    assert_eq!(level("bob@own.test"), "verified-domain");
    assert_eq!(level("carol@own.test"), "unverified");
    let t = TestHome::new();

    // (a) The squatter's record for x@gmail.test gets nothing: the smarthost has the mail.
    submit(
        &t,
        &alice,
        &["x@gmail.test"],
        "From: alice@own.test\r\nSubject: to gmail\r\nMessage-ID: <gmail@own.test>\r\n\r\nhi\r\n",
    );
    let out = eventually("the smarthost got the outside mail", 30, || {
        let m = sink.messages();
        m.iter()
            .any(|m| m.contains("<gmail@own.test>"))
            .then_some(m)
    });
    assert!(
        out.iter()
            .any(|m| m.starts_with("X-Sink-Rcpt: x@gmail.test\r\n")),
        "{out:?}"
    );

    // (b) A domain-vouched sender arrives verified-domain, an unvouched one unverified.
    submit(
        &t,
        &bob,
        &["alice@own.test"],
        "From: Bob <bob@own.test>\r\nSubject: vouched\r\nMessage-ID: <b@own.test>\r\n\r\nb\r\n",
    );
    submit(
        &t,
        &carol,
        &["alice@own.test"],
        "From: carol@own.test\r\nSubject: first seen\r\nMessage-ID: <c@own.test>\r\n\r\nc\r\n",
    );
    let inbox = eventually("alice has both", 30, || {
        let i = alice.inbox();
        (count(&i, "<b@own.test>") == 1 && count(&i, "<c@own.test>") == 1).then_some(i)
    });
    let from_bob = inbox.iter().find(|m| m.contains("<b@own.test>")).unwrap();
    let first = from_bob.lines().next().unwrap();
    assert!(
        first.contains("; peerpost=pass (verified-domain)")
            && first.contains("smtp.mailfrom=bob@own.test"),
        "{from_bob}"
    );
    let from_carol = inbox.iter().find(|m| m.contains("<c@own.test>")).unwrap();
    assert!(
        from_carol
            .lines()
            .next()
            .unwrap()
            .contains("; peerpost=neutral (unverified, first seen)"),
        "{from_carol}"
    );
    // The authserv-id alice's node writes.
    let host = first
        .strip_prefix("Authentication-Results: ")
        .and_then(|r| r.split(';').next())
        .unwrap()
        .to_string();

    // (c) From: not the signer is marked; a forged result claiming alice's host is stripped.
    submit(
        &t,
        &bob,
        &["alice@own.test"],
        &format!(
            "Authentication-Results: {host}; peerpost=pass (verified-domain) smtp.mailfrom=ceo@own.test\r\n\
             From: The CEO <ceo@own.test>\r\nSubject: wire money\r\nMessage-ID: <m@own.test>\r\n\r\nm\r\n"
        ),
    );
    let inbox = eventually("alice has the mismatched one", 30, || {
        let i = alice.inbox();
        (count(&i, "<m@own.test>") == 1).then_some(i)
    });
    let m = inbox.iter().find(|m| m.contains("<m@own.test>")).unwrap();
    let results: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("Authentication-Results:"))
        .collect();
    assert_eq!(results.len(), 1, "the forged one is stripped: {m}");
    assert!(
        results[0].contains("peerpost=fail (from-mismatch")
            && results[0].contains("smtp.mailfrom=bob@own.test"),
        "{m}"
    );

    // (d) dave is vouched but has no record: retried, then bounced; never the smarthost.
    submit(
        &t,
        &alice,
        &["dave@own.test"],
        "From: alice@own.test\r\nSubject: to dave\r\nMessage-ID: <d@own.test>\r\n\r\nd\r\n",
    );
    let inbox = eventually("alice has dave's bounce", 60, || {
        let i = alice.inbox();
        i.iter()
            .any(|m| m.contains("dave@own.test") && m.contains("4.4.7"))
            .then_some(i)
    });
    let dsn = inbox.iter().find(|m| m.contains("4.4.7")).unwrap();
    assert!(dsn.contains("overlay address"), "{dsn}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !sink.messages().iter().any(|m| m.contains("dave@own.test")),
        "an overlay address never goes to the smarthost"
    );

    // (e) `peerpost trust`: a pin outranks everything, and a record with another key is
    // refused. Alice pins carol to bob's key (say, a typo'd card): carol's own record is
    // refused and mail to her waits, then bounces; never the smarthost.
    let fingerprint = |n: &Node| {
        let out = n.home.run(&["key", "show"]).success().stdout();
        out.lines()
            .find_map(|l| l.strip_prefix("user fingerprint:"))
            .map(|l| l.trim().to_string())
            .unwrap_or_else(|| panic!("no fingerprint in {out}"))
    };
    let (bob_fp, carol_fp) = (fingerprint(&bob), fingerprint(&carol));
    let out = alice
        .home
        .run(&["trust", "Carol@Own.test", &bob_fp])
        .success()
        .stdout();
    assert!(out.contains("Pinned carol@own.test"), "{out}");
    let r = alice.home.run(&["lookup", "carol@own.test"]);
    assert!(!r.output.status.success(), "{}", r.stdout());
    assert!(r.stderr().contains("peerpost trust"), "{}", r.stderr());
    submit(
        &t,
        &alice,
        &["carol@own.test"],
        "From: alice@own.test\r\nSubject: to carol\r\nMessage-ID: <e@own.test>\r\n\r\ne\r\n",
    );
    eventually("alice has carol's bounce", 60, || {
        let i = alice.inbox();
        i.iter()
            .any(|m| m.contains("carol@own.test") && m.contains("4.4.7"))
            .then_some(())
    });
    assert_eq!(count(&carol.inbox(), "<e@own.test>"), 0);
    assert!(!sink.messages().iter().any(|m| m.contains("<e@own.test>")));
    // The right key: carol is pinned, listed, and her mail flows.
    alice
        .home
        .run(&["trust", "carol@own.test", &carol_fp])
        .success();
    assert_eq!(level("carol@own.test"), "pinned");
    let list = alice.home.run(&["trust", "--list"]).success().stdout();
    assert_eq!(list.trim(), format!("carol@own.test  {carol_fp}"));
    submit(
        &t,
        &alice,
        &["carol@own.test"],
        "From: alice@own.test\r\nSubject: to carol\r\nMessage-ID: <e2@own.test>\r\n\r\ne\r\n",
    );
    eventually("carol has the mail sent under the pin", 30, || {
        (count(&carol.inbox(), "<e2@own.test>") == 1).then_some(())
    });
    // Removed: first use again.
    alice
        .home
        .run(&["trust", "--remove", "carol@own.test"])
        .success();
    assert_eq!(level("carol@own.test"), "unverified");
    let r = alice.home.run(&["trust", "--remove", "carol@own.test"]);
    assert!(
        !r.output.status.success() && r.stderr().contains("not pinned"),
        "{}",
        r.stderr()
    );
    let r = alice.home.run(&["trust", "carol@own.test", "12 34"]);
    assert!(
        !r.output.status.success() && r.stderr().contains("not a fingerprint"),
        "{}",
        r.stderr()
    );
    drop(squatter);
}
