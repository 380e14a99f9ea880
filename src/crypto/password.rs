//! The password the IMAP, POP3 and SMTP servers ask for. It is stored only as an Argon2id hash
//! in PHC string form (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`), and verification takes the
//! parameters from the stored string, so they can be raised later without a format change.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use thiserror::Error;

use super::random_bytes;

/// Longest password accepted (a bound on hashing work per login attempt).
pub const MAX_PASSWORD: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PasswordError {
    #[error("the password is empty")]
    Empty,
    #[error("the password is longer than {MAX_PASSWORD} bytes")]
    TooLong,
    #[error("the stored password hash is malformed: {0}")]
    BadHash(String),
    #[error("the system random number generator failed")]
    Random,
}

/// OWASP's Argon2id minimum (19 MiB, 2 passes): ~20 ms per login here, which also throttles
/// guessing.
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a new password.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    if password.len() > MAX_PASSWORD {
        return Err(PasswordError::TooLong);
    }
    let salt_bytes: [u8; 16] = random_bytes().map_err(|_| PasswordError::Random)?;
    let salt =
        SaltString::encode_b64(&salt_bytes).map_err(|e| PasswordError::BadHash(e.to_string()))?;
    let hash = hasher()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| PasswordError::BadHash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Checks a password against a stored hash. Over-long input is refused without hashing.
pub fn verify_password(password: &str, stored: &str) -> Result<bool, PasswordError> {
    if password.len() > MAX_PASSWORD {
        return Ok(false);
    }
    let parsed = PasswordHash::new(stored).map_err(|e| PasswordError::BadHash(e.to_string()))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(PasswordError::BadHash(format!(
            "algorithm {} is not argon2id",
            parsed.algorithm
        )));
    }
    Ok(hasher()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = hash_password("hunter2").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("hunter2"));
        assert!(verify_password("hunter2", &h).unwrap());
        assert!(!verify_password("hunter3", &h).unwrap());
        assert_ne!(h, hash_password("hunter2").unwrap(), "salt is random");
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(hash_password(""), Err(PasswordError::Empty));
        assert_eq!(
            hash_password(&"x".repeat(MAX_PASSWORD + 1)),
            Err(PasswordError::TooLong)
        );
        assert!(verify_password("x", "not a hash").is_err());
        assert!(
            verify_password(
                "x",
                "$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
            )
            .is_err()
        );
    }
}
