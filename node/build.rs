//! Generates the gRPC stubs of shoal's own services with tonic-build's manual builder (no
//! protoc): the messages are hand-written prost structs in `src/watch/proto.rs` and
//! `src/server/rpc.rs`.

fn main() {
    let watch = tonic_build::manual::Service::builder()
        .name("Watch")
        .package("shoal.v1")
        .comment("Streams the model: a snapshot, then every change in commit order.")
        .method(
            tonic_build::manual::Method::builder()
                .name("watch")
                .route_name("Watch")
                .input_type("crate::watch::proto::WatchRequest")
                .output_type("crate::watch::proto::WatchResponse")
                .codec_path("tonic_prost::ProstCodec")
                .server_streaming()
                .build(),
        )
        .build();
    let unary = |name: &str, route: &str, input: &str, output: &str| {
        tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(output)
            .codec_path("tonic_prost::ProstCodec")
            .build()
    };
    let forward = tonic_build::manual::Service::builder()
        .name("Forward")
        .package("shoal.v1")
        .comment("What a follower asks of the leader: commits, read indexes, membership removals.")
        .method(unary(
            "commit",
            "Commit",
            "crate::server::rpc::CommitRequest",
            "crate::server::rpc::CommitReply",
        ))
        .method(unary(
            "read_index",
            "ReadIndex",
            "crate::server::rpc::ReadIndexRequest",
            "crate::server::rpc::ReadIndexReply",
        ))
        .method(unary(
            "remove_server",
            "RemoveServer",
            "crate::server::rpc::RemoveServerRequest",
            "crate::server::rpc::RemoveServerReply",
        ))
        .build();
    let mesh_ca = tonic_build::manual::Service::builder()
        .name("MeshCa")
        .package("shoal.v1")
        .comment("Workload certificates for the proxies an agent serves, signed by the mesh CA.")
        .method(unary(
            "sign_workload",
            "SignWorkload",
            "crate::watch::ca::SignRequest",
            "crate::watch::ca::SignReply",
        ))
        .method(unary(
            "trust_bundle",
            "TrustBundle",
            "crate::watch::ca::TrustBundleRequest",
            "crate::watch::ca::TrustBundleReply",
        ))
        .build();
    tonic_build::manual::Builder::new().compile(&[watch, forward, mesh_ca]);
    println!("cargo:rerun-if-changed=build.rs");
}
