//! The UDP answer cache: encoded responses keyed by the lowercased question and the request
//! bits that shape the response, valid for one version of the view.

use std::collections::HashMap;

/// What a cached response was, so that a hit counts like the slow path would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Answered from the view (records or NODATA).
    Answered,
    /// Answered from the view with NXDOMAIN.
    NxDomain,
    /// REFUSED.
    Refused,
    /// Anything else (NOTIMP, FORMERR, SERVFAIL): not cached.
    Other,
}

/// One cached response, as sent to the query that filled it.
pub(crate) struct Entry {
    pub bytes: Box<[u8]>,
    pub kind: Kind,
}

/// Bounded map from key to response. When it is full it is emptied: the working set of a mesh
/// (names × a few types) is small, and a flood of distinct names would miss anyway.
pub(crate) struct Cache {
    map: HashMap<Box<[u8]>, Entry>,
    version: u64,
    max_entries: usize,
    bytes: usize,
    max_bytes: usize,
}

impl Cache {
    /// A cache of at most `max_entries` responses (0: disabled) and 4 KiB per entry on average.
    pub fn new(max_entries: usize) -> Self {
        Self {
            map: HashMap::new(),
            version: 0,
            max_entries,
            bytes: 0,
            max_bytes: max_entries.saturating_mul(4096),
        }
    }

    /// Whether the cache is used at all.
    pub fn enabled(&self) -> bool {
        self.max_entries > 0
    }

    /// Empties the cache if the view's version moved since it was filled.
    pub fn sync(&mut self, version: u64) {
        if version != self.version {
            self.clear();
            self.version = version;
        }
    }

    /// The view version the cached responses belong to.
    pub fn version(&self) -> u64 {
        self.version
    }

    fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }

    /// The response cached for `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.map.get(key)
    }

    /// Caches `bytes` for `key` if it was computed from the view at the cache's version.
    pub fn insert(&mut self, key: &[u8], version: u64, bytes: &[u8], kind: Kind) {
        if !self.enabled() || version != self.version || kind == Kind::Other {
            return;
        }
        if self.map.len() >= self.max_entries || self.bytes + bytes.len() > self.max_bytes {
            self.clear();
        }
        self.bytes += bytes.len();
        let old = self.map.insert(
            key.into(),
            Entry {
                bytes: bytes.into(),
                kind,
            },
        );
        if let Some(old) = old {
            self.bytes -= old.bytes.len();
        }
    }

    /// Number of cached responses.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_versioned() {
        let mut c = Cache::new(2);
        c.sync(1);
        c.insert(b"a", 1, b"x", Kind::Answered);
        c.insert(b"b", 0, b"x", Kind::Answered); // stale version: ignored
        c.insert(b"c", 1, b"x", Kind::Other); // not cacheable
        assert_eq!(c.len(), 1);
        c.insert(b"b", 1, b"y", Kind::NxDomain);
        c.insert(b"c", 1, b"z", Kind::Refused); // full: emptied first
        assert_eq!(c.len(), 1);
        assert_eq!(&*c.get(b"c").unwrap().bytes, b"z");
        c.sync(2);
        assert!(c.get(b"c").is_none());
        assert!(!Cache::new(0).enabled());
    }
}
