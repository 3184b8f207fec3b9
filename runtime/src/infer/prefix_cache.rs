//! Prefix caching (`--enable_prefix_caching`): the keys and values of prompts already
//! prefilled, kept so that a later prompt starting with the same tokens (a shared system
//! prompt, a multi-turn conversation's history) copies them instead of recomputing them.
//!
//! A token's keys and values depend only on the tokens before it and on the weights, so a
//! cached prefix is exact, provided the adapter is the same: entries are keyed by adapter
//! as well as by tokens. Each prefilled prompt is offered once; an entry serves any prompt
//! sharing a prefix with it, so the first prompt with a system prompt already serves every
//! later one with that system prompt. A prompt longer than the capacity is stored up to
//! it (its beginning is what others share). Entries are dropped least recently used first
//! when the cache is over its token capacity.

use crate::model::error::Result as ModelResult;
use crate::model::kv_cache::SlotKv;
use crate::tuner::multi_lora::AdapterId;

/// Shorter shared prefixes are not worth a copy and an entry.
pub const MIN_PREFIX_TOKENS: usize = 16;

struct Entry {
    adapter: Option<AdapterId>,
    tokens: Vec<u32>,
    kv: SlotKv,
    last_used: u64,
}

/// The cached prefixes of one engine.
pub struct PrefixCache {
    entries: Vec<Entry>,
    /// Most tokens held over all entries.
    capacity: usize,
    tokens: usize,
    clock: u64,
}

/// A usable cached prefix: which entry and how many of its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    entry: usize,
    pub len: usize,
}

