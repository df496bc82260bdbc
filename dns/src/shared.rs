//! [`SharedView`]: the view shared between whoever updates it (the agent) and the DNS server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::answer::DnsView;

/// The view shared between whoever updates it and the DNS server. Cheap to clone; clones share
/// the view.
///
/// Why not a plain `Arc<RwLock<DnsView>>`: the server caches encoded answers and must know when
/// the view changed without taking a lock on every query. Every [`replace`](Self::replace) and
/// [`update`](Self::update) bumps a version counter that the server reads with one atomic load;
/// the lock is taken only on a cache miss, and only long enough to clone an `Arc`.
#[derive(Clone, Default)]
pub struct SharedView {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    current: RwLock<Arc<DnsView>>,
    version: AtomicU64,
}

impl SharedView {
    /// A shared view holding `view`.
    pub fn new(view: DnsView) -> Self {
        Self {
            inner: Arc::new(Inner {
                current: RwLock::new(Arc::new(view)),
                version: AtomicU64::new(1),
            }),
        }
    }

    /// The current view. Readers keep it as long as they like without holding up writers.
    pub fn load(&self) -> Arc<DnsView> {
        self.load_versioned().1
    }

    /// The current view together with its version (see [`version`](Self::version)).
    pub(crate) fn load_versioned(&self) -> (u64, Arc<DnsView>) {
        let guard = self.inner.current.read().unwrap_or_else(|e| e.into_inner());
        // Writers bump the version while holding the write lock, so under the read lock the
        // pair is consistent.
        (self.inner.version.load(Ordering::Acquire), guard.clone())
    }

    /// Replaces the whole view (e.g. one rebuilt from a new model revision). Queries in flight
    /// finish on the old view; later ones see the new one. A view that answers everything as
    /// the current one does is dropped, so that rebuilding on every event keeps the answer
    /// cache warm; otherwise its SOA serial is moved past the current one so it keeps growing.
    /// Returns whether the view changed.
    pub fn replace(&self, mut view: DnsView) -> bool {
        let mut guard = self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if guard.same_content(&view) {
            return false;
        }
        view.follow_serial(guard.serial());
        *guard = Arc::new(view);
        self.inner.version.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Edits the view in place (e.g. one name's endpoints after a health change) and returns
    /// what `f` returns. Queries that miss the cache wait while `f` runs, so keep it short; build
    /// large changes into a new view and [`replace`](Self::replace) it. The view is copied
    /// first only if a query is still reading the current one.
    pub fn update<R>(&self, f: impl FnOnce(&mut DnsView) -> R) -> R {
        let mut guard = self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let r = f(Arc::make_mut(&mut guard));
        self.inner.version.fetch_add(1, Ordering::AcqRel);
        r
    }

    /// A number that changes whenever the view may have changed (every `replace` and `update`).
    /// One atomic load: the server checks it on every query to invalidate its answer cache.
    pub fn version(&self) -> u64 {
        self.inner.version.load(Ordering::Acquire)
    }
}

impl From<DnsView> for SharedView {
    fn from(view: DnsView) -> Self {
        Self::new(view)
    }
}

impl std::fmt::Debug for SharedView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedView")
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_moves_on_every_change() {
        let shared = SharedView::new(DnsView::new(vec!["ns.local".into()]));
        let v0 = shared.version();
        let held = shared.load();
        shared.update(|v| v.insert("a.ns.local", Vec::new()));
        assert!(shared.version() > v0);
        // The reader's copy is untouched; the shared one changed.
        assert_eq!(held.serial() + 1, shared.load().serial());
        let v1 = shared.version();
        let s1 = shared.load().serial();
        assert!(shared.replace(DnsView::new(vec!["other.local".into()])));
        assert!(shared.version() > v1);
        let (v, view) = shared.load_versioned();
        assert_eq!(v, shared.version());
        assert_eq!(
            view.serial(),
            s1 + 1,
            "the serial keeps growing across replace"
        );

        // The same content again: nothing changes, the cache stays valid.
        assert!(!shared.replace(DnsView::new(vec!["other.local".into()])));
        assert_eq!(shared.version(), v);
        assert_eq!(shared.load().serial(), s1 + 1);
    }
}
