//! Sealed gossip: every datagram encrypted and authenticated with AES-256-GCM under a key of a
//! keyring, as Serf/memberlist do for Consul.
//!
//! A sealed datagram is `version (1) | nonce (12) | ciphertext | tag (16)`, with a random nonce
//! per datagram and the version byte as associated data. It is sealed with the keyring's
//! *primary* key and opened with whichever installed key authenticates it (the primary first),
//! which is what lets a cluster rotate without downtime: install the new key on every member
//! (each still sends with the old one and accepts both), make it primary everywhere, then remove
//! the old one. A datagram no installed key opens is dropped before chitchat sees a byte of it,
//! and counted.
//!
//! Random 96-bit nonces stay far below GCM's collision bound at gossip rates (a member sends a
//! few datagrams a second; 2^32 datagrams under one key would take decades), and rotation
//! resets the count anyway.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use base64::Engine as _;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::ChitchatEnvelope;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Length of a gossip key: AES-256.
pub const KEY_LEN: usize = 32;
/// Wire version of a sealed datagram; also its associated data.
const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// Bytes a seal adds to a datagram.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;
/// Keys a keyring holds at most (a rotation needs two; a few more allow staged rollouts).
pub const MAX_KEYS: usize = 8;
/// Source addresses whose dropped datagrams are logged at `warn` (each once); later ones are
/// counted only, so a flood of forged packets cannot flood the log.
const LOGGED_SOURCES: usize = 256;

// chitchat fills datagrams up to its limit: the seal must fit in what it leaves.
const _: () = assert!(chitchat::TRANSPORT_RESERVED_LEN >= SEAL_OVERHEAD);

/// What is wrong with a key or a keyring operation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    /// Not base64 of exactly 32 bytes.
    #[error("a gossip key is 32 random bytes in base64 (`shoal gossip keygen` makes one)")]
    BadKey,
    /// `use` or `remove` of a key that is not installed.
    #[error("key {0} is not installed")]
    NotInstalled(String),
    /// The primary key encrypts what this member sends: make another key primary first.
    #[error("key {0} is the primary key: make another key primary before removing it")]
    RemovePrimary(String),
    /// The keyring is full.
    #[error("a keyring holds at most {MAX_KEYS} keys")]
    Full,
}

/// One AES-256 gossip key. Its `Debug` shows the fingerprint only.
#[derive(Clone, PartialEq, Eq)]
pub struct GossipKey([u8; KEY_LEN]);

impl GossipKey {
    /// A new random key.
    pub fn generate() -> GossipKey {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .expect("the system random source works");
        GossipKey(key)
    }

    /// Parses the standard base64 form (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<GossipKey, KeyringError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| KeyringError::BadKey)?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyringError::BadKey)?;
        Ok(GossipKey(key))
    }

    /// The standard base64 form, as `shoal gossip keygen` prints it.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// A name for the key that does not reveal it (the first 8 bytes of its SHA-256, in hex),
    /// for listings and logs.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.0).expect("a 32-byte key"))
    }
}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GossipKey({})", self.fingerprint())
    }
}

struct Ring {
    /// Installed keys, the primary first.
    keys: Vec<(GossipKey, LessSafeKey)>,
}

/// The keys a member seals and opens gossip with; cheap to clone, and every clone sees changes
/// at once (the running transport reads it for every datagram).
#[derive(Clone)]
pub struct Keyring {
    ring: Arc<RwLock<Ring>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys()).finish()
    }
}

impl PartialEq for Keyring {
    fn eq(&self, other: &Keyring) -> bool {
        self.keys() == other.keys()
    }
}

