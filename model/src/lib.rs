//! shoal-model: the App Mesh resource model and everything about it that is pure logic.
//!
//! # Layout
//! - [`api`]: the wire types, generated from the botocore model (one Rust type per shape).
//! - [`validate`]: the constraint walker the generated code reports to.
//! - [`check`]: the rules the model's constraints cannot express (unions of optional members,
//!   regexes Envoy must accept, references between resources, what a delete would orphan).
//! - [`resource`]: kinds, keys, ARNs, stored resources and their API shapes.
//! - [`store`]: the replicated [`Model`], the [`Command`] the Raft log carries, and the
//!   deterministic [`Model::apply`].
//! - [`request`]: the JSON entry points (create/update bodies), fuzzed.
//! - [`error`]: the API's exception kinds.
//! - [`discovery`]: service instances and which of them a virtual node or service selects.
//! - [`health`]: which health check an instance gets, its clamped spec, and the threshold
//!   state machine over probe results.
//! - [`history`]: recent changes by revision, so watchers resume instead of resyncing.
//! - [`identity`]: the SPIFFE id of every proxy (what the mesh CA issues and the translation
//!   names).
//!
//! This crate does no I/O and has no async code: every other crate builds on it, and
//! everything in it is tested without a network.

pub mod accesslog;
pub mod api;
pub mod check;
pub mod discovery;
pub mod error;
pub mod health;
pub mod history;
pub mod identity;
pub mod logsafe;
pub mod re2;
pub mod request;
pub mod resource;
pub mod store;
pub mod validate;

pub use error::{ApiError, ErrorKind};
pub use resource::{Kind, Metadata, Resource, ResourceKey, Spec};
pub use store::{
    Applied, Change, ClusterCa, Command, JoinToken, MeshAuthority, MeshCa, Model, Outcome, PutMode,
    Reply, Stamp, TrustedRoot,
};
