//! The durability promises through real `peerpost` processes: restore from the phrase, quota
//! over SMTP, ten processes losing six.

use super::*;

/// The real binary: a `peerpost run` backs its mailbox up into a two-node ring on loopback;
/// after it is gone, `peerpost restore --phrase` in a brand-new home rebuilds the mailbox from
/// the other node. A phrase with no backup gets a clear error.
#[test]
fn restore_through_the_binary_from_the_phrase_alone() {
    let _heavy = crate::util::one_heavy_at_a_time();
    use crate::overlay_procs::{eventually, start};
    use crate::util::{Engine, TestHome};

    // Alice's mailbox, backed up within a second of a change.
    let alice = TestHome::new();
    alice.init("alice@procs.test");
    let cfg = alice.path("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("backup_every_secs = 10", "backup_every_secs = 1"),
    )
    .unwrap();
    let bodies: Vec<Vec<u8>> = (0..25)
        .map(|i| format!("Subject: restore {i}\r\n\r\nbody {i}\r\n").into_bytes())
        .collect();
    let seed = {
        let e = Engine::open(&alice);
        for b in &bodies {
            let msg = NewMessage {
                bytes: b.clone(),
                internal_date: 1_700_000_000,
                flags: Flags::default().with(Flag::Seen),
                recent: false,
                maildir_name: None,
            };
            e.rt.block_on(e.mailbox.append("INBOX", msg)).unwrap();
        }
        *e.home.load_user_keys(None).unwrap().seed()
    };
    let words = alice.file("phrase", &phrase::encode(&seed));

    let holder = TestHome::new();
    holder.init("holder@procs.test");
    let holder = start(holder, None);
    let mut alice = start(alice, Some(&holder.listen));
    // Bodies, log and index bundles (one fragment and one lease each on the only peer).
    eventually("alice's backup reaches the other node", || {
        let st = holder.home.run(&["status", "--json"]).json();
        (st["node"]["held_blobs"].as_u64().unwrap_or(0) >= 6).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    // `status` shows the backup: bundles, every fragment found, the loss probability now.
    let st = alice.home.run(&["status", "--json"]).success().json();
    let d = &st["durability"];
    assert!(d["body_bundles"].as_u64() >= Some(1), "{d}");
    assert!(d["root_seq"].as_u64().is_some(), "{d}");
    let checked = d["checked"].as_array().unwrap();
    assert!(checked.len() >= 3, "{d}");
    for b in checked {
        assert_eq!(b["found"], b["n"], "{d}");
    }
    assert!(d["loss_now"].as_f64().is_some(), "{d}");
    let human = alice.home.run(&["status"]).success().stdout();
    assert!(human.contains("fragments found"), "{human}");
    unsafe { libc::kill(alice.child.id() as i32, libc::SIGTERM) };
    alice.child.wait().unwrap();

    let fresh = TestHome::new();
    let pw = fresh.file("pw", "another-password\n");
    // No --address: the phrase alone finds the backup, and the index names the address.
    let restore = |home: &TestHome, words: &std::path::Path| {
        crate::util::restore_from_phrase(home, words, &pw, &holder.listen)
    };
    let out = restore(&fresh, &words).success();
    assert!(
        out.stdout().contains("25 messages"),
        "{}\n{}",
        out.stdout(),
        out.stderr()
    );
    let key = fresh.run(&["key", "show", "--json"]).success().json();
    assert_eq!(key["address"], "alice@procs.test", "{key}");
    let e = Engine::open(&fresh);
    assert_eq!(e.inbox(), bodies);
    let seen = e.mailbox.messages("INBOX").unwrap();
    assert!(seen.iter().all(|m| m.flags.has(Flag::Seen)));
    drop(e);
    // `key import --phrase` without --address reads it from the ring too.
    let second = TestHome::new();
    second
        .run(&[
            "key",
            "import",
            "--phrase",
            "--phrase-file",
            words.to_str().unwrap(),
            "--password-file",
            pw.to_str().unwrap(),
            "--no-mdns",
            "--bootstrap",
            &holder.listen,
        ])
        .success();
    let key = second.run(&["key", "show", "--json"]).success().json();
    assert_eq!(key["address"], "alice@procs.test", "{key}");

    let stranger = TestHome::new();
    let other = stranger.file("phrase", &phrase::encode(&[9; 32]));
    restore(&stranger, &other).failure(&["no backup of this key was found"]);
    let mut holder = holder;
    unsafe { libc::kill(holder.child.id() as i32, libc::SIGTERM) };
    holder.child.wait().unwrap();
}

/// Quota: over it, the engine's append fails with a typed error; SMTP answers 452 4.2.2 while
/// the message would fit an emptier mailbox and 552 5.2.2 when it alone exceeds the quota.
#[test]
fn appends_over_quota_fail_and_smtp_says_mailbox_full() {
    use std::io::Write;

    use crate::smtp::{raw, reply, start};
    use crate::util::TestHome;

    let t = TestHome::new();
    t.init("alice@example.org");
    let server = start(&t, 1 << 20);
    let e = &server.engine;
    e.mailbox.set_quota(Some(6_000));
    let msg = |n: usize| NewMessage {
        bytes: vec![b'x'; n],
        internal_date: 0,
        flags: Flags::default(),
        recent: true,
        maildir_name: None,
    };
    e.rt.block_on(e.mailbox.append("INBOX", msg(2_000)))
        .unwrap();
    e.rt.block_on(e.mailbox.append("INBOX", msg(2_000)))
        .unwrap();
    let err = e.rt.block_on(e.mailbox.append("INBOX", msg(2_000)));
    assert!(
        matches!(
            err,
            Err(peerpost::mailbox::Error::OverQuota { quota: 6_000, .. })
        ),
        "{err:?}"
    );
    assert_eq!(e.mailbox.messages("INBOX").unwrap().len(), 2);

    let deliver = |size: usize| {
        let (mut r, mut w) = raw(server.addr);
        reply(&mut r);
        for cmd in [
            "EHLO client.test\r\n",
            "MAIL FROM:<bob@example.org>\r\n",
            "RCPT TO:<alice@example.org>\r\n",
            "DATA\r\n",
        ] {
            w.write_all(cmd.as_bytes()).unwrap();
            reply(&mut r);
        }
        let body = format!("Subject: big\r\n\r\n{}\r\n.\r\n", "y".repeat(size));
        w.write_all(body.as_bytes()).unwrap();
        reply(&mut r)
    };
    let small = deliver(2_500);
    assert!(small.starts_with("452 4.2.2"), "{small}");
    let huge = deliver(8_000);
    assert!(huge.starts_with("552 5.2.2"), "{huge}");
    assert_eq!(e.mailbox.messages("INBOX").unwrap().len(), 2);
    // Room again (the quota grew with the ring): the same message is taken.
    e.mailbox.set_quota(Some(60_000));
    assert!(deliver(2_500).starts_with("250 "));
}

/// Issue #20's promise with real processes: nine `peerpost run` nodes up, alice joins with 60
/// imported messages (two folders, flags); `status` shows every bundle placed at the target
/// for a ring of nine (the time is printed; the benchmark measures the minute). Alice is SIGKILLed, gets 10 more messages while down, and
/// restarts with them pending: placed and in a newer root again. Then six of the ten (alice among
/// them) are SIGKILLed at once, and `restore --phrase` (phrase on stdin, a survivor as
/// bootstrap, a password file, no --address) on a fresh home gives back every message byte
/// for byte, in its folder, with its flags and date.
#[test]
fn ten_processes_lose_six_and_the_phrase_alone_restores_every_message() {
    let _heavy = crate::util::one_heavy_at_a_time();
    use crate::mailbox::{mkfolder, put, read_tree};
    use crate::overlay_procs::{Running, start};
    use crate::util::TestHome;

    let maildir = |dir: &std::path::Path, from: usize, n: usize| {
        mkfolder(dir);
        mkfolder(&dir.join(".Work"));
        for i in from..from + n {
            let (folder, flags) = match i % 3 {
                0 => (dir.to_path_buf(), "S"),
                1 => (dir.to_path_buf(), "FS"),
                _ => (dir.join(".Work"), "RS"),
            };
            let body = format!(
                "From: bob@procs.test\r\nSubject: message {i}\r\n\r\n{}\r\n",
                "line of text ".repeat(40 + i * 7)
            );
            let name = format!("{}.{i}.test:2,{flags}", 1_700_000_000 + i);
            put(
                &folder,
                "cur",
                &name,
                body.as_bytes(),
                1_700_000_000 + i as i64,
            );
        }
    };
    let kill = |r: &mut Running| {
        unsafe { libc::kill(r.child.id() as i32, libc::SIGKILL) };
        r.child.wait().unwrap();
    };
    let started = Instant::now();
    let mut ring: Vec<Running> = Vec::new();
    for i in 0..9 {
        let h = TestHome::new();
        h.init(&format!("peer{i}@procs.test"));
        let boot = ring.first().map(|r| r.listen.clone());
        ring.push(start(h, boot.as_deref()));
    }
    eprintln!("nine nodes up at {:?}", started.elapsed());

    let alice = TestHome::new();
    alice.init("alice@procs.test");
    let src = alice.path("src");
    maildir(&src, 0, 60);
    alice.run(&["import", src.to_str().unwrap()]).success();
    let words = crate::util::phrase_of(&alice);
    assert_eq!(words.split(' ').count(), 25, "{words}");

    // Placed at target: every checked bundle's fragments found, none below target, nothing
    // pending, n/k sized for nine peers (not the one seen first).
    let placed = |home: &TestHome, what: &str, after: Option<u64>| {
        let t0 = Instant::now();
        // The "within a minute" is measured by scripts/bench-durability-latency (median
        // 8.5 s); here, with the whole suite sharing two cores, the wait is generous and the
        // time is printed, not asserted.
        let st = crate::overlay_procs::eventually_for(what, Duration::from_secs(180), || {
            let st = home.run(&["status", "--json"]).json();
            let d = &st["durability"];
            let checked = d["checked"].as_array()?;
            let ok = d["root_seq"].as_u64() > after
                && d["unpublished"] == false
                && d["pending_bytes"].as_u64() == Some(0)
                && d["below_target"].as_u64() == Some(0)
                && d["ring"].as_u64() >= Some(8)
                && checked.len() >= 3
                && checked
                    .iter()
                    .all(|b| b["found"] == b["n"] && b["n"].as_u64() > Some(1));
            ok.then(|| st.clone())
        });
        let took = t0.elapsed();
        eprintln!("{what}: {took:?}: {}", st["durability"]);
        let loss = st["durability"]["loss_now"].as_f64().unwrap();
        assert!(loss <= 1e-6, "P(loss) {loss} at 60 % failure");
        st["durability"]["root_seq"].as_u64()
    };
    let mut a = start(alice, Some(&ring[0].listen));
    let first_root = placed(&a.home, "alice's 60 messages in the ring at target", None);

    // Down, 10 more messages arrive (imported while the node is away), back up again.
    kill(&mut a);
    let more = a.home.path("more");
    maildir(&more, 60, 10);
    a.home.run(&["import", more.to_str().unwrap()]).success();
    let home = a.home;
    let a = start(home, Some(&ring[1].listen));
    // A newer root than the first: placed is not enough, the root must list the new bundles.
    placed(
        &a.home,
        "the 10 pending messages placed after a restart",
        first_root,
    );

    // What alice has: the reference for the restore.
    let mut a = a;
    kill(&mut a);
    let want_dir = a.home.path("want");
    a.home
        .run(&["export", want_dir.to_str().unwrap()])
        .success();
    let want = read_tree(&want_dir);
    assert_eq!(want.len(), 70);
    // Six of ten at once: alice and five others.
    for r in ring.iter_mut().skip(4) {
        kill(r);
    }
    let fresh = TestHome::new();
    let pw = fresh.file("pw", "new-password\n");
    let t0 = Instant::now();
    let out = fresh
        .run_stdin(
            &[
                "restore",
                "--phrase",
                "--password-file",
                pw.to_str().unwrap(),
                "--no-mdns",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--bootstrap",
                &ring[3].listen,
            ],
            Some(&format!("{words}\n")),
        )
        .success();
    eprintln!("restore took {:?}: {}", t0.elapsed(), out.stdout());
    assert!(out.stdout().contains("70 messages"), "{}", out.stdout());
    let got_dir = fresh.path("got");
    fresh.run(&["export", got_dir.to_str().unwrap()]).success();
    let got = read_tree(&got_dir);
    assert_eq!(got.len(), want.len());
    for (k, m) in &want {
        assert_eq!(got.get(k), Some(m), "{k:?}");
    }
    for r in ring.iter_mut().take(4) {
        unsafe { libc::kill(r.child.id() as i32, libc::SIGTERM) };
        r.child.wait().unwrap();
    }
}
