//! The KV prefix cache of one model: the keys and values of recent token
//! sequences, so a prompt that starts like one of them prefills only what
//! follows the shared part.
//!
//! An agent replays its whole conversation every turn, and its sessions
//! share long prefixes (system prompt, tool definitions), so most of each
//! prompt was computed before. Each entry is one sequence the model went
//! through (a prompt plus the output fed back); a new prompt reuses the
//! entry sharing the longest prefix with it, cut back to that prefix (a
//! view, no copy) — so a turn whose history was re-rendered differently
//! after some point (reasoning dropped from earlier turns) still reuses
//! everything before that point.
//!
//! Bounded: at most `max_tokens` tokens over all entries (memory is
//! `tokens × bytes per token`); the least recently used entries go first.
//! Entries are scoped by client (one per VM): a hit is measurably faster,
//! so sharing across clients would let one VM learn by timing what another
//! sent; one VM's sessions do share.
//!
//! Behind the memory tier, optionally, the disk tier ([`super::disk_cache`]):
//! a prompt whose prefix is longer on disk than in memory (after a restart,
//! or once memory evicted it) is read back from there, and every sequence
//! kept here is also handed to it.

use candle_core::Device;

use super::disk_cache::{DiskCache, DiskStats};
use super::model::KvCache;

/// Counters and sizes of a [`PrefixCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: u64,
    /// Tokens held over all entries.
    pub tokens: u64,
    /// The bound on `tokens`.
    pub max_tokens: u64,
    pub lookups: u64,
    /// Lookups that reused at least one token.
    pub hits: u64,
    /// Prompt tokens not recomputed thanks to the cache.
    pub reused_tokens: u64,
    /// Entries dropped to stay under the bound.
    pub evictions: u64,
    /// The disk tier's counters (zero without one).
    pub disk: DiskStats,
}

/// See the module documentation.
#[derive(Debug)]
pub struct PrefixCache {
    max_tokens: usize,
    entries: Vec<Entry>,
    tick: u64,
    stats: CacheStats,
    /// The disk tier and the device its blocks are read onto.
    disk: Option<(DiskCache, Device)>,
}

#[derive(Debug)]
struct Entry {
    scope: String,
    tokens: Vec<u32>,
    kv: KvCache,
    last_used: u64,
}

impl PrefixCache {
    /// A cache of at most `max_tokens` tokens (0: off).
    pub fn new(max_tokens: usize) -> Self {
        Self {
            max_tokens,
            entries: Vec::new(),
            tick: 0,
            stats: CacheStats {
                max_tokens: max_tokens as u64,
                ..CacheStats::default()
            },
            disk: None,
        }
    }

    /// Puts `disk` behind the memory tier; its blocks are read onto `device`.
    pub fn with_disk(mut self, disk: DiskCache, device: Device) -> Self {
        self.disk = Some((disk, device));
        self
    }

    /// Waits until the disk tier wrote what it was handed.
    pub fn flush(&self) {
        if let Some((disk, _)) = &self.disk {
            disk.flush();
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.entries.len() as u64,
            tokens: self.tokens() as u64,
            disk: self
                .disk
                .as_ref()
                .map(|(d, _)| d.stats())
                .unwrap_or_default(),
            ..self.stats
        }
    }

    fn tokens(&self) -> usize {
        self.entries.iter().map(|e| e.tokens.len()).sum()
    }

    /// The longest prefix of `prompt` cached for `scope` (at most all but
    /// its last token: one must be fed to get logits), and its KV cache.
    pub fn lookup(&mut self, scope: &str, prompt: &[u32]) -> candle_core::Result<(usize, KvCache)> {
        self.stats.lookups += 1;
        let limit = prompt.len().saturating_sub(1);
        let best = self
            .entries
            .iter_mut()
            .filter(|e| e.scope == scope)
            .map(|e| {
                let shared = e
                    .tokens
                    .iter()
                    .zip(prompt)
                    .take_while(|(a, b)| a == b)
                    .count()
                    .min(limit);
                (shared, e)
            })
            .filter(|(shared, _)| *shared > 0)
            .max_by_key(|(shared, e)| (*shared, e.last_used));
        let mut found = best.map(|(shared, entry)| {
            self.tick += 1;
            entry.last_used = self.tick;
            (shared, entry.kv.truncated(shared))
        });
        if let Some((disk, device)) = self.disk.as_mut() {
            let in_memory = found.as_ref().map_or(0, |(n, _)| *n);
            if let Some(loaded) = disk.load(scope, prompt, in_memory, device) {
                found = Some(loaded);
            }
        }
        let Some((shared, kv)) = found else {
            return Ok((0, KvCache::default()));
        };
        self.stats.hits += 1;
        self.stats.reused_tokens += shared as u64;
        Ok((shared, kv))
    }

