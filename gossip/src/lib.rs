//! shoal-gossip: cluster membership over chitchat (scuttlebutt gossip on UDP, default port
//! 7946, with a phi-accrual failure detector).
//!
//! Every shoal server and agent runs one [`Gossip`] member. Servers find each other through it
//! to form the Raft cluster, agents find servers through it, and agents will publish their
//! service instances and health through it (application keys, see [`keys`]).
//!
//! The shape follows quickwit-cluster: every chitchat key is a constant in [`keys`]; one pure
//! parser turns a node's key-values into a typed [`Member`] (skipping nodes whose metadata is
//! missing or garbage); membership changes come out of the pure [`diff`]. A node's identity is
//! its name; its generation (start time in unix millis) grows on every restart, and only the
//! newest generation of a name is listed.
//!
//! Security: chitchat's UDP transport is neither encrypted nor authenticated; the cluster id
//! only keeps separate clusters apart. Malformed datagrams are dropped by chitchat's decoder.

mod config;
mod gossip;
pub mod keys;
mod member;

pub use config::{GossipConfig, DEFAULT_PORT};
pub use gossip::{Error, Gossip};
pub use member::{diff, Member, MemberEvent, NodeMeta, Role, UnknownRole};