impl Keyring {
    /// A keyring that seals with `primary` and also opens with `others`.
    pub fn new(primary: GossipKey, others: impl IntoIterator<Item = GossipKey>) -> Keyring {
        let mut keys = vec![primary];
        for key in others {
            if !keys.contains(&key) && keys.len() < MAX_KEYS {
                keys.push(key);
            }
        }
        let keys = keys
            .into_iter()
            .map(|k| {
                let aead = k.aead();
                (k, aead)
            })
            .collect();
        Keyring {
            ring: Arc::new(RwLock::new(Ring { keys })),
        }
    }

    /// The installed keys, the primary first.
    pub fn keys(&self) -> Vec<GossipKey> {
        let ring = self.ring.read().expect("keyring lock");
        ring.keys.iter().map(|(k, _)| k.clone()).collect()
    }

    /// The key this member seals with.
    pub fn primary(&self) -> GossipKey {
        self.ring.read().expect("keyring lock").keys[0].0.clone()
    }

    /// Installs `key` for opening (step 1 of a rotation, on every member). Returns false when
    /// it was installed already.
    pub fn install(&self, key: GossipKey) -> Result<bool, KeyringError> {
        let mut ring = self.ring.write().expect("keyring lock");
        if ring.keys.iter().any(|(k, _)| *k == key) {
            return Ok(false);
        }
        if ring.keys.len() >= MAX_KEYS {
            return Err(KeyringError::Full);
        }
        let aead = key.aead();
        ring.keys.push((key, aead));
        Ok(true)
    }

    /// Makes an installed key the primary (step 2, once every member has it).
    pub fn use_key(&self, key: &GossipKey) -> Result<(), KeyringError> {
        let mut ring = self.ring.write().expect("keyring lock");
        let at = ring
            .keys
            .iter()
            .position(|(k, _)| k == key)
            .ok_or_else(|| KeyringError::NotInstalled(key.fingerprint()))?;
        let entry = ring.keys.remove(at);
        ring.keys.insert(0, entry);
        Ok(())
    }

    /// Removes a key that is not the primary (step 3, once no member seals with it).
    pub fn remove(&self, key: &GossipKey) -> Result<(), KeyringError> {
        let mut ring = self.ring.write().expect("keyring lock");
        match ring.keys.iter().position(|(k, _)| k == key) {
            None => Err(KeyringError::NotInstalled(key.fingerprint())),
            Some(0) => Err(KeyringError::RemovePrimary(key.fingerprint())),
            Some(at) => {
                ring.keys.remove(at);
                Ok(())
            }
        }
    }

    /// Seals `plain` with the primary key into `out` (cleared first).
    pub fn seal(&self, plain: &[u8], out: &mut Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system random source works");
        out.clear();
        out.reserve(plain.len() + SEAL_OVERHEAD);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let ring = self.ring.read().expect("keyring lock");
        let tag = ring.keys[0]
            .1
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([VERSION]),
                &mut out[1 + NONCE_LEN..],
            )
            .expect("a datagram is far below AES-GCM's length limit");
        out.extend_from_slice(tag.as_ref());
    }

    /// Opens a sealed datagram in place with the first installed key that authenticates it,
    /// returning the plaintext; `None` when it is not a sealed datagram of this version or no
    /// key authenticates it.
    pub fn open<'a>(&self, sealed: &'a mut [u8]) -> Option<&'a [u8]> {
        if sealed.len() < SEAL_OVERHEAD || sealed[0] != VERSION {
            return None;
        }
        let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN].try_into().ok()?;
        let body = &mut sealed[1 + NONCE_LEN..];
        let ring = self.ring.read().expect("keyring lock");
        // A failed open leaves the buffer unspecified: keep a copy for the next key when
        // there is one (only during a rotation).
        let spare = (ring.keys.len() > 1).then(|| body.to_vec());
        for (i, (_, aead)) in ring.keys.iter().enumerate() {
            if i > 0 {
                body.copy_from_slice(spare.as_deref().expect("copied when there are two keys"));
            }
            if aead
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from([VERSION]),
                    body,
                )
                .is_ok()
            {
                let len = body.len() - TAG_LEN;
                return Some(&sealed[1 + NONCE_LEN..1 + NONCE_LEN + len]);
            }
        }
        None
    }
}

