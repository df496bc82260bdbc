//! The binary encoding of everything the Raft layer stores or sends: log records (entries,
//! votes, committed ids, truncations), snapshot metadata and data, and Raft RPC payloads.
//!
//! MessagePack with named fields (rmp-serde's `to_vec_named`), not bincode: the model's types
//! skip absent members when serialized (`skip_serializing_if`, so that the App Mesh API's JSON
//! leaves them out, one definition per type), and only a self-describing format reads such a
//! struct back. MessagePack is that, binary, and about half the size of the JSON it replaced.
//! Snapshots are a record `{"format": N, "value": …}`, so that a later version of shoal can tell
//! old records from new ones instead of misreading them; log records need no number of their
//! own: the store's format (`store_dir`) covers them, and an older store is refused whole.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The record format this build writes and reads. 3 since records are MessagePack (2 was
/// JSON); 2 since elections became single-term (openraft's `single-term-leader`): votes and
/// log ids no longer carry the leader's node id in their leader id, and a format-1 vote would
/// be misread as a vote for nobody.
pub(crate) const FORMAT: u32 = 3;

#[derive(Serialize)]
struct RecordRef<'a, T> {
    format: u32,
    value: &'a T,
}

#[derive(Deserialize)]
struct Record<T> {
    format: u32,
    value: T,
}

#[derive(Deserialize)]
struct Header {
    format: u32,
}

/// Why a stored record could not be written or read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    /// Not MessagePack, or not the expected shape.
    #[error("malformed record: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// A value that MessagePack cannot hold.
    #[error("cannot encode the record: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// Written by a version of shoal that uses another record format.
    #[error("record format {found} is not supported (this build reads format {FORMAT})")]
    Format {
        /// The format number found in the record.
        found: u32,
    },
}

/// Encodes `value` as a record of the current format.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(to_bytes(&RecordRef {
        format: FORMAT,
        value,
    })?)
}

/// `value` in the binary encoding (no format number: for log records and RPC payloads).
pub(crate) fn to_bytes<T: Serialize + ?Sized>(
    value: &T,
) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(value)
}

/// A value [`to_bytes`] wrote.
pub(crate) fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

/// Decodes a record, checking its format.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match from_bytes::<Record<T>>(bytes) {
        Ok(r) if r.format == FORMAT => Ok(r.value),
        Ok(r) => Err(CodecError::Format { found: r.format }),
        Err(e) => match from_bytes::<Header>(bytes) {
            // A record of another format may have another shape: say so rather than
            // reporting a confusing shape error.
            Ok(h) if h.format != FORMAT => Err(CodecError::Format { found: h.format }),
            _ => Err(e.into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Other<'a> {
        format: u32,
        value: &'a str,
    }

    #[test]
    fn round_trip_and_format_check() {
        let bytes = encode(&vec![1u64, 2]).unwrap();
        // A map of two named members: {"format": 3, "value": [1, 2]}.
        assert_eq!(
            bytes,
            [
                0x82, 0xa6, b'f', b'o', b'r', b'm', b'a', b't', 0x03, 0xa5, b'v', b'a', b'l', b'u',
                b'e', 0x92, 0x01, 0x02
            ]
        );
        assert_eq!(decode::<Vec<u64>>(&bytes).unwrap(), vec![1, 2]);
        let future = to_bytes(&Other {
            format: 4,
            value: "another shape",
        })
        .unwrap();
        assert!(matches!(
            decode::<Vec<u64>>(&future),
            Err(CodecError::Format { found: 4 })
        ));
        // The JSON records of format 2 and 1 are refused, not misread.
        let old = br#"{"format":2,"value":[1,2]}"#;
        assert!(matches!(
            decode::<Vec<u64>>(old),
            Err(CodecError::Decode(_))
        ));
        assert!(matches!(
            decode::<Vec<u64>>(b"garbage"),
            Err(CodecError::Decode(_))
        ));
    }

    /// A model value whose absent members are skipped reads back as it was: why the encoding
    /// is self-describing.
    #[test]
    fn skipped_members_round_trip() {
        let spec: shoal_model::api::VirtualNodeSpec = serde_json::from_value(serde_json::json!({
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": "red.colorapp.local"}}
        }))
        .unwrap();
        let cmd = shoal_model::Command::Put {
            key: shoal_model::ResourceKey::mesh("m"),
            spec: Box::new(shoal_model::Spec::VirtualNode(spec)),
            mode: shoal_model::PutMode::Create,
            tags: vec![],
            client_token: None,
            stamp: shoal_model::Stamp {
                now: 1.5,
                uid: "u".into(),
                account: "123456789012".into(),
                region: "us-east-1".into(),
            },
        };
        let bytes = to_bytes(&cmd).unwrap();
        let json = serde_json::to_vec(&cmd).unwrap();
        assert!(
            bytes.len() < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
        let back: shoal_model::Command = from_bytes(&bytes).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&cmd).unwrap()
        );
    }
}
