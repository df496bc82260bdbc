//! Join tokens: the secret a new member presents to have its certificate signed.
//!
//! A token reads `<id>.<secret>`: 16 and 32 hex digits. The servers keep the id, the SHA-256 of
//! the secret, the role its certificates are for, and when it expires; never the secret, so
//! the replicated state and its backups hold no usable token. Deciding whether a presented token
//! is good is pure ([`check`]) and golden-tested.

use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

/// Why a presented token is refused (each says what the operator does next).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    /// Not `<16 hex>.<32 hex>`.
    #[error("a join token reads <16 hex digits>.<32 hex digits> (from `shoal tls token create`)")]
    Malformed,
    /// No token with that id (never made, or revoked).
    #[error("join token {0} is unknown or revoked")]
    Unknown(String),
    /// The secret does not match.
    #[error("join token {0}: wrong secret")]
    WrongSecret(String),
    /// Past its expiry.
    #[error("join token {0} expired")]
    Expired(String),
}

/// A new token: `(id, secret, the secret's SHA-256 in hex)`.
pub fn generate() -> (String, String, String) {
    let rng = SystemRandom::new();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 16];
    rng.fill(&mut id).expect("the system random source works");
    rng.fill(&mut secret)
        .expect("the system random source works");
    let secret = hex::encode(secret);
    let hash = secret_sha256(&secret);
    (hex::encode(id), secret, hash)
}

/// The SHA-256 of a secret, hex: what the servers store.
pub fn secret_sha256(secret: &str) -> String {
    hex::encode(digest(&SHA256, secret.as_bytes()))
}

/// Splits a presented token into its id and secret.
pub fn parse(token: &str) -> Result<(&str, &str), JoinRefusal> {
    let (id, secret) = token.trim().split_once('.').ok_or(JoinRefusal::Malformed)?;
    let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex_of(id, 16) || !hex_of(secret, 32) {
        return Err(JoinRefusal::Malformed);
    }
    Ok((id, secret))
}

/// Whether `token` is good, given what the servers hold for its id (`stored`: the secret's
/// SHA-256 and the expiry in Unix seconds; none when there is no such token) at `now`.
pub fn check(token: &str, stored: Option<(&str, u64)>, now: u64) -> Result<(), JoinRefusal> {
    let (id, secret) = parse(token)?;
    let Some((hash, expires_at)) = stored else {
        return Err(JoinRefusal::Unknown(id.to_string()));
    };
    let presented = secret_sha256(secret);
    // Digests, compared without an early exit.
    let same = presented.len() == hash.len()
        && presented
            .bytes()
            .zip(hash.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b.to_ascii_lowercase()))
            == 0;
    if !same {
        return Err(JoinRefusal::WrongSecret(id.to_string()));
    }
    if now >= expires_at {
        return Err(JoinRefusal::Expired(id.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A presented token, the stored hash and expiry, the time, and the decision.
    type Case<'a> = (
        &'a str,
        Option<(&'a str, u64)>,
        u64,
        Result<(), JoinRefusal>,
    );

    #[test]
    fn decisions() {
        let (id, secret, hash) = generate();
        let token = format!("{id}.{secret}");
        let other = format!("{id}.{}", "0".repeat(32));
        let cases: Vec<Case> = vec![
            (&token, Some((&hash, 100)), 99, Ok(())),
            (
                &token,
                Some((&hash, 100)),
                100,
                Err(JoinRefusal::Expired(id.clone())),
            ),
            (&token, None, 0, Err(JoinRefusal::Unknown(id.clone()))),
            (
                &other,
                Some((&hash, 100)),
                0,
                Err(JoinRefusal::WrongSecret(id.clone())),
            ),
            ("", Some((&hash, 100)), 0, Err(JoinRefusal::Malformed)),
            (
                "abc.def",
                Some((&hash, 100)),
                0,
                Err(JoinRefusal::Malformed),
            ),
            (&secret, Some((&hash, 100)), 0, Err(JoinRefusal::Malformed)),
        ];
        for (t, stored, now, want) in cases {
            assert_eq!(check(t, stored, now), want, "{t:?} at {now}");
        }
        // A known answer: the stored form of a fixed secret.
        assert_eq!(
            secret_sha256("00112233445566778899aabbccddeeff"),
            "5947d7c33d783f94b3b4c1a96ebc8991ed28f1b069b71e03376cba8caa98a720"
        );
        assert_eq!(id.len(), 16);
        assert_eq!(hash.len(), 64);
        assert_ne!(generate().0, id);
    }
}