    /// Keeps `kv`, the cache of `tokens`, for `scope`. Entries of the
    /// scope that `tokens` extends are dropped (the new one serves every
    /// prompt they would); then the least recently used go until the
    /// bound holds. A sequence longer than the whole bound is not kept.
    pub fn insert(&mut self, scope: &str, tokens: Vec<u32>, kv: KvCache) {
        if let Some((disk, _)) = &self.disk {
            disk.store(scope, &tokens, &kv);
        }
        if tokens.is_empty() || tokens.len() > self.max_tokens || kv.len() != tokens.len() {
            return;
        }
        self.entries
            .retain(|e| !(e.scope == scope && tokens.starts_with(&e.tokens)));
        self.tick += 1;
        self.entries.push(Entry {
            scope: scope.to_owned(),
            tokens,
            kv,
            last_used: self.tick,
        });
        while self.tokens() > self.max_tokens {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            self.entries.swap_remove(oldest);
            self.stats.evictions += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in KV cache of `n` tokens (the cache only looks at lengths).
    fn kv(n: usize) -> KvCache {
        KvCache::empty_of_len(n)
    }

    #[test]
    fn longest_shared_prefix_wins_and_one_token_is_left() {
        let mut c = PrefixCache::new(100);
        c.insert("vm", vec![1, 2, 3, 4], kv(4));
        c.insert("vm", vec![1, 2, 9], kv(3));
        assert_eq!(c.lookup("vm", &[1, 2, 3, 4, 5]).unwrap().0, 4);
        assert_eq!(c.lookup("vm", &[1, 2, 3, 7]).unwrap().0, 3);
        assert_eq!(c.lookup("vm", &[1, 2, 9, 9]).unwrap().0, 3);
        assert_eq!(
            c.lookup("vm", &[1, 2, 3, 4]).unwrap().0,
            3,
            "last token is fed"
        );
        assert_eq!(c.lookup("vm", &[5, 6]).unwrap().0, 0);
        assert_eq!(
            c.lookup("other-vm", &[1, 2, 3, 4, 5]).unwrap().0,
            0,
            "scoped"
        );
        let s = c.stats();
        assert_eq!((s.lookups, s.hits, s.reused_tokens), (6, 4, 13));
    }

    #[test]
    fn extended_entries_are_replaced_and_the_bound_evicts_lru() {
        let mut c = PrefixCache::new(10);
        c.insert("vm", vec![1, 2], kv(2));
        c.insert("vm", vec![1, 2, 3], kv(3));
        assert_eq!(c.stats().entries, 1, "the longer one serves both");
        c.insert("vm", vec![7, 8, 9], kv(3));
        c.lookup("vm", &[1, 2, 3, 4]).unwrap(); // [1,2,3] now most recent
        c.insert("vm", vec![5, 5, 5, 5], kv(4)); // 3 + 3 + 4 = 10: fits
        assert_eq!(c.stats().evictions, 0);
        c.insert("vm", vec![6], kv(1)); // 11 > 10: [7,8,9] is the LRU
        let s = c.stats();
        assert_eq!((s.evictions, s.tokens, s.entries), (1, 8, 3));
        assert_eq!(c.lookup("vm", &[7, 8, 9, 1]).unwrap().0, 0);
        assert_eq!(c.lookup("vm", &[1, 2, 3, 1]).unwrap().0, 3);
        c.insert("vm", (0..11).collect(), kv(11));
        assert_eq!(c.stats().tokens, 8, "longer than the bound: not kept");
        let mut off = PrefixCache::new(0);
        off.insert("vm", vec![1, 2], kv(2));
        assert_eq!(off.lookup("vm", &[1, 2, 3]).unwrap().0, 0);
    }
}
