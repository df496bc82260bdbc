//! shoal-xds: the App Mesh model as Envoy configuration, and the ADS server that pushes it.
//!
//! * [`proxy`]: who a connecting Envoy is (`mesh/<mesh>/virtualNode/<name>`, the gateway form,
//!   or the App Mesh ARN form) and the options its bootstrap metadata carries.
//! * [`snapshot`]: the resources one proxy is sent, per type, each encoded once with a content
//!   version, shared between proxies that are sent the same resource.
//! * `translate` (pure): model + endpoints + proxy → [`snapshot::Snapshot`].
//! * [`bootstrap`]: the bootstrap a stock Envoy starts with (`shoal envoy bootstrap`).
//! * [`cache`]: one snapshot per connected proxy, recomputed when the [`cache::Inputs`]
//!   change, resources interned across proxies; the agent's [`SnapshotSource`].
//! * [`identity`]: the proxies' workload certificates the agent holds, served as SDS secrets
//!   on their own ADS streams (each proxy only its own).
//! * [`server`]: Aggregated Discovery Service, state-of-the-world and incremental, over tonic.
//!
//! **Invariant:** this crate knows nothing about Raft or gossip; it sees the model and the
//! endpoints (`shoal_model::discovery::Endpoint`) it is given.

pub mod bootstrap;
pub mod cache;
pub mod identity;
pub mod proxy;
pub mod server;
pub mod snapshot;
pub mod translate;

pub use cache::{Inputs, Proxies};
pub use identity::{Identities, WorkloadCert};
pub use proxy::{ProxyId, ProxyKind, ProxyOptions};
pub use server::{AdsServer, SnapshotSource, SnapshotWatch};
pub use snapshot::{Resource, ResourceType, Snapshot};
pub use translate::{check_consistency, translate, TranslateError};
