//! A node's home directory (`--home`, `PEERPOST_HOME`, default `$XDG_DATA_HOME/peerpost`):
//! which file holds what, and how secret files are written and checked.
//!
//! ```text
//!   config.toml          settings (written by init, every key commented)
//!   identity.toml        public identity: address, user keys, device key (not secret)
//!   keys/user.key        user master seed, 0600, optionally passphrase-protected
//!   keys/device.key      this device's overlay key, 0600
//!   password             Argon2id hash of the IMAP/POP3/SMTP password, 0600
//!   tls/cert.pem         the servers' certificate (self-signed at init)
//!   tls/key.pem          its private key, 0600
//!   store/               LMDB environment (data.mdb, lock.mdb)
//! ```
//!
//! Every file is written atomically (temporary file, fsync, rename, fsync of the directory),
//! so a crash leaves the old or the new version, never half of one. Secret files are created
//! with mode 0600 and refused at load if anyone but the owner can read them.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::crypto::{self, DeviceKey, KeyKind, UserKeys, UserPublicKeys, keys};

#[derive(Debug, Error)]
pub enum HomeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is readable by other users (mode {mode:04o}); a secret key must be private: \
         run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("no peerpost identity in {home}: run `peerpost init --address YOU@DOMAIN` first")]
    NotInitialized { home: PathBuf },
    #[error(
        "{home} already holds the identity of {address}; refusing to overwrite it \
         (use --force to replace it, which destroys the old keys)"
    )]
    AlreadyInitialized { home: PathBuf, address: String },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Key {
        path: PathBuf,
        #[source]
        source: crypto::Error,
    },
}

pub type Result<T> = std::result::Result<T, HomeError>;

/// The public identity kept beside the keys, readable without a passphrase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicIdentity {
    pub address: String,
    /// Hex Ed25519 user key.
    pub sign_key: String,
    /// Hex X25519 user key.
    pub enc_key: String,
    /// Hex Ed25519 device key.
    pub device_key: String,
    /// Unix seconds when this home was created.
    pub created: u64,
}

impl PublicIdentity {
    pub fn user_keys(&self) -> Option<UserPublicKeys> {
        Some(UserPublicKeys {
            sign: crypto::unhex(&self.sign_key)?.try_into().ok()?,
            enc: crypto::unhex(&self.enc_key)?.try_into().ok()?,
        })
    }

    pub fn device_public(&self) -> Option<[u8; 32]> {
        crypto::unhex(&self.device_key)?.try_into().ok()
    }
}

