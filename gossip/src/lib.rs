//! shoal-gossip: cluster membership over chitchat (scuttlebutt gossip on UDP, default port
//! 7946, with a phi-accrual failure detector).
//!
//! Every shoal server and agent runs one [`Gossip`] member. Servers find each other through it
//! to form the Raft cluster, agents find servers through it, and agents publish the service
//! instances registered on their host, with their health, through it.
//!
//! The shape follows quickwit-cluster: every chitchat key is a constant in [`keys`]; one pure
//! parser turns a node's key-values into a typed [`Member`] (skipping nodes whose metadata is
//! missing or garbage); membership changes come out of the pure [`diff`]. A node's identity is
//! its name; its generation (start time in unix millis) grows on every restart, and only the
//! newest generation of a name is listed.
//!
//! # Instances and the endpoint view
//!
//! * [`Gossip::publish_instance`]`(&Instance, healthy)` writes `inst:<instance key>` =
//!   `<1|0><instance JSON>` (format and limits in [`keys`]); re-publishing an unchanged value
//!   sends nothing, so an agent may re-publish after every health check. At most
//!   [`keys::MAX_INSTANCES_PER_NODE`] instances and [`keys::MAX_INSTANCE_BYTES_PER_NODE`] bytes
//!   per node ([`Error::TooManyInstances`], [`Error::InstanceBytesExceeded`]).
//! * [`Gossip::withdraw_instance`]`(key)` deletes it (a tombstone kept for
//!   [`GossipConfig::marked_for_deletion_grace`]).
//! * [`Gossip::endpoints`] is every node's view of all instances as
//!   [`shoal_model::discovery::Endpoint`]s (host = member name), sorted: instances of live
//!   members only (a dead host's leave when chitchat's failure detector declares it dead), of
//!   the newest live generation of each name only (a restarted host's instances replace the old
//!   process's, never mixed), withdrawn keys and undecodable values left out (the latter
//!   counted by [`Gossip::invalid_instance_values`]).
//! * [`Gossip::subscribe_endpoints`] is a `watch` counter bumped whenever that view changes.
//!   The view is rebuilt by a task woken by chitchat's key-change listener (an instance key set
//!   here or arrived from a peer) and by its live-nodes watcher (a member joined, died, or
//!   changed any key, deletions included — reported at the end of a gossip round); rebuilds
//!   are coalesced (at most one per 20 ms), decode only changed key versions, and notify only
//!   when the view really changed.
//!
//! `cargo bench -p shoal-gossip --bench convergence` measures how fast the view converges with
//! N members in one process and the default settings (registration, withdrawal, host death).
//!
//! Security: with a [`Keyring`] in [`GossipConfig::keyring`], every datagram is sealed with
//! AES-256-GCM ([`seal`](Keyring::seal)); one that no installed key opens is dropped before
//! chitchat decodes it and counted ([`Gossip::dropped_datagrams`]); keys rotate without
//! downtime by install, use, remove on every member. Without one, gossip is plaintext and
//! unauthenticated (the cluster id only keeps separate clusters apart). chitchat is a patched
//! copy (`third_party/chitchat`) because its envelope codec is private upstream.
//! Malformed datagrams are dropped by chitchat's decoder.
//! A name is held by its first live process: another address claiming it (a twin or a rogue)
//! is refused in every view and reported loudly on both sides ([`names`], [`NameConflict`]),
//! instead of replacing the holder's instances.

mod config;
mod endpoints;
mod gossip;
pub mod keys;
mod member;
mod names;
mod seal;

pub use config::{GossipConfig, DEFAULT_PORT};
pub use gossip::{DroppedDatagrams, Error, Gossip};
pub use member::{diff, Member, MemberEvent, NodeMeta, Role, UnknownRole};
pub use names::NameConflict;
pub use seal::{GossipKey, Keyring, KeyringError, KEY_LEN, MAX_KEYS, SEAL_OVERHEAD};
