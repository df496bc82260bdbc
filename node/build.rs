//! Generates the gRPC stubs of shoal's own services with tonic-build's manual builder (no
//! protoc): the messages are hand-written prost structs in `src/watch/proto.rs`.

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
    tonic_build::manual::Builder::new().compile(&[watch]);
    println!("cargo:rerun-if-changed=build.rs");
}
