//! The replicated state: every resource of every mesh, and the deterministic function that
//! applies one committed [`Command`] to it.
//!
//! Every server applies the same log with [`Model::apply`]; nothing in it reads a clock, a
//! random source or the environment (the proposer puts time, uid and account in the command),
//! so the same log gives the same model and the same revisions everywhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::api::TagRef;
use crate::check;
use crate::error::{ApiError, ErrorKind};
use crate::resource::{Kind, Metadata, Resource, ResourceKey, Spec};

/// How long a client token is remembered, in seconds (App Mesh does not document it; AWS
/// idempotency windows are typically hours, and a day covers every retry loop).
pub const CLIENT_TOKEN_TTL_SECS: f64 = 24.0 * 3600.0;

/// Most tags one resource may carry (the model's `TagList` maximum).
pub const MAX_TAGS: usize = 50;

/// Values the proposer fixes for a write so that applying it is deterministic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamp {
    /// Seconds since the epoch at the proposer.
    pub now: f64,
    /// A fresh unique id, used if the write creates a resource.
    pub uid: String,
    /// The account that owns what is created (12 digits).
    pub account: String,
    /// The region written into ARNs.
    pub region: String,
}

/// Whether a put must create or must update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutMode {
    /// Fails with `ConflictException` if the resource exists.
    Create,
    /// Fails with `NotFoundException` if it does not.
    Update,
}

/// A write, as it travels through the Raft log. Serialized as JSON in the log: a
/// compatibility contract between versions, so only add optional members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Creates or updates a resource.
    Put {
        /// Which resource.
        key: ResourceKey,
        /// Its new spec (already validated by the proposer). Boxed: specs are large and the
        /// other commands small.
        spec: Box<Spec>,
        /// Create or update.
        mode: PutMode,
        /// Tags to set at creation.
        #[serde(default)]
        tags: Vec<TagRef>,
        /// The request's idempotency token, if any.
        #[serde(default)]
        client_token: Option<String>,
        /// Time, uid, owner.
        stamp: Stamp,
    },
    /// Deletes a resource.
    Delete {
        /// Which resource.
        key: ResourceKey,
    },
    /// Adds or replaces tags.
    Tag {
        /// Which resource.
        key: ResourceKey,
        /// Tags to add or overwrite.
        tags: Vec<TagRef>,
    },
    /// Removes tags by key.
    Untag {
        /// Which resource.
        key: ResourceKey,
        /// Keys to remove.
        keys: Vec<String>,
    },
    /// Replaces every resource with these (`shoal snapshot restore`). Client tokens are
    /// kept: they describe requests, not resources.
    Restore {
        /// The whole model to restore.
        resources: Vec<Resource>,
    },
    /// Several independent commands in one log entry (group commit: concurrent writes share
    /// one disk flush and one replication round). Each is applied in order and answered on
    /// its own; they all get the entry's revision. Batches do not nest.
    Batch(Vec<Command>),
    /// Creates the first access keys (`POST /v1/acl/bootstrap`): applied only while the model
    /// holds none, so exactly one bootstrap ever succeeds, whichever server took it.
    BootstrapAccessKeys {
        /// The operator's key.
        keys: Vec<AccessKey>,
    },
    /// Adds an access key (`shoal acl create`).
    PutAccessKey {
        /// The key, its secret and policy (checked by the proposer).
        key: AccessKey,
    },
    /// Revokes an access key (`shoal acl revoke`).
    RevokeAccessKey {
        /// Its id.
        id: String,
    },
    /// Puts the cluster CA into the replicated state (a server started with its key does, when
    /// it first leads): applied only while there is none, so the first CA stays.
    ImportClusterCa {
        /// The CA certificate and key.
        ca: ClusterCa,
    },
    /// Puts the mesh CA into the replicated state (the first leader makes one): applied only
    /// while there is none, so the first stays; rotation is [`Command::RotateMeshCa`].
    InitMeshCa {
        /// The trust domain and the signing authority.
        ca: MeshCa,
    },
    /// Makes `authority` the mesh CA's signing authority (`shoal ca rotate`, `shoal ca
    /// import`): the previous one's root stays trusted until `overlap_until`, so proxies
    /// holding certificates from either keep talking while they renew. Trust that ended by
    /// `now` is dropped.
    RotateMeshCa {
        /// The new signing authority.
        authority: MeshAuthority,
        /// Unix seconds until which the previous root stays in every trust bundle.
        overlap_until: u64,
        /// The proposer's clock (Unix seconds): what "ended" is measured against, the same on
        /// every replica.
        now: u64,
    },
    /// Adds a join token (`shoal tls token create`).
    PutJoinToken {
        /// The token (its secret only as a hash).
        token: JoinToken,
    },
    /// Revokes a join token (`shoal tls token revoke`).
    RevokeJoinToken {
        /// Its id.
        id: String,
    },
}