/// Tokens `a` and `b` share from the start.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl PrefixCache {
    pub fn new(capacity_tokens: usize) -> Self {
        PrefixCache {
            entries: Vec::new(),
            capacity: capacity_tokens,
            tokens: 0,
            clock: 0,
        }
    }

    /// Tokens held (counted against the KV budget).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// The longest cached prefix of `context` for `adapter`, leaving at least one token to
    /// compute (the step needs its logits); `None` below [`MIN_PREFIX_TOKENS`].
    pub fn lookup(&self, adapter: Option<AdapterId>, context: &[u32]) -> Option<Hit> {
        let most = context.len().saturating_sub(1);
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.adapter == adapter)
            .map(|(entry, e)| Hit {
                entry,
                len: common_prefix(&e.tokens, context).min(most),
            })
            .max_by_key(|h| h.len)
            .filter(|h| h.len >= MIN_PREFIX_TOKENS)
    }

    /// Copies a hit into `slot` (through `restore`) and marks the entry used.
    pub fn apply(
        &mut self,
        hit: Hit,
        restore: impl FnOnce(&SlotKv, usize) -> ModelResult<()>,
    ) -> ModelResult<()> {
        self.clock += 1;
        let e = &mut self.entries[hit.entry];
        e.last_used = self.clock;
        restore(&e.kv, hit.len)
    }

    /// Offers a prefilled prompt (up to the capacity); `snapshot` copies the keys and
    /// values of its first n tokens and is only called when no entry already covers them.
    pub fn offer(
        &mut self,
        adapter: Option<AdapterId>,
        prompt: &[u32],
        snapshot: impl FnOnce(usize) -> ModelResult<SlotKv>,
    ) -> ModelResult<()> {
        let prompt = &prompt[..prompt.len().min(self.capacity)];
        let len = prompt.len();
        if len < MIN_PREFIX_TOKENS {
            return Ok(());
        }
        self.clock += 1;
        let clock = self.clock;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.adapter == adapter && common_prefix(&e.tokens, prompt) == len)
        {
            e.last_used = clock;
            return Ok(());
        }
        // Entries this prompt extends are now redundant.
        let before = self.entries.len();
        self.entries
            .retain(|e| e.adapter != adapter || common_prefix(&e.tokens, prompt) < e.tokens.len());
        if self.entries.len() != before {
            self.tokens = self.entries.iter().map(|e| e.tokens.len()).sum();
        }
        while self.tokens + len > self.capacity && self.evict_one() > 0 {}
        self.entries.push(Entry {
            adapter,
            tokens: prompt.to_vec(),
            kv: snapshot(len)?,
            last_used: clock,
        });
        self.tokens += len;
        Ok(())
    }

    /// Drops the least recently used entry; returns the tokens freed (0: empty).
    pub fn evict_one(&mut self) -> usize {
        let Some(i) = self
            .entries
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.last_used)
            .map(|(i, _)| i)
        else {
            return 0;
        };
        let freed = self.entries.swap_remove(i).tokens.len();
        self.tokens -= freed;
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KvCache, SlotId};

    /// A cache with one slot holding `tokens.len()` tokens whose keys encode the token id.
    fn filled(tokens: &[u32]) -> (KvCache, SlotId) {
        let mut kv = KvCache::new(1, 1, 2);
        let slot = kv.allocate(128);
        let k: Vec<f32> = tokens.iter().flat_map(|&t| [t as f32, 0.5]).collect();
        kv.write(slot, 0, 0, &k, &k).unwrap();
        kv.advance(slot, tokens.len()).unwrap();
        (kv, slot)
    }

    fn prompt(shared: usize, tail: &[u32]) -> Vec<u32> {
        (0..shared as u32).chain(tail.iter().copied()).collect()
    }

    #[test]
    fn a_shared_system_prompt_is_served_from_the_first_request() {
        let first = prompt(20, &[100, 101, 102]);
        let (mut kv, slot) = filled(&first);
        let mut cache = PrefixCache::new(1000);
        cache.offer(None, &first, |n| kv.snapshot(slot, n)).unwrap();
        assert_eq!(cache.tokens(), 23);
        // Another user turn after the same 20 tokens.
        let second = prompt(20, &[200, 201]);
        let hit = cache.lookup(None, &second).unwrap();
        assert_eq!(hit.len, 20);
        let target = kv.allocate(64);
        cache
            .apply(hit, |snap, n| kv.restore(target, snap, n))
            .unwrap();
        assert_eq!(kv.len(target).unwrap(), 20);
        assert_eq!(
            kv.slot(target).unwrap().layer(0).k.to_f32_vec()[19 * 2],
            19.0
        );
        // The same prompt again: all but its last token.
        assert_eq!(cache.lookup(None, &first).unwrap().len, 22);
        // Another adapter's keys differ: no hit.
        assert_eq!(cache.lookup(Some(1), &second), None);
        // Too short a shared part.
        assert_eq!(cache.lookup(None, &prompt(10, &[300; 20])), None);
    }

    #[test]
    fn covered_prompts_are_not_stored_twice_and_extensions_replace_entries() {
        let long = prompt(40, &[]);
        let (kv, slot) = filled(&long);
        let mut cache = PrefixCache::new(1000);
        cache
            .offer(None, &long[..30], |n| kv.snapshot(slot, n))
            .unwrap();
        // A prompt the entry already covers costs no copy.
        cache
            .offer(None, &long[..25], |_| panic!("covered: no snapshot"))
            .unwrap();
        assert_eq!(cache.tokens(), 30);
        // A longer prompt extending the entry replaces it.
        cache.offer(None, &long, |n| kv.snapshot(slot, n)).unwrap();
        assert_eq!(cache.tokens(), 40);
        assert_eq!(cache.lookup(None, &long[..31]).unwrap().len, 30);
    }

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let mut cache = PrefixCache::new(50);
        let a = prompt(0, &[1; 20]);
        let b = prompt(0, &[2; 20]);
        let c = prompt(0, &[3; 20]);
        for p in [&a, &b] {
            let (kv, slot) = filled(p);
            cache.offer(None, p, |n| kv.snapshot(slot, n)).unwrap();
        }
        // Touch a, so b is the oldest.
        let hit = cache.lookup(None, &a).unwrap();
        cache.apply(hit, |_, _| Ok(())).unwrap();
        let (kv, slot) = filled(&c);
        cache.offer(None, &c, |n| kv.snapshot(slot, n)).unwrap();
        assert_eq!(cache.tokens(), 40);
        assert!(cache.lookup(None, &a).is_some());
        assert!(cache.lookup(None, &b).is_none(), "b was evicted");
        assert!(cache.lookup(None, &c).is_some());
        assert_eq!(cache.evict_one() + cache.evict_one(), 40);
        assert_eq!(cache.evict_one(), 0);
        assert_eq!(cache.tokens(), 0);
        // A prompt over the capacity keeps its beginning.
        let long = prompt(80, &[]);
        let (kv, slot) = filled(&long);
        cache.offer(None, &long, |n| kv.snapshot(slot, n)).unwrap();
        assert_eq!(cache.tokens(), 50);
        assert_eq!(cache.lookup(None, &long).unwrap().len, 50);
    }
}
