//! The body of one DATA while it arrives: in memory up to [`IN_MEMORY`], then in an unlinked
//! file (mode 0600) in the spool directory, so a session costs at most that much memory however
//! large its message (issue #18: 64 sessions each holding a 50 MiB message reached GiBs).
//!
//! Once the message is complete it must be whole in memory to be checked, encrypted and
//! stored; [`Spool::into_bytes`] does that under a budget shared by every SMTP session of the
//! process ([`BUDGET`]), so only a few large messages are materialised at once, each once:
//! into a buffer with room for the trace headers put before it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A message is kept in memory up to this size while it arrives.
pub const IN_MEMORY: usize = 1024 * 1024;
/// Message bytes all SMTP sessions of the process may hold in memory at once after DATA.
pub const BUDGET: usize = 128 * 1024 * 1024;
/// Permits count KiB.
const UNIT: usize = 1024;

fn budget() -> &'static Arc<Semaphore> {
    static B: OnceLock<Arc<Semaphore>> = OnceLock::new();
    B.get_or_init(|| Arc::new(Semaphore::new(BUDGET / UNIT)))
}

/// A share of [`BUDGET`], held while a received message is processed.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

pub struct Spool {
    dir: Option<PathBuf>,
    mem: Vec<u8>,
    file: Option<tokio::fs::File>,
    len: usize,
}

impl Spool {
    /// Spills into `dir` (the system's temporary directory when `None`).
    pub fn new(dir: Option<&Path>) -> Spool {
        Spool {
            dir: dir.map(Path::to_path_buf),
            mem: Vec::new(),
            file: None,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends bytes of the message.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.file.is_none() && self.mem.len() + bytes.len() > IN_MEMORY {
            let mut f = self.open().await?;
            f.write_all(&self.mem).await?;
            self.mem = Vec::new();
            self.file = Some(f);
        }
        match &mut self.file {
            Some(f) => f.write_all(bytes).await?,
            None => self.mem.extend_from_slice(bytes),
        }
        self.len += bytes.len();
        Ok(())
    }

    /// A file nobody else can open: created 0600 under a random name, unlinked at once.
    async fn open(&self) -> std::io::Result<tokio::fs::File> {
        let dir = self.dir.clone().unwrap_or_else(std::env::temp_dir);
        let mut d = tokio::fs::DirBuilder::new();
        d.recursive(true).mode(0o700);
        d.create(&dir).await?;
        let name: [u8; 16] = crate::crypto::random_bytes()
            .map_err(|e| std::io::Error::other(format!("no randomness for a spool name: {e}")))?;
        let path = dir.join(format!(
            "spool-{}.tmp",
            name.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        let mut o = tokio::fs::OpenOptions::new();
        o.read(true).write(true).create_new(true).mode(0o600);
        let f = o.open(&path).await?;
        tokio::fs::remove_file(&path).await?;
        Ok(f)
    }

    /// The message in one buffer that starts with `prefix` and has `slack` bytes of room
    /// left, once the shared budget allows it.
    pub async fn into_bytes(
        mut self,
        prefix: &[u8],
        slack: usize,
    ) -> std::io::Result<(Vec<u8>, Permit)> {
        let permit = if self.file.is_some() {
            let units = self.len.div_ceil(UNIT).min(BUDGET / UNIT) as u32;
            Permit(Arc::clone(budget()).acquire_many_owned(units).await.ok())
        } else {
            Permit(None)
        };
        let mut out = Vec::with_capacity(prefix.len() + self.len + slack);
        out.extend_from_slice(prefix);
        match &mut self.file {
            Some(f) => {
                f.flush().await?;
                f.rewind().await?;
                let n = f.take(self.len as u64).read_to_end(&mut out).await?;
                if n != self.len {
                    return Err(std::io::Error::other(
                        "the spool file is shorter than written",
                    ));
                }
            }
            None => out.extend_from_slice(&self.mem),
        }
        Ok((out, permit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spills_past_the_threshold_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::new(Some(dir.path()));
        s.write(b"small").await.unwrap();
        assert!(s.file.is_none());
        let big = vec![7u8; IN_MEMORY];
        s.write(&big).await.unwrap();
        assert!(s.file.is_some() && s.mem.is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "unlinked"
        );
        let (bytes, _p) = s.into_bytes(b"H: x\r\n", 10).await.unwrap();
        assert_eq!(bytes.len(), 6 + 5 + IN_MEMORY);
        assert!(bytes.starts_with(b"H: x\r\nsmall\x07"));
        assert!(bytes.capacity() >= bytes.len() + 10);
    }
}
