//! Generates the tonic client and server of the `shoal.raft.v1.Raft` gRPC service.
//!
//! The service is declared here in Rust (tonic-build's `manual` builder) rather than in a
//! `.proto` file, so building shoal needs no `protoc`. Its one message type,
//! `crate::proto::RaftMessage`, is a hand-written prost struct.

use tonic_build::manual::{Builder, Method, Service};

fn unary(name: &str, route: &str) -> Method {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type("crate::proto::RaftMessage")
        .output_type("crate::proto::RaftMessage")
        .codec_path("tonic_prost::ProstCodec")
        .build()
}

fn main() {
    let service = Service::builder()
        .name("Raft")
        .package("shoal.raft.v1")
        .comment("Raft RPC between shoal servers.")
        .method(unary("append_entries", "AppendEntries"))
        .method(unary("vote", "Vote"))
        .method(unary("install_snapshot", "InstallSnapshot"))
        .build();
    Builder::new().compile(&[service]);
    println!("cargo:rerun-if-changed=build.rs");
}