/// Datagrams a sealed transport dropped, by reason.
#[derive(Debug, Default)]
pub(crate) struct DropCounters {
    /// No installed key authenticated it (no key, a wrong or removed key, tampering).
    pub(crate) unauthenticated: AtomicU64,
    /// Authenticated but not a chitchat message (a member running another version).
    pub(crate) malformed: AtomicU64,
    /// Too large to send once sealed (never expected: chitchat leaves room).
    pub(crate) oversized: AtomicU64,
    /// Sources already logged once.
    logged: Mutex<HashSet<IpAddr>>,
}

impl DropCounters {
    /// Logs a dropped datagram at `warn` the first time a source sends one.
    fn log_drop(&self, from: SocketAddr, reason: &str) {
        let first = {
            let mut logged = self.logged.lock().expect("drop log lock");
            logged.len() < LOGGED_SOURCES && logged.insert(from.ip())
        };
        if first {
            tracing::warn!(%from, reason, "gossip datagram dropped (later ones from this address are counted in shoal_agent_gossip_datagrams_dropped_total, not logged)");
        } else {
            tracing::debug!(%from, reason, "gossip datagram dropped");
        }
    }
}

/// chitchat's transport with every datagram sealed by a [`Keyring`].
pub(crate) struct SealedTransport {
    pub(crate) keyring: Keyring,
    pub(crate) drops: Arc<DropCounters>,
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .map_err(|e| anyhow::anyhow!("failed to bind to {listen_addr}/UDP for gossip: {e}"))?;
        Ok(Box::new(SealedSocket {
            socket,
            keyring: self.keyring.clone(),
            drops: self.drops.clone(),
            plain: Vec::with_capacity(MAX_DATAGRAM),
            sealed: Vec::with_capacity(MAX_DATAGRAM),
            recv: vec![0u8; MAX_DATAGRAM].into_boxed_slice(),
        }))
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    keyring: Keyring,
    drops: Arc<DropCounters>,
    plain: Vec<u8>,
    sealed: Vec<u8>,
    recv: Box<[u8]>,
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        self.plain.clear();
        envelope.serialize(&mut self.plain);
        self.keyring.seal(&self.plain, &mut self.sealed);
        if self.sealed.len() > MAX_DATAGRAM {
            self.drops.oversized.fetch_add(1, Ordering::Relaxed);
            anyhow::bail!("sealed gossip datagram of {} bytes", self.sealed.len());
        }
        let num_bytes_sent = self.socket.send_to(&self.sealed, to).await?;
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let (len, from_addr) = match self.socket.recv_from(&mut self.recv).await {
                Ok(got) => got,
                // As chitchat's own UDP socket: these say nothing about this socket.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::OutOfMemory
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(anyhow::anyhow!("gossip socket failed: {e}")),
            };
            let Some(mut plain) = self.keyring.open(&mut self.recv[..len]) else {
                self.drops.unauthenticated.fetch_add(1, Ordering::Relaxed);
                self.drops
                    .log_drop(from_addr, "no gossip key authenticates it");
                continue;
            };
            match ChitchatEnvelope::deserialize(&mut plain) {
                Ok(envelope) => {
                    return Ok(RecvOutcome {
                        from_addr,
                        envelope,
                        num_bytes_received: len,
                    })
                }
                Err(_) => {
                    self.drops.malformed.fetch_add(1, Ordering::Relaxed);
                    self.drops
                        .log_drop(from_addr, "authenticated but not a gossip message");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(ring: &Keyring, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ring.seal(plain, &mut out);
        out
    }

    #[test]
    fn a_sealed_datagram_opens_with_its_key_and_hides_the_plaintext() {
        let ring = Keyring::new(GossipKey::generate(), []);
        let plain = b"inst:colorteller=10.0.0.7:9080";
        let mut datagram = sealed(&ring, plain);
        assert_eq!(datagram.len(), plain.len() + SEAL_OVERHEAD);
        assert!(!datagram.windows(plain.len()).any(|w| w == plain.as_slice()));
        assert_eq!(ring.open(&mut datagram), Some(plain.as_slice()));
        // Two seals of the same bytes differ (fresh nonces).
        assert_ne!(sealed(&ring, plain), sealed(&ring, plain));
    }

    #[test]
    fn wrong_key_tampering_plaintext_and_truncation_are_refused() {
        let ring = Keyring::new(GossipKey::generate(), []);
        let other = Keyring::new(GossipKey::generate(), []);
        let datagram = sealed(&ring, b"hello");
        assert_eq!(other.open(&mut datagram.clone()), None);
        for i in 0..datagram.len() {
            let mut bad = datagram.clone();
            bad[i] ^= 0x01;
            assert_eq!(ring.open(&mut bad), None, "flipped byte {i}");
        }
        for len in 0..datagram.len() {
            assert_eq!(
                ring.open(&mut datagram[..len].to_vec()),
                None,
                "cut at {len}"
            );
        }
        // An unsealed chitchat datagram (magic 45139 little-endian) is not taken.
        assert_eq!(ring.open(&mut [0x53, 0xb0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn rotation_keeps_old_and_new_members_talking_at_every_step() {
        let old = GossipKey::generate();
        let new = GossipKey::generate();
        let a = Keyring::new(old.clone(), []);
        let b = Keyring::new(old.clone(), []);
        let talk = |from: &Keyring, to: &Keyring| to.open(&mut sealed(from, b"x")).is_some();
        // 1. install everywhere: both still seal with the old key.
        assert!(a.install(new.clone()).unwrap());
        assert!(!a.install(new.clone()).unwrap());
        assert!(talk(&a, &b) && talk(&b, &a));
        b.install(new.clone()).unwrap();
        // 2. use the new key, one member at a time.
        a.use_key(&new).unwrap();
        assert_eq!(a.primary(), new);
        assert!(talk(&a, &b) && talk(&b, &a));
        b.use_key(&new).unwrap();
        // 3. remove the old key: the primary cannot go.
        assert_eq!(
            a.remove(&new),
            Err(KeyringError::RemovePrimary(new.fingerprint()))
        );
        a.remove(&old).unwrap();
        b.remove(&old).unwrap();
        assert!(talk(&a, &b) && talk(&b, &a));
        assert_eq!(a.keys(), vec![new.clone()]);
        // A member left on the old key alone is cut off.
        let stale = Keyring::new(old.clone(), []);
        assert!(!talk(&stale, &a) && !talk(&a, &stale));
        assert_eq!(
            a.use_key(&old),
            Err(KeyringError::NotInstalled(old.fingerprint()))
        );
    }

    #[test]
    fn keys_round_trip_through_base64_and_bad_ones_are_refused() {
        let key = GossipKey::generate();
        assert_eq!(GossipKey::from_base64(&key.to_base64()), Ok(key.clone()));
        assert_eq!(
            GossipKey::from_base64(&format!(" {}\n", key.to_base64())),
            Ok(key.clone())
        );
        for bad in ["", "not base64!", "AAAA", &"A".repeat(44)] {
            assert_eq!(
                GossipKey::from_base64(bad),
                Err(KeyringError::BadKey),
                "{bad:?}"
            );
        }
        assert_eq!(key.fingerprint().len(), 16);
        assert!(!format!("{key:?}").contains(&key.to_base64()));
    }

    #[test]
    fn a_keyring_is_bounded() {
        let ring = Keyring::new(GossipKey::generate(), []);
        for _ in 1..MAX_KEYS {
            ring.install(GossipKey::generate()).unwrap();
        }
        assert_eq!(ring.install(GossipKey::generate()), Err(KeyringError::Full));
    }
}
