//! Crash safety of the store: a child process writes objects, announcing each one only after
//! its commit returned; the parent SIGKILLs it at a random moment, reopens the store, and
//! checks that every announced object is there and intact, and that nothing in the store is
//! corrupt. Three rounds, so the store also survives repeated crashes.
//!
//! The child is this same test binary, re-executed to run the ignored `crash_child` test
//! (redb's crash tests separate "written" from "made durable" the same way).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use peerpost::crypto::{ObjectId, SealedObject};
use peerpost::store::Store;

const CHILD_ENV: &str = "PEERPOST_CRASH_CHILD_DIR";

/// Runs only as the child of `sigkill_mid_write_loses_no_committed_object`.
#[test]
#[ignore = "helper process for the crash test"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(std::path::Path::new(&dir)).unwrap();
        for i in 0u64.. {
            // Vary the size and batch so kills land in small and large commits.
            let size = 1000 + (i as usize * 7919) % 200_000;
            let batch = 1 + (i % 4) as usize;
            let objs: Vec<SealedObject> = (0..batch)
                .map(|j| {
                    SealedObject::seal(&vec![(i + j as u64) as u8; size])
                        .unwrap()
                        .0
                })
                .collect();
            let ids = store.put_objects(objs).await.unwrap();
            for id in ids {
                println!("committed {id}");
            }
        }
    });
}

#[test]
fn sigkill_mid_write_loses_no_committed_object() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut announced: Vec<ObjectId> = Vec::new();
    for round in 0..3u64 {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Kill after a varying number of commits, so the kill lands mid-transaction at
        // different points.
        let target = 40 + round as usize * 37;
        let mut seen = 0;
        let started = Instant::now();
        while seen < target {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "child too slow"
            );
            let Some(line) = lines.next() else {
                panic!("child exited early: {:?}", child.wait());
            };
            let line = line.unwrap();
            if let Some(hex) = line.strip_prefix("committed ") {
                announced.push(ObjectId::from_hex(hex.trim()).expect("id"));
                seen += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Lines the child printed after our last read were committed too.
        for line in lines.map_while(Result::ok) {
            if let Some(hex) = line.strip_prefix("committed ") {
                announced.push(ObjectId::from_hex(hex.trim()).expect("id"));
            }
        }

        // Reopen in another process's place: a fresh process would see the same files.
        let check = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash::crash_verify",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(VERIFY_ENV, dir.path())
            .env(
                VERIFY_IDS_ENV,
                announced
                    .iter()
                    .map(|i| i.to_hex())
                    .collect::<Vec<_>>()
                    .join(","),
            )
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&check.stdout);
        assert!(
            check.status.success() && out.contains("verified"),
            "round {round}: verification failed:\n{out}\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    assert!(announced.len() >= 40 + 77 + 114);
}

const VERIFY_ENV: &str = "PEERPOST_CRASH_VERIFY_DIR";
const VERIFY_IDS_ENV: &str = "PEERPOST_CRASH_VERIFY_IDS";

/// Runs only as the verifier of `sigkill_mid_write_loses_no_committed_object`, in its own
/// process (LMDB forbids opening one environment twice in a process).
#[test]
#[ignore = "helper process for the crash test"]
fn crash_verify() {
    let Ok(dir) = std::env::var(VERIFY_ENV) else {
        return;
    };
    let ids: Vec<ObjectId> = std::env::var(VERIFY_IDS_ENV)
        .unwrap()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|h| ObjectId::from_hex(h).unwrap())
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(std::path::Path::new(&dir)).unwrap();
        for id in &ids {
            let obj = store.get_object(*id).await.unwrap();
            assert!(obj.is_some(), "committed object {id} lost");
        }
        // Everything in the store verifies (get_object checks the hash), and the byte
        // counter agrees with the contents.
        let all = store.object_ids().await.unwrap();
        assert!(all.len() >= ids.len());
        let mut bytes = 0u64;
        for id in &all {
            bytes += store
                .get_object(*id)
                .await
                .unwrap()
                .unwrap()
                .as_bytes()
                .len() as u64;
        }
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.objects, all.len() as u64);
        assert_eq!(
            stats.object_bytes, bytes,
            "byte counter out of step with contents"
        );
        println!("verified {} announced, {} present", ids.len(), all.len());
    });
}
