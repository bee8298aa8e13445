//! The BPE merge loop of llama.cpp (`llm_tokenizer_bpe_session::tokenize` in
//! `src/llama-vocab.cpp`): a word starts as one symbol per character; the neighbouring pair with
//! the lowest merge rank is merged, the leftmost one among equal ranks, until no pair has a rank.
//! Ranks belong to pairs of strings, so a merge may produce a string that is not in the
//! vocabulary and still take part in later merges; the vocabulary lookup happens afterwards.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Merge ranks from `tokenizer.ggml.merges`: a merge's rank is its position in the list.
#[derive(Debug, Clone, Default)]
pub(super) struct Merges {
    /// Every string that appears on either side of a merge, numbered, so that a pair's rank is
    /// found from two slice lookups without building the pair's strings.
    parts: HashMap<String, u32>,
    ranks: HashMap<(u32, u32), u32>,
}

impl Merges {
    /// Ranks the pairs in order. `None` entries (unparseable merges) keep their position, so the
    /// ranks of the following ones stay those llama.cpp gives them.
    pub(super) fn new(pairs: impl IntoIterator<Item = Option<(String, String)>>) -> Self {
        let mut merges = Self::default();
        for (rank, pair) in (0u32..).zip(pairs) {
            let Some((left, right)) = pair else { continue };
            let l = merges.intern(left);
            let r = merges.intern(right);
            // The first occurrence of a duplicated merge keeps its rank, as in llama.cpp.
            merges.ranks.entry((l, r)).or_insert(rank);
        }
        merges
    }

    fn intern(&mut self, part: String) -> u32 {
        let next = u32::try_from(self.parts.len()).unwrap_or(u32::MAX);
        *self.parts.entry(part).or_insert(next)
    }

    pub(super) fn len(&self) -> usize {
        self.ranks.len()
    }

    fn rank(&self, left: &str, right: &str) -> Option<u32> {
        let l = *self.parts.get(left)?;
        let r = *self.parts.get(right)?;
        self.ranks.get(&(l, r)).copied()
    }

    /// Merges `word` as far as the ranks allow and returns the resulting pieces in order.
    pub(super) fn apply<'w>(&self, word: &'w str) -> Vec<&'w str> {
        let mut syms: Vec<Symbol> = word
            .char_indices()
            .map(|(start, c)| Symbol {
                start,
                len: c.len_utf8(),
                prev: None,
                next: None,
            })
            .collect();
        let count = syms.len();
        for (i, sym) in syms.iter_mut().enumerate() {
            sym.prev = i.checked_sub(1);
            sym.next = Some(i + 1).filter(|&n| n < count);
        }
        let mut queue = BinaryHeap::new();
        for i in 1..count {
            self.queue_pair(word, &syms, i - 1, i, &mut queue);
        }
        while let Some(Reverse(pair)) = queue.pop() {
            let (left, right) = (pair.left, pair.right);
            // A pair is stale once either side has changed since it was queued (llama.cpp
            // compares the strings, which amounts to the same).
            if syms[left].len != pair.left_len || syms[right].len != pair.right_len {
                continue;
            }
            syms[left].len += syms[right].len;
            syms[right].len = 0;
            syms[left].next = syms[right].next;
            if let Some(next) = syms[left].next {
                syms[next].prev = Some(left);
                self.queue_pair(word, &syms, left, next, &mut queue);
            }
            if let Some(prev) = syms[left].prev {
                self.queue_pair(word, &syms, prev, left, &mut queue);
            }
        }
        syms.iter()
            .filter(|s| s.len > 0)
            .map(|s| &word[s.start..s.start + s.len])
            .collect()
    }

    fn queue_pair(
        &self,
        word: &str,
        syms: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Reverse<Pair>>,
    ) {
        let (l, r) = (&syms[left], &syms[right]);
        let text = |s: &Symbol| &word[s.start..s.start + s.len];
        if let Some(rank) = self.rank(text(l), text(r)) {
            queue.push(Reverse(Pair {
                rank,
                left,
                right,
                left_len: l.len,
                right_len: r.len,
            }));
        }
    }
}

/// Splits a GGUF merge `"left right"` at its first space after the first byte, as llama.cpp does
/// (so a left side may itself be a space); `None` when there is no such space.
pub(super) fn split_merge(merge: &str) -> Option<(String, String)> {
    let at = 1 + merge.as_bytes().get(1..)?.iter().position(|&b| b == b' ')?;
    Some((merge[..at].to_string(), merge[at + 1..].to_string()))
}

/// A span of the word; merged-away symbols keep `len == 0`.
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A mergeable neighbour pair, ordered by rank and then leftmost first (llama.cpp's comparator).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Pair {
    rank: u32,
    left: usize,
    right: usize,
    left_len: usize,
    right_len: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merges(list: &[&str]) -> Merges {
        Merges::new(list.iter().map(|m| split_merge(m)))
    }

    #[test]
    fn lowest_rank_merges_first() {
        assert_eq!(merges(&["b c", "a b", "a bc"]).apply("abc"), ["abc"]);
        // "bc" (rank 0) is made first and "ab" can no longer form.
        assert_eq!(merges(&["b c", "a b"]).apply("abc"), ["a", "bc"]);
        assert_eq!(merges(&["a b", "b c"]).apply("abc"), ["ab", "c"]);
        assert_eq!(merges(&[]).apply("abc"), ["a", "b", "c"]);
        assert!(merges(&[]).apply("").is_empty());
    }

    #[test]
    fn equal_ranks_merge_leftmost_first() {
        assert_eq!(merges(&["a a"]).apply("aaa"), ["aa", "a"]);
        assert_eq!(merges(&["a a", "aa aa"]).apply("aaaaa"), ["aaaa", "a"]);
    }

    #[test]
    fn merges_work_on_characters_not_bytes() {
        assert_eq!(merges(&["Ġ t", "h e", "Ġt he"]).apply("Ġthe"), ["Ġthe"]);
        assert_eq!(merges(&["é é"]).apply("ééé"), ["éé", "é"]);
    }

    #[test]
    fn duplicate_merges_keep_their_first_rank() {
        // "b c" first appears at rank 2, after "a b", so "ab" wins.
        assert_eq!(
            merges(&["a b", "x y", "b c", "b c"]).apply("abc"),
            ["ab", "c"]
        );
        assert_eq!(merges(&["a b", "b c"]).len(), 2);
    }

    #[test]
    fn merge_strings_split_like_llamacpp() {
        assert_eq!(split_merge("Ġ t"), Some(("Ġ".into(), "t".into())));
        assert_eq!(split_merge("  x"), Some((" ".into(), "x".into())));
        assert_eq!(split_merge("x"), None);
        assert_eq!(split_merge(""), None);
    }
}