/// Paths inside a home directory.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// `$XDG_DATA_HOME/peerpost`, or `~/.local/share/peerpost`.
    pub fn default_root() -> PathBuf {
        dirs::data_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("peerpost")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn identity(&self) -> PathBuf {
        self.root.join("identity.toml")
    }
    pub fn user_key(&self) -> PathBuf {
        self.root.join("keys/user.key")
    }
    pub fn device_key(&self) -> PathBuf {
        self.root.join("keys/device.key")
    }
    pub fn password(&self) -> PathBuf {
        self.root.join("password")
    }
    pub fn tls_cert(&self) -> PathBuf {
        self.root.join("tls/cert.pem")
    }
    pub fn tls_key(&self) -> PathBuf {
        self.root.join("tls/key.pem")
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// Creates the directory tree (mode 0700: the home holds secrets).
    pub fn create_dirs(&self) -> Result<()> {
        for dir in [
            self.root.clone(),
            self.root.join("keys"),
            self.root.join("tls"),
        ] {
            fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| io(&dir, e))?;
        }
        Ok(())
    }

    /// The public identity, or [`HomeError::NotInitialized`].
    pub fn load_identity(&self) -> Result<PublicIdentity> {
        let path = self.identity();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(HomeError::NotInitialized {
                    home: self.root.clone(),
                });
            }
            Err(e) => return Err(io(&path, e)),
        };
        toml::from_str(&text).map_err(|e| HomeError::Invalid {
            path,
            why: e.message().to_string(),
        })
    }

    /// The public identity with its keys decoded.
    pub fn load_identity_keys(&self) -> Result<(PublicIdentity, UserPublicKeys, [u8; 32])> {
        let id = self.load_identity()?;
        let malformed = || HomeError::Invalid {
            path: self.identity(),
            why: "holds a malformed key (expected 64 hex digits)".into(),
        };
        let user = id.user_keys().ok_or_else(malformed)?;
        let device = id.device_public().ok_or_else(malformed)?;
        Ok((id, user, device))
    }

    /// Refuses when an identity exists (unless `force`).
    pub fn check_not_initialized(&self, force: bool) -> Result<()> {
        match self.load_identity() {
            Err(HomeError::NotInitialized { .. }) => {}
            Ok(id) if !force => {
                return Err(HomeError::AlreadyInitialized {
                    home: self.root.clone(),
                    address: id.address,
                });
            }
            Ok(_) => {}
            Err(_) if force => {}
            Err(e) => return Err(e),
        }
        if !force && self.user_key().exists() {
            return Err(HomeError::AlreadyInitialized {
                home: self.root.clone(),
                address: "an unknown address".into(),
            });
        }
        Ok(())
    }

    pub fn write_identity(&self, id: &PublicIdentity) -> Result<()> {
        let text = format!(
            "# The public identity of this peerpost node (written by `peerpost init`; not secret).\n{}",
            toml::to_string(id).map_err(|e| HomeError::Invalid {
                path: self.identity(),
                why: e.to_string(),
            })?
        );
        write_atomic(&self.identity(), text.as_bytes(), 0o644)
    }

    pub fn write_user_key(&self, keys: &UserKeys, passphrase: Option<&[u8]>) -> Result<()> {
        let path = self.user_key();
        let bytes =
            keys::encode_key_file(KeyKind::User, keys.seed(), passphrase).map_err(|source| {
                HomeError::Key {
                    path: path.clone(),
                    source,
                }
            })?;
        write_atomic(&path, &bytes, 0o600)
    }

    pub fn write_device_key(&self, key: &DeviceKey) -> Result<()> {
        let path = self.device_key();
        let bytes = keys::encode_key_file(KeyKind::Device, key.seed(), None).map_err(|source| {
            HomeError::Key {
                path: path.clone(),
                source,
            }
        })?;
        write_atomic(&path, &bytes, 0o600)
    }

    /// Whether loading the user key will need a passphrase.
    pub fn user_key_is_protected(&self) -> Result<bool> {
        let bytes = read_secret(&self.user_key())?;
        Ok(keys::key_file_is_protected(&bytes))
    }

    pub fn load_user_keys(&self, passphrase: Option<&[u8]>) -> Result<UserKeys> {
        let path = self.user_key();
        let bytes = self.read_key_file(&path)?;
        let seed = keys::decode_key_file(&bytes, KeyKind::User, passphrase)
            .map_err(|source| HomeError::Key { path, source })?;
        Ok(UserKeys::from_seed(*seed))
    }

    pub fn load_device_key(&self) -> Result<DeviceKey> {
        let path = self.device_key();
        let bytes = self.read_key_file(&path)?;
        let seed = keys::decode_key_file(&bytes, KeyKind::Device, None)
            .map_err(|source| HomeError::Key { path, source })?;
        Ok(DeviceKey::from_seed(*seed))
    }

    fn read_key_file(&self, path: &Path) -> Result<Zeroizing<Vec<u8>>> {
        match read_secret(path) {
            Err(HomeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(HomeError::NotInitialized {
                    home: self.root.clone(),
                })
            }
            other => other,
        }
    }

    pub fn write_password_hash(&self, hash: &str) -> Result<()> {
        write_atomic(&self.password(), format!("{hash}\n").as_bytes(), 0o600)
    }

    pub fn load_password_hash(&self) -> Result<String> {
        let bytes = read_secret(&self.password())?;
        Ok(String::from_utf8_lossy(&bytes).trim().to_string())
    }
}

fn io(path: &Path, source: std::io::Error) -> HomeError {
    HomeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically with the given mode: a crash leaves either the old or
/// the new file. The temporary file is created with the final mode, so a secret is never
/// readable by others, not even for a moment.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))?;
    Ok(())
}

/// Reads a secret file, refusing it when group or others may read or write it.
pub fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let meta = fs::metadata(path).map_err(|e| io(path, e))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(HomeError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > 1024 * 1024 {
        return Err(HomeError::Invalid {
            path: path.to_path_buf(),
            why: "larger than any peerpost secret file".into(),
        });
    }
    fs::read(path).map(Zeroizing::new).map_err(|e| io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        home.create_dirs().unwrap();
        let keys = UserKeys::generate().unwrap();
        home.write_user_key(&keys, None).unwrap();
        let mode = fs::metadata(home.user_key()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(home.load_user_keys(None).unwrap().public(), keys.public());
        fs::set_permissions(home.user_key(), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            home.load_user_keys(None),
            Err(HomeError::Permissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn missing_identity_says_run_init() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("nothing"));
        let err = home.load_identity().unwrap_err();
        assert!(err.to_string().contains("peerpost init"), "{err}");
        assert!(matches!(
            home.load_user_keys(None),
            Err(HomeError::NotInitialized { .. })
        ));
    }
}
