//! The KV caches of conversations that are not running now, kept in host memory within a budget
//! so that switching back to one restores its cache instead of prefilling its whole history.
//!
//! The engine has one live cache (the backend's). When another conversation's turn comes
//! ([`crate::Engine::use_cache_of`]), the live cache is copied out ([`KvSnapshot`], positions and
//! tokens) and kept here under the conversation it belonged to, and the new conversation's
//! snapshot, if one is kept, is written back into the backend: its next answer prefills only
//! the tokens after it. A conversation is either live or kept, never both. Past the budget the
//! least recently used snapshots go first; a snapshot larger than the whole budget is not kept.

use std::collections::VecDeque;

use crate::backend::KvSnapshot;

/// Snapshots by conversation, most recently used first, at most `budget` bytes in all.
#[derive(Default)]
pub struct KeptCaches {
    budget: usize,
    entries: VecDeque<(String, KvSnapshot)>,
}

impl KeptCaches {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            entries: VecDeque::new(),
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Sets the budget, dropping the least recently used snapshots beyond it.
    pub fn set_budget(&mut self, bytes: usize) {
        self.budget = bytes;
        self.fit(0);
    }

    /// Takes `conversation`'s snapshot out, if kept.
    pub fn take(&mut self, conversation: &str) -> Option<KvSnapshot> {
        let i = self.entries.iter().position(|(k, _)| k == conversation)?;
        self.entries.remove(i).map(|(_, s)| s)
    }

    /// Keeps `snapshot` as `conversation`'s (the most recent), dropping the least recently used
    /// ones it does not fit beside. Returns whether it was kept (not when larger than the
    /// budget).
    pub fn keep(&mut self, conversation: String, snapshot: KvSnapshot) -> bool {
        self.take(&conversation);
        let bytes = snapshot.bytes();
        if bytes > self.budget {
            return false;
        }
        self.fit(bytes);
        self.entries.push_front((conversation, snapshot));
        true
    }

    /// Drops the least recently used snapshots until `more` bytes fit in the budget.
    fn fit(&mut self, more: usize) {
        while self.bytes() + more > self.budget {
            if self.entries.pop_back().is_none() {
                break;
            }
        }
    }

    /// Bytes of the snapshots kept.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|(_, s)| s.bytes()).sum()
    }

    /// The conversations kept, most recent first.
    pub fn conversations(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::HostRows;

    /// A snapshot of `bytes` bytes (F32 rows of 4 bytes, and no tokens, which count too).
    fn snap(bytes: usize) -> KvSnapshot {
        KvSnapshot::new(
            Vec::new(),
            vec![(
                HostRows::F32(vec![0.0; bytes / 4]),
                HostRows::F32(Vec::new()),
            )],
        )
    }

    #[test]
    fn the_least_recently_used_go_first_and_the_budget_holds() {
        let mut kept = KeptCaches::new(100);
        assert!(kept.keep("a".into(), snap(40)));
        assert!(kept.keep("b".into(), snap(40)));
        assert_eq!(kept.conversations().collect::<Vec<_>>(), ["b", "a"]);
        // c needs room: a, the least recently used, goes.
        assert!(kept.keep("c".into(), snap(40)));
        assert_eq!(kept.conversations().collect::<Vec<_>>(), ["c", "b"]);
        assert_eq!(kept.bytes(), 80);
        // Taking b out and keeping it again makes it the most recent.
        let b = kept.take("b").expect("b is kept");
        assert!(kept.take("b").is_none(), "a snapshot is taken once");
        kept.keep("b".into(), b);
        kept.keep("d".into(), snap(40));
        assert_eq!(kept.conversations().collect::<Vec<_>>(), ["d", "b"]);
        // Larger than the whole budget: not kept, and nothing else dropped for it.
        assert!(!kept.keep("huge".into(), snap(400)));
        assert_eq!(kept.conversations().collect::<Vec<_>>(), ["d", "b"]);
        // A smaller budget drops from the old end; zero keeps nothing.
        kept.set_budget(50);
        assert_eq!(kept.conversations().collect::<Vec<_>>(), ["d"]);
        kept.set_budget(0);
        assert_eq!(kept.bytes(), 0);
        assert!(!kept.keep("e".into(), snap(4)));
    }
}
