//! The encoding of snapshots (in their files and on the wire): a JSON record
//! `{"format": N, "value": …}`.
//!
//! JSON because the model's types skip absent members when serialized (only a self-describing
//! format reads that back), and a format number so that a later version of shoal can tell old
//! records from new ones instead of misreading them.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The record format this build writes and reads. 2 since elections became single-term
/// (openraft's `single-term-leader`): votes and log ids no longer carry the leader's node id in
/// their leader id, and a format-1 vote would be misread as a vote for nobody.
pub(crate) const FORMAT: u32 = 2;

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
    /// Not JSON, or not the expected shape.
    #[error("malformed record: {0}")]
    Json(#[from] serde_json::Error),
    /// Written by a version of shoal that uses another record format.
    #[error("record format {found} is not supported (this build reads format {FORMAT})")]
    Format {
        /// The format number found in the record.
        found: u32,
    },
}

/// Encodes `value` as a record of the current format.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(serde_json::to_vec(&RecordRef {
        format: FORMAT,
        value,
    })?)
}

/// Decodes a record, checking its format.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match serde_json::from_slice::<Record<T>>(bytes) {
        Ok(r) if r.format == FORMAT => Ok(r.value),
        Ok(r) => Err(CodecError::Format { found: r.format }),
        Err(e) => match serde_json::from_slice::<Header>(bytes) {
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

    #[test]
    fn round_trip_and_format_check() {
        let bytes = encode(&vec![1u64, 2]).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"format":2,"value":[1,2]}"#
        );
        assert_eq!(decode::<Vec<u64>>(&bytes).unwrap(), vec![1, 2]);
        let future = br#"{"format":3,"value":{"other":"shape"}}"#;
        assert!(matches!(
            decode::<Vec<u64>>(future),
            Err(CodecError::Format { found: 3 })
        ));
        // Format 1 (before single-term elections) is refused, not misread.
        let old = br#"{"format":1,"value":{"leader_id":{"term":2,"node_id":3},"committed":true}}"#;
        assert!(matches!(
            decode::<Vec<u64>>(old),
            Err(CodecError::Format { found: 1 })
        ));
        assert!(matches!(
            decode::<Vec<u64>>(b"garbage"),
            Err(CodecError::Json(_))
        ));
    }
}
