//! Generates the tonic clients of the two etcd v3 gRPC services the benchmarks call:
//! `etcdserverpb.KV` (Put, Range) and `etcdserverpb.Maintenance` (Status, for the leader).
//!
//! Declared here in Rust (tonic-build's `manual` builder, as `raft/build.rs` does) rather
//! than compiled from etcd's `rpc.proto`, so building the benchmarks needs no `protoc`; the
//! few messages they use are hand-written prost structs in `src/etcd.rs`, field numbers as
//! in etcd's `api/etcdserverpb/rpc.proto` and `api/mvccpb/kv.proto`.

use tonic_build::manual::{Builder, Method, Service};

fn unary(name: &str, route: &str, input: &str, output: &str) -> Method {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(format!("crate::etcd::pb::{input}"))
        .output_type(format!("crate::etcd::pb::{output}"))
        .codec_path("tonic_prost::ProstCodec")
        .build()
}

fn main() {
    let kv = Service::builder()
        .name("KV")
        .package("etcdserverpb")
        .comment("etcd's key-value service (the two calls the benchmarks make).")
        .method(unary("put", "Put", "PutRequest", "PutResponse"))
        .method(unary("range", "Range", "RangeRequest", "RangeResponse"))
        .build();
    let maintenance = Service::builder()
        .name("Maintenance")
        .package("etcdserverpb")
        .comment("etcd's maintenance service (member status: its id, the leader's, its index).")
        .method(unary("status", "Status", "StatusRequest", "StatusResponse"))
        .build();
    // Clients only: the benchmarks serve nothing.
    Builder::new()
        .build_server(false)
        .compile(&[kv, maintenance]);
    println!("cargo:rerun-if-changed=build.rs");
}
