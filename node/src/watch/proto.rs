//! Wire messages of shoal's gRPC services. Payloads are the model's own JSON (a
//! compatibility contract shared with the Raft log), framed by a few protobuf fields.

/// `Watch(from_revision)`: 0 asks for a full snapshot; a revision the server still has in
/// its history resumes right after it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchRequest {
    /// Last revision the watcher has applied (0: none).
    #[prost(uint64, tag = "1")]
    pub from_revision: u64,
}

/// One message of a watch stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchResponse {
    /// What the payload is: see the `KIND_*` constants.
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    /// The revision this message brings the watcher to (for snapshot parts: the snapshot's).
    #[prost(uint64, tag = "2")]
    pub revision: u64,
    /// JSON: an array of resources (snapshot part) or of changes (changes); empty for progress.
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    /// On snapshot parts: this is the last part.
    #[prost(bool, tag = "4")]
    pub last: bool,
}

/// Part of a full snapshot; the watcher replaces its model when the last part arrives.
pub const KIND_SNAPSHOT_PART: u32 = 1;
/// The changes of one revision.
pub const KIND_CHANGES: u32 = 2;
/// No change, but the server is alive and at this revision.
pub const KIND_PROGRESS: u32 = 3;

/// Generated client and server stubs.
pub mod watch {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/shoal.v1.Watch.rs"));
}