/// The cluster CA: what every member's certificate chains to, and the key the servers sign
/// joining members' certificates with. Kept in the replicated model (servers only, never in
/// watch streams; in snapshots, so backups hold it: protect them as the key itself).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCa {
    /// The CA certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

/// The mesh CA: the authority proxies' workload certificates chain to. A sibling of the cluster
/// CA, never its child (see `shoal_pki::mesh`). Kept in the replicated model like the cluster
/// CA (servers only, in snapshots: protect backups as the key itself).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshCa {
    /// The SPIFFE trust domain of every workload identity (`shoal` unless configured).
    pub trust_domain: String,
    /// The authority that signs now.
    pub signing: MeshAuthority,
    /// Roots trusted besides the signing one, each until its time (a rotation's overlap).
    #[serde(default)]
    pub previous: Vec<TrustedRoot>,
}

impl MeshCa {
    /// The roots to trust at `now` (Unix seconds), PEM, the signing authority's first.
    pub fn bundle(&self, now: u64) -> String {
        let mut out = self.signing.root_pem.clone();
        for r in self.previous.iter().filter(|r| r.trusted_until > now) {
            if r.root_pem != self.signing.root_pem {
                out.push_str(&r.root_pem);
            }
        }
        out
    }
}

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("MeshCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// A signing authority of the mesh CA: shoal's own root, or an operator's intermediate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshAuthority {
    /// The signing certificate, then the intermediates up to (not including) the root, PEM.
    pub cert_pem: String,
    /// The signing certificate's private key, PEM.
    pub key_pem: String,
    /// The root the chain ends at (the signing certificate itself for shoal's own root).
    pub root_pem: String,
    /// When it became the signing authority (Unix seconds, the proposer's clock).
    pub since: u64,
}

impl std::fmt::Debug for MeshAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("MeshAuthority")
            .field("since", &self.since)
            .finish_non_exhaustive()
    }
}

/// A root trusted until a time: a previous authority's, during a rotation's overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedRoot {
    /// The root certificate, PEM.
    pub root_pem: String,
    /// Unix seconds until which it is trusted.
    pub trusted_until: u64,
}

/// A join token: a secret a new member presents, once or many times until it expires or is
/// revoked, to have its certificate signed by the cluster CA. Only the secret's SHA-256 is
/// kept (a backup does not hold usable tokens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// The token's public half (16 hex digits).
    pub id: String,
    /// SHA-256 of the secret half, hex.
    pub secret_sha256: String,
    /// `agent` or `server`: the role the certificates it gets are for.
    pub role: String,
    /// Unix seconds after which it is refused.
    pub expires_at: u64,
    /// What it is for.
    #[serde(default)]
    pub description: String,
}

/// An API access key shoal issued: the id and secret an AWS profile holds (SigV4 signs with
/// the secret, so the servers keep it too), and the policy that says what it may do. Kept in
/// the replicated model (servers only: watch streams carry resources, never keys), so every
/// server verifies every key, and backed up with the model.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    /// The access key id (`SHOAL…`).
    pub id: String,
    /// The secret access key.
    pub secret: String,
    /// The policy document (IAM's JSON shape), checked before it is committed.
    pub policy: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// When it was created (Unix seconds, the proposer's clock).
    pub created_at: u64,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

