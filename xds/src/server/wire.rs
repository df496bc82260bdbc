//! Responses as they go on the wire, encoded straight from the shared resources.
//!
//! `DiscoveryResponse` and `DeltaDiscoveryResponse` own their resources (`Vec<Any>`), so
//! building one means copying every resource's bytes before encoding copies them again. These
//! types hold the `Arc<Resource>`s instead and write the same protobuf fields, so a response is
//! copied once, into the frame that goes to HTTP/2, and a queued response costs a pointer per
//! resource. Only encoding is needed (the server never decodes its own responses).

use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{
    encode_key, encode_varint, encoded_len_varint, key_len, message, skip_field, string,
    DecodeContext, WireType,
};
use prost::{DecodeError, Message};

use crate::snapshot::Resource;

/// `envoy.service.discovery.v3.DiscoveryResponse` (fields 1, 2, 4, 5).
#[derive(Debug, Default, Clone)]
pub(crate) struct SotwResponse {
    pub version_info: String,
    pub resources: Vec<Arc<Resource>>,
    pub type_url: String,
    pub nonce: String,
}

/// `envoy.service.discovery.v3.DeltaDiscoveryResponse` (fields 1, 2, 4, 5, 6), its resources as
/// `envoy.service.discovery.v3.Resource` (fields 1 version, 2 resource, 3 name).
#[derive(Debug, Default, Clone)]
pub(crate) struct DeltaResponse {
    pub system_version_info: String,
    pub resources: Vec<Arc<Resource>>,
    pub type_url: String,
    pub removed_resources: Vec<String>,
    pub nonce: String,
}

fn str_len(tag: u32, s: &String) -> usize {
    if s.is_empty() {
        0
    } else {
        string::encoded_len(tag, s)
    }
}

fn put_str(tag: u32, s: &String, buf: &mut impl BufMut) {
    if !s.is_empty() {
        string::encode(tag, s, buf);
    }
}

/// Length of one delta `Resource` body (without its key and length).
fn delta_resource_len(r: &Resource) -> usize {
    str_len(1, &r.version) + message::encoded_len(2, &r.any) + str_len(3, &r.name)
}

impl Message for SotwResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_str(1, &self.version_info, buf);
        for r in &self.resources {
            message::encode(2, &r.any, buf);
        }
        put_str(4, &self.type_url, buf);
        put_str(5, &self.nonce, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        str_len(1, &self.version_info)
            + self
                .resources
                .iter()
                .map(|r| message::encoded_len(2, &r.any))
                .sum::<usize>()
            + str_len(4, &self.type_url)
            + str_len(5, &self.nonce)
    }

    fn clear(&mut self) {
        *self = SotwResponse::default();
    }
}

impl Message for DeltaResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_str(1, &self.system_version_info, buf);
        for r in &self.resources {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(delta_resource_len(r) as u64, buf);
            put_str(1, &r.version, buf);
            message::encode(2, &r.any, buf);
            put_str(3, &r.name, buf);
        }
        put_str(4, &self.type_url, buf);
        put_str(5, &self.nonce, buf);
        for n in &self.removed_resources {
            string::encode(6, n, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        str_len(1, &self.system_version_info)
            + self
                .resources
                .iter()
                .map(|r| {
                    let len = delta_resource_len(r);
                    key_len(2) + encoded_len_varint(len as u64) + len
                })
                .sum::<usize>()
            + str_len(4, &self.type_url)
            + str_len(5, &self.nonce)
            + string::encoded_len_repeated(6, &self.removed_resources)
    }

    fn clear(&mut self) {
        *self = DeltaResponse::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource as WireResource,
    };

    fn resources() -> Vec<Arc<Resource>> {
        ["a", "bb"]
            .into_iter()
            .map(|n| {
                Arc::new(Resource::new(
                    n,
                    &Cluster {
                        name: n.into(),
                        ..Default::default()
                    },
                ))
            })
            .collect()
    }

    #[test]
    fn same_bytes_as_the_generated_messages() {
        let rs = resources();
        let ours = SotwResponse {
            version_info: "v1".into(),
            resources: rs.clone(),
            type_url: "t".into(),
            nonce: "7".into(),
        };
        let theirs = DiscoveryResponse {
            version_info: "v1".into(),
            resources: rs.iter().map(|r| r.any.clone()).collect(),
            type_url: "t".into(),
            nonce: "7".into(),
            ..Default::default()
        };
        assert_eq!(ours.encoded_len(), theirs.encoded_len());
        assert_eq!(ours.encode_to_vec(), theirs.encode_to_vec());

        let ours = DeltaResponse {
            system_version_info: "v2".into(),
            resources: rs.clone(),
            type_url: "t".into(),
            removed_resources: vec!["x".into(), "y".into()],
            nonce: "8".into(),
        };
        let theirs = DeltaDiscoveryResponse {
            system_version_info: "v2".into(),
            resources: rs
                .iter()
                .map(|r| WireResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.any.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: "t".into(),
            removed_resources: vec!["x".into(), "y".into()],
            nonce: "8".into(),
            ..Default::default()
        };
        assert_eq!(ours.encoded_len(), theirs.encoded_len());
        assert_eq!(ours.encode_to_vec(), theirs.encode_to_vec());

        let empty = DeltaResponse::default();
        assert_eq!(
            empty.encode_to_vec(),
            DeltaDiscoveryResponse::default().encode_to_vec()
        );
    }
}
