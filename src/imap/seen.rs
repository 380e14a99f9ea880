//! `\Seen` set by FETCH, committed in groups: while one durable commit runs, the requests of
//! other sessions queue up and go into the next one together. Every caller still waits for
//! its own commit before answering, so nothing is reported that is not durable.

use std::collections::HashMap;
use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};

use crate::mailbox::{EntryId, Flag, FlagMode, Flags, Mailbox};

/// Requests waiting at most; a caller beyond it waits for room.
const QUEUE: usize = 1024;
/// Requests merged into one commit at most.
const BATCH: usize = 256;

struct Req {
    folder: String,
    entries: Vec<EntryId>,
    done: oneshot::Sender<crate::mailbox::Result<()>>,
}

#[derive(Debug, Default)]
pub struct Seen {
    tx: OnceLock<mpsc::Sender<Req>>,
}

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Req({}, {} entries)", self.folder, self.entries.len())
    }
}

impl Seen {
    /// Sets `\Seen` (and "seen by a reader") on entries of a folder, durably.
    pub async fn mark(
        &self,
        mailbox: &Mailbox,
        folder: &str,
        entries: Vec<EntryId>,
    ) -> crate::mailbox::Result<()> {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(run(mailbox.clone(), rx));
            tx
        });
        let (done, wait) = oneshot::channel();
        let req = Req {
            folder: folder.to_string(),
            entries,
            done,
        };
        if tx.send(req).await.is_err() {
            return Err(crate::mailbox::Error::NotAllowed("the server is stopping"));
        }
        wait.await.unwrap_or(Err(crate::mailbox::Error::NotAllowed(
            "the server is stopping",
        )))
    }
}

async fn run(mailbox: Mailbox, mut rx: mpsc::Receiver<Req>) {
    let seen = Flags::default().with(Flag::Seen);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut by_folder: HashMap<String, Vec<Req>> = HashMap::new();
        for r in batch {
            by_folder.entry(r.folder.clone()).or_default().push(r);
        }
        for (folder, reqs) in by_folder {
            let mut all: Vec<EntryId> = reqs
                .iter()
                .flat_map(|r| r.entries.iter().copied())
                .collect();
            all.sort_unstable();
            all.dedup();
            let together = mailbox
                .set_flags_present(&folder, &all, FlagMode::Add, &seen, true)
                .await;
            match together {
                Ok(()) => {
                    for r in reqs {
                        let _ = r.done.send(Ok(()));
                    }
                    continue;
                }
                Err(e) if reqs.len() == 1 => {
                    if let Some(r) = reqs.into_iter().next() {
                        let _ = r.done.send(Err(e));
                    }
                    continue;
                }
                Err(_) => {}
            }
            // A failure of the group (an invalid request): each on its own then.
            for r in reqs {
                let res = mailbox
                    .set_flags_present(&folder, &r.entries, FlagMode::Add, &seen, true)
                    .await;
                let _ = r.done.send(res);
            }
        }
    }
}