/// What a command that succeeded answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// The resource as it is now (or was, for a delete). Boxed: resources are large.
    Resource(Box<Resource>),
    /// A restore replaced the model with this many resources.
    Restored {
        /// Resources in the restored model.
        resources: usize,
    },
    /// The answers of a batch, in the order of its commands.
    Batch(Vec<Outcome>),
    /// Access keys created or revoked, by id.
    AccessKeys {
        /// Their ids.
        ids: Vec<String>,
    },
    /// The cluster CA is in place (imported by this command, or already there).
    ClusterCa,
    /// The mesh CA is in place (made or rotated by this command, or already there).
    MeshCa,
    /// Join tokens created or revoked, by id.
    JoinTokens {
        /// Their ids.
        ids: Vec<String>,
    },
}

impl Reply {
    /// The resource, for commands that answer with one.
    pub fn into_resource(self) -> Option<Resource> {
        match self {
            Reply::Resource(r) => Some(*r),
            Reply::Restored { .. }
            | Reply::Batch(_)
            | Reply::AccessKeys { .. }
            | Reply::ClusterCa
            | Reply::MeshCa
            | Reply::JoinTokens { .. } => None,
        }
    }
}

/// What applying a command produced: the reply as the API returns it, or an error.
pub type Outcome = Result<Reply, ApiError>;

/// One change of the model, published to watchers in commit order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// A resource was created or replaced; this is its new state.
    Put(Resource),
    /// A resource was deleted; this was its last state.
    Delete(Resource),
}

impl Change {
    /// The resource the change is about.
    pub fn resource(&self) -> &Resource {
        match self {
            Change::Put(r) | Change::Delete(r) => r,
        }
    }
}

/// The result of [`Model::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The answer for the client.
    pub outcome: Outcome,
    /// The changes it made, in order (none for errors and idempotent replays; one for
    /// ordinary writes; many for a restore).
    pub changes: Vec<Change>,
}

/// The changes that turn `old` into `new`: deletions of what is gone and puts of what is
/// new or different, in key order. Used when a snapshot or a restore replaces a model, so
/// watchers can follow with ordinary changes.
pub fn diff(old: &Model, new: &Model) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut a = old.resources.values().peekable();
    let mut b = new.resources.values().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(x), None) => {
                changes.push(Change::Delete(Resource::clone(x)));
                a.next();
            }
            (None, Some(y)) => {
                changes.push(Change::Put(Resource::clone(y)));
                b.next();
            }
            (Some(x), Some(y)) => match x.key.cmp(&y.key) {
                std::cmp::Ordering::Less => {
                    changes.push(Change::Delete(Resource::clone(x)));
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    changes.push(Change::Put(Resource::clone(y)));
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if x != y {
                        changes.push(Change::Put(Resource::clone(y)));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    changes
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TokenRecord {
    key: ResourceKey,
    fingerprint: u64,
    at: f64,
}

/// Every resource of every mesh, at one revision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Snapshot", into = "Snapshot")]
pub struct Model {
    /// Behind `Arc`s: a model is cloned for every update an agent or a watcher publishes, and
    /// a clone then costs a pointer per resource, not a deep copy of every spec.
    resources: BTreeMap<ResourceKey, Arc<Resource>>,
    tokens: BTreeMap<String, TokenRecord>,
    /// API access keys by id (empty on agents' replicas).
    access_keys: BTreeMap<String, AccessKey>,
    /// The cluster CA (none on agents' replicas, or before one is imported).
    cluster_ca: Option<ClusterCa>,
    /// The mesh CA (none on agents' replicas, or before the first leader makes one).
    mesh_ca: Option<MeshCa>,
    /// Join tokens by id (empty on agents' replicas).
    join_tokens: BTreeMap<String, JoinToken>,
    revision: u64,
}

/// The serialized form of a [`Model`] (JSON maps need string keys, so resources are a list).
#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: u32,
    revision: u64,
    resources: Vec<Resource>,
    tokens: Vec<(String, TokenRecord)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    access_keys: Vec<AccessKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster_ca: Option<ClusterCa>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mesh_ca: Option<MeshCa>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    join_tokens: Vec<JoinToken>,
}

impl From<Model> for Snapshot {
    fn from(m: Model) -> Self {
        Snapshot {
            format: 1,
            revision: m.revision,
            resources: m
                .resources
                .into_values()
                .map(Arc::unwrap_or_clone)
                .collect(),
            tokens: m.tokens.into_iter().collect(),
            access_keys: m.access_keys.into_values().collect(),
            cluster_ca: m.cluster_ca,
            mesh_ca: m.mesh_ca,
            join_tokens: m.join_tokens.into_values().collect(),
        }
    }
}

impl From<Snapshot> for Model {
    fn from(s: Snapshot) -> Self {
        Model {
            resources: s
                .resources
                .into_iter()
                .map(|r| (r.key.clone(), Arc::new(r)))
                .collect(),
            tokens: s.tokens.into_iter().collect(),
            access_keys: s
                .access_keys
                .into_iter()
                .map(|k| (k.id.clone(), k))
                .collect(),
            cluster_ca: s.cluster_ca,
            mesh_ca: s.mesh_ca,
            join_tokens: s
                .join_tokens
                .into_iter()
                .map(|t| (t.id.clone(), t))
                .collect(),
            revision: s.revision,
        }
    }
}

/// FNV-1a: a stable hash (unlike `DefaultHasher`, fixed across builds and platforms), so
/// every replica computes the same client-token fingerprint.
fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

impl Model {
    /// The revision of the last change applied (the Raft log index that made it); 0 when empty.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// A replica of a server's model at `revision`, built from a watch snapshot. Client
    /// tokens are not part of watch streams: a replica never applies commands, only changes.
    pub fn from_resources(revision: u64, resources: impl IntoIterator<Item = Resource>) -> Model {
        Model {
            resources: resources
                .into_iter()
                .map(|r| (r.key.clone(), Arc::new(r)))
                .collect(),
            tokens: BTreeMap::new(),
            access_keys: BTreeMap::new(),
            cluster_ca: None,
            mesh_ca: None,
            join_tokens: BTreeMap::new(),
            revision,
        }
    }

    /// The access key `id`, if it exists.
    pub fn access_key(&self, id: &str) -> Option<&AccessKey> {
        self.access_keys.get(id)
    }

    /// The cluster CA, once imported.
    pub fn cluster_ca(&self) -> Option<&ClusterCa> {
        self.cluster_ca.as_ref()
    }

    /// The mesh CA, once the first leader made it.
    pub fn mesh_ca(&self) -> Option<&MeshCa> {
        self.mesh_ca.as_ref()
    }

    /// The join token `id`, if it exists (expired ones too: the caller checks the time).
    pub fn join_token(&self, id: &str) -> Option<&JoinToken> {
        self.join_tokens.get(id)
    }

    /// Every join token, by id.
    pub fn join_tokens(&self) -> impl Iterator<Item = &JoinToken> {
        self.join_tokens.values()
    }

    /// Every access key, by id.
    pub fn access_keys(&self) -> impl Iterator<Item = &AccessKey> {
        self.access_keys.values()
    }

    /// Applies the changes a server published at `revision` to a replica. Changes at or
    /// below the replica's revision are ignored, so replays after a reconnect are harmless.
    pub fn apply_changes(&mut self, revision: u64, changes: &[Change]) {
        if revision <= self.revision || changes.is_empty() {
            return;
        }
        for c in changes {
            match c {
                Change::Put(r) => {
                    self.resources.insert(r.key.clone(), Arc::new(r.clone()));
                }
                Change::Delete(r) => {
                    self.resources.remove(&r.key);
                }
            }
        }
        self.revision = revision;
    }

    /// Looks one resource up.
    pub fn get(&self, key: &ResourceKey) -> Option<&Resource> {
        self.resources.get(key).map(|r| &**r)
    }

    /// Every resource, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Resource> {
        self.resources.values().map(|r| &**r)
    }

    /// Number of resources of each kind.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        let mut c = BTreeMap::new();
        for k in self.resources.keys() {
            *c.entry(k.kind).or_insert(0) += 1;
        }
        c
    }

    /// One page of a list operation: up to `limit` resources of `kind` in `mesh` (under
    /// `parent` for routes and gateway routes; `mesh` is ignored for meshes), in name order,
    /// starting after the name `after`. Returns the page and the name to continue after, if
    /// more remain.
    pub fn page(
        &self,
        kind: Kind,
        mesh: &str,
        parent: &str,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<&Resource>, Option<String>) {
        let items: Box<dyn Iterator<Item = &Resource>> = if kind == Kind::Mesh {
            // Mesh keys sort by name first, so meshes are spread among their resources.
            Box::new(self.iter().filter(|r| r.key.kind == Kind::Mesh))
        } else {
            let start = ResourceKey::child(mesh, kind, parent, after.unwrap_or_default());
            let (mesh, parent) = (mesh.to_string(), parent.to_string());
            Box::new(
                self.resources
                    .range(start..)
                    .map(|(_, r)| &**r)
                    .take_while(move |r| {
                        r.key.kind == kind && r.key.mesh == mesh && r.key.parent == parent
                    }),
            )
        };
        let mut items = items.filter(|r| after.is_none_or(|a| r.key.name.as_str() > a));
        let page: Vec<&Resource> = items.by_ref().take(limit).collect();
        let next = match items.next() {
            Some(_) => page.last().map(|r| r.key.name.clone()),
            None => None,
        };
        (page, next)
    }

    /// Resources in `mesh` (other than the mesh itself).
    pub fn in_mesh<'a>(&'a self, mesh: &str) -> impl Iterator<Item = &'a Resource> + 'a {
        let start = ResourceKey::mesh(mesh);
        let mesh = mesh.to_string();
        self.resources
            .range(start..)
            .map(|(_, r)| &**r)
            .take_while(move |r| r.key.mesh == mesh)
            .filter(|r| r.key.kind != Kind::Mesh)
    }

    /// The resources of `kind` under `parent` in `mesh` (the routes of a router, the gateway
    /// routes of a gateway), in name order. A range of the key order, so it costs only what it
    /// returns: translation asks for every backend's routes, for every proxy.
    pub fn children<'a>(
        &'a self,
        mesh: &str,
        kind: Kind,
        parent: &str,
    ) -> impl Iterator<Item = &'a Resource> + 'a {
        let start = ResourceKey::child(mesh, kind, parent, "");
        let (mesh, parent) = (mesh.to_string(), parent.to_string());
        self.resources
            .range(start..)
            .map(|(_, r)| &**r)
            .take_while(move |r| r.key.mesh == mesh && r.key.kind == kind && r.key.parent == parent)
    }

    /// Checks that `spec` may be put at `key` against the current state: the mesh and parent
    /// exist, the resource exists or not as `mode` requires, and every reference resolves.
    /// Run by the proposer before commit and again, deterministically, at apply.
    pub fn check_put(&self, key: &ResourceKey, spec: &Spec, mode: PutMode) -> Result<(), ApiError> {
        if key.kind != Kind::Mesh && !self.resources.contains_key(&ResourceKey::mesh(&key.mesh)) {
            return Err(ApiError::not_found(format!("Mesh {} not found", key.mesh)));
        }
        if let Some(pk) = key.parent_key() {
            if !self.resources.contains_key(&pk) {
                return Err(ApiError::not_found(format!(
                    "{} {} not found in mesh {}",
                    pk.kind.title(),
                    pk.name,
                    pk.mesh
                )));
            }
        }
        match (mode, self.resources.contains_key(key)) {
            (PutMode::Create, true) => {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    format!("{} {} already exists", key.kind.title(), describe(key)),
                ))
            }
            (PutMode::Update, false) => {
                return Err(ApiError::not_found(format!(
                    "{} {} not found",
                    key.kind.title(),
                    describe(key)
                )))
            }
            _ => {}
        }
        check::references(self, key, spec)
    }

    /// Checks that `key` may be deleted: it exists and nothing refers to it.
    pub fn check_delete(&self, key: &ResourceKey) -> Result<(), ApiError> {
        if !self.resources.contains_key(key) {
            return Err(ApiError::not_found(format!(
                "{} {} not found",
                key.kind.title(),
                describe(key)
            )));
        }
        if let Some(user) = check::first_user(self, key) {
            return Err(ApiError::new(
                ErrorKind::ResourceInUse,
                format!(
                    "{} {} is in use by {} {}",
                    key.kind.title(),
                    describe(key),
                    user.kind.title().to_lowercase(),
                    describe(user)
                ),
            ));
        }
        Ok(())
    }

    /// Applies one committed command at Raft log index `index`. Deterministic.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Applied {
        let result = match cmd {
            Command::Put {
                key,
                spec,
                mode,
                tags,
                client_token,
                stamp,
            } => self.apply_put(key, spec, *mode, tags, client_token.as_deref(), stamp),
            Command::Delete { key } => self.check_delete(key).map(|()| {
                let r = Arc::unwrap_or_clone(self.resources.remove(key).expect("checked"));
                (r.clone(), Some(Change::Delete(r)))
            }),
            Command::Tag { key, tags } => self.apply_tags(key, |existing| {
                for t in tags {
                    match existing.iter_mut().find(|e| e.key == t.key) {
                        Some(e) => e.value = t.value.clone(),
                        None => existing.push(t.clone()),
                    }
                }
                if existing.len() > MAX_TAGS {
                    return Err(ApiError::new(
                        ErrorKind::TooManyTags,
                        format!("A resource can have at most {MAX_TAGS} tags"),
                    ));
                }
                Ok(())
            }),
            Command::Untag { key, keys } => self.apply_tags(key, |existing| {
                existing.retain(|t| !keys.contains(&t.key));
                Ok(())
            }),
            Command::Batch(cmds) => {
                let mut outcomes = Vec::with_capacity(cmds.len());
                let mut changes = Vec::new();
                for c in cmds {
                    if matches!(c, Command::Batch(_)) {
                        outcomes.push(Err(ApiError::bad_request("batches do not nest")));
                        continue;
                    }
                    let a = self.apply(index, c);
                    outcomes.push(a.outcome);
                    changes.extend(a.changes);
                }
                return Applied {
                    outcome: Ok(Reply::Batch(outcomes)),
                    changes,
                };
            }
            Command::BootstrapAccessKeys { keys } => {
                let outcome = if self.access_keys.is_empty() {
                    for k in keys {
                        self.access_keys.insert(k.id.clone(), k.clone());
                    }
                    Ok(Reply::AccessKeys {
                        ids: keys.iter().map(|k| k.id.clone()).collect(),
                    })
                } else {
                    Err(ApiError::new(
                        ErrorKind::Forbidden,
                        "The access keys were bootstrapped already; create more with a key \
                         allowed shoal:ManageAccessKeys",
                    ))
                };
                return Applied {
                    outcome,
                    changes: Vec::new(),
                };
            }
            Command::PutAccessKey { key } => {
                let outcome = if self.access_keys.contains_key(&key.id) {
                    Err(ApiError::new(
                        ErrorKind::Conflict,
                        format!("Access key {} exists already", key.id),
                    ))
                } else {
                    self.access_keys.insert(key.id.clone(), key.clone());
                    Ok(Reply::AccessKeys {
                        ids: vec![key.id.clone()],
                    })
                };
                return Applied {
                    outcome,
                    changes: Vec::new(),
                };
            }
            Command::ImportClusterCa { ca } => {
                if self.cluster_ca.is_none() {
                    self.cluster_ca = Some(ca.clone());
                }
                return Applied {
                    outcome: Ok(Reply::ClusterCa),
                    changes: Vec::new(),
                };
            }
            Command::InitMeshCa { ca } => {
                if self.mesh_ca.is_none() {
                    self.mesh_ca = Some(ca.clone());
                }
                return Applied {
                    outcome: Ok(Reply::MeshCa),
                    changes: Vec::new(),
                };
            }
            Command::RotateMeshCa {
                authority,
                overlap_until,
                now,
            } => {
                let outcome = match &mut self.mesh_ca {
                    None => Err(ApiError::not_found("This cluster has no mesh CA yet")),
                    Some(ca) => {
                        let old = std::mem::replace(&mut ca.signing, authority.clone());
                        if old.root_pem != ca.signing.root_pem {
                            ca.previous.push(TrustedRoot {
                                root_pem: old.root_pem,
                                trusted_until: *overlap_until,
                            });
                        }
                        let signing_root = ca.signing.root_pem.clone();
                        ca.previous
                            .retain(|r| r.trusted_until > *now && r.root_pem != signing_root);
                        Ok(Reply::MeshCa)
                    }
                };
                return Applied {
                    outcome,
                    changes: Vec::new(),
                };
            }
            Command::PutJoinToken { token } => {
                let outcome = if self.join_tokens.contains_key(&token.id) {
                    Err(ApiError::new(
                        ErrorKind::Conflict,
                        format!("Join token {} exists already", token.id),
                    ))
                } else {
                    self.join_tokens.insert(token.id.clone(), token.clone());
                    Ok(Reply::JoinTokens {
                        ids: vec![token.id.clone()],
                    })
                };
                return Applied {
                    outcome,
                    changes: Vec::new(),
                };
            }
            Command::RevokeJoinToken { id } => {
                let outcome = match self.join_tokens.remove(id) {
                    Some(_) => Ok(Reply::JoinTokens {
                        ids: vec![id.clone()],
                    }),
                    None => Err(ApiError::not_found(format!("Join token {id} not found"))),
                };
                return Applied {
                    outcome,
                    changes: Vec::new(),
                };
            }
            Command::RevokeAccessKey { id } => {
                let outcome = match self.access_keys.remove(id) {
                    Some(_) => Ok(Reply::AccessKeys {
                        ids: vec![id.clone()],
                    }),
                    None => Err(ApiError::not_found(format!("Access key {id} not found"))),
                };
                return Applied {
                    outcome,
                    changes: Vec::new(),
                };
            }
            Command::Restore { resources } => {
                let restored = Model::from_resources(self.revision, resources.iter().cloned());
                let changes = diff(self, &restored);
                self.resources = restored.resources;
                if !changes.is_empty() {
                    self.revision = self.revision.max(index);
                }
                return Applied {
                    outcome: Ok(Reply::Restored {
                        resources: self.resources.len(),
                    }),
                    changes,
                };
            }
        };
        match result {
            Ok((resource, change)) => {
                if change.is_some() {
                    self.revision = self.revision.max(index);
                }
                Applied {
                    outcome: Ok(Reply::Resource(Box::new(resource))),
                    changes: change.into_iter().collect(),
                }
            }
            Err(e) => Applied {
                outcome: Err(e),
                changes: Vec::new(),
            },
        }
    }

    fn apply_tags(
        &mut self,
        key: &ResourceKey,
        edit: impl FnOnce(&mut Vec<TagRef>) -> Result<(), ApiError>,
    ) -> Result<(Resource, Option<Change>), ApiError> {
        let r = self.resources.get(key).ok_or_else(|| {
            ApiError::not_found(format!("{} {} not found", key.kind.title(), describe(key)))
        })?;
        let mut tags = r.tags.clone();
        edit(&mut tags)?;
        if tags == r.tags {
            return Ok((Resource::clone(r), None));
        }
        let r = Arc::make_mut(self.resources.get_mut(key).expect("present"));
        r.tags = tags;
        Ok((r.clone(), Some(Change::Put(r.clone()))))
    }

    fn apply_put(
        &mut self,
        key: &ResourceKey,
        spec: &Spec,
        mode: PutMode,
        tags: &[TagRef],
        client_token: Option<&str>,
        stamp: &Stamp,
    ) -> Result<(Resource, Option<Change>), ApiError> {
        // Forget tokens past their window; the stamp's clock makes this deterministic.
        self.tokens
            .retain(|_, t| stamp.now - t.at < CLIENT_TOKEN_TTL_SECS);
        let fp = client_token.map(|_| {
            let body = serde_json::to_vec(&(key, spec, mode, tags)).expect("serializes");
            fingerprint(&body)
        });
        if let (Some(token), Some(fp)) = (client_token, fp) {
            if let Some(seen) = self.tokens.get(token) {
                if seen.fingerprint == fp && &seen.key == key {
                    // A retry of a request that already succeeded: answer it again.
                    if let Some(r) = self.resources.get(key) {
                        return Ok((Resource::clone(r), None));
                    }
                }
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    "The request uses a client token that was already used for a different request",
                ));
            }
        }
        self.check_put(key, spec, mode)?;
        if tags.len() > MAX_TAGS {
            return Err(ApiError::new(
                ErrorKind::TooManyTags,
                format!("A resource can have at most {MAX_TAGS} tags"),
            ));
        }
        let resource = match self.resources.get(key) {
            Some(old) => Resource {
                key: key.clone(),
                spec: spec.clone(),
                meta: Metadata {
                    version: old.meta.version + 1,
                    last_updated_at: stamp.now,
                    ..old.meta.clone()
                },
                tags: old.tags.clone(),
            },
            None => {
                let mesh_owner = match key.kind {
                    Kind::Mesh => stamp.account.clone(),
                    _ => self
                        .resources
                        .get(&ResourceKey::mesh(&key.mesh))
                        .map(|m| m.meta.mesh_owner.clone())
                        .unwrap_or_else(|| stamp.account.clone()),
                };
                Resource {
                    key: key.clone(),
                    spec: spec.clone(),
                    meta: Metadata {
                        arn: format!(
                            "arn:aws:appmesh:{}:{}:{}",
                            stamp.region,
                            mesh_owner,
                            key.arn_resource()
                        ),
                        uid: stamp.uid.clone(),
                        version: 1,
                        created_at: stamp.now,
                        last_updated_at: stamp.now,
                        mesh_owner,
                        resource_owner: stamp.account.clone(),
                    },
                    tags: tags.to_vec(),
                }
            }
        };
        if let (Some(token), Some(fp)) = (client_token, fp) {
            self.tokens.insert(
                token.to_string(),
                TokenRecord {
                    key: key.clone(),
                    fingerprint: fp,
                    at: stamp.now,
                },
            );
        }
        self.resources
            .insert(key.clone(), Arc::new(resource.clone()));
        Ok((resource.clone(), Some(Change::Put(resource))))
    }
}

/// `name` for meshes, `name in mesh m` (or `name of router r in mesh m`) otherwise.
pub(crate) fn describe(key: &ResourceKey) -> String {
    match key.kind {
        Kind::Mesh => key.name.clone(),
        Kind::Route | Kind::GatewayRoute => format!(
            "{} of {} {} in mesh {}",
            key.name,
            key.kind
                .parent()
                .expect("child kind")
                .title()
                .to_lowercase(),
            key.parent,
            key.mesh
        ),
        _ => format!("{} in mesh {}", key.name, key.mesh),
    }
}
