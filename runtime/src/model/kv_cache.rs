//! The key/value cache of the inference mode: one slot per running sequence.
//!
//! A slot holds its sequence's keys and values from position 0, `[kv_heads, capacity,
//! head_dim]` per layer, so sequences of different lengths share a batch without padding
//! and a sequence can join or leave between decode steps (continuous batching). A slot's
//! memory is reserved once when the sequence is admitted (prompt + max new tokens) and
//! zero-initialised lazily by the OS, so nothing is copied or reallocated while decoding.

use candle_core::DType;
use half::vec::HalfBitsVecExt;
use half::{bf16, f16};
use kubeswift_kernels::cpu::gemm::Elem;

use super::error::{ModelError, Result};

/// Cached keys or values in the cache's dtype: the model's, as Hugging Face's caches hold
/// them, so a bf16 model's cache takes half the memory of f32 and a decode step's
/// attention reads half the bytes (it widens them as it reads).
#[derive(Debug, Clone)]
pub enum KvBuf {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
}

impl KvBuf {
    /// `n` zeros, asked of the allocator as zeroed memory: large blocks come straight from
    /// the OS and their pages stay unmapped until a token is written there. (Hence the
    /// half types from zeroed `u16`s: `vec![bf16::ZERO; n]` would write every element,
    /// touching a whole reservation up front.)
    fn zeros(dtype: KvDtype, n: usize) -> Self {
        match dtype {
            KvDtype::F32 => KvBuf::F32(vec![0.0; n]),
            KvDtype::BF16 => KvBuf::BF16(vec![0u16; n].reinterpret_into()),
            KvDtype::F16 => KvBuf::F16(vec![0u16; n].reinterpret_into()),
        }
    }

    /// An empty buffer of the same dtype with room for `n` values.
    fn with_capacity_like(&self, n: usize) -> Self {
        match self {
            KvBuf::F32(_) => KvBuf::F32(Vec::with_capacity(n)),
            KvBuf::BF16(_) => KvBuf::BF16(Vec::with_capacity(n)),
            KvBuf::F16(_) => KvBuf::F16(Vec::with_capacity(n)),
        }
    }

    /// Stores `src` (f32, rounded to the buffer's dtype) at `at`.
    fn store(&mut self, at: usize, src: &[f32]) {
        let n = src.len();
        match self {
            KvBuf::F32(b) => b[at..at + n].copy_from_slice(src),
            KvBuf::BF16(b) => bf16::store(src, &mut b[at..at + n]),
            KvBuf::F16(b) => f16::store(src, &mut b[at..at + n]),
        }
    }

    /// Copies `n` values of `src` from `from` to `at`; the dtypes must match.
    fn copy_from(&mut self, at: usize, src: &KvBuf, from: usize, n: usize) -> Result<()> {
        match (self, src) {
            (KvBuf::F32(d), KvBuf::F32(s)) => d[at..at + n].copy_from_slice(&s[from..from + n]),
            (KvBuf::BF16(d), KvBuf::BF16(s)) => d[at..at + n].copy_from_slice(&s[from..from + n]),
            (KvBuf::F16(d), KvBuf::F16(s)) => d[at..at + n].copy_from_slice(&s[from..from + n]),
            _ => {
                return Err(ModelError::Input(
                    "kv cache: a snapshot of another dtype cannot be restored here".into(),
                ));
            }
        }
        Ok(())
    }

    /// Appends `n` values of `src` from `from`; the dtypes match (same cache).
    fn extend_from(&mut self, src: &KvBuf, from: usize, n: usize) {
        match (self, src) {
            (KvBuf::F32(d), KvBuf::F32(s)) => d.extend_from_slice(&s[from..from + n]),
            (KvBuf::BF16(d), KvBuf::BF16(s)) => d.extend_from_slice(&s[from..from + n]),
            (KvBuf::F16(d), KvBuf::F16(s)) => d.extend_from_slice(&s[from..from + n]),
            _ => unreachable!("a slot's buffers share the cache's dtype"),
        }
    }

    /// Every value, widened to f32 (for inspection and tests).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            KvBuf::F32(b) => b.clone(),
            KvBuf::BF16(b) => b.iter().map(|x| x.to_f32()).collect(),
            KvBuf::F16(b) => b.iter().map(|x| x.to_f32()).collect(),
        }
    }
}

/// The element type of a [`KvCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    BF16,
    F16,
}

impl KvDtype {
    /// The cache dtype for a model computing in `dtype`: its own (f32 for anything else).
    pub fn for_model(dtype: DType) -> Self {
        match dtype {
            DType::BF16 => KvDtype::BF16,
            DType::F16 => KvDtype::F16,
            _ => KvDtype::F32,
        }
    }

    fn size_in_bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::BF16 | KvDtype::F16 => 2,
        }
    }
}

/// Keys and values of one layer of one sequence.
#[derive(Debug, Clone)]
pub struct LayerKv {
    /// `[kv_heads, capacity, head_dim]`.
    pub k: KvBuf,
    /// `[kv_heads, capacity, head_dim]`.
    pub v: KvBuf,
}

/// One sequence's cache across all layers.
#[derive(Debug, Clone)]
pub struct SlotKv {
    layers: Vec<LayerKv>,
    capacity: usize,
    len: usize,
}

impl SlotKv {
    /// Tokens cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokens this slot can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn layer(&self, i: usize) -> &LayerKv {
        &self.layers[i]
    }
}

/// The caches of every running sequence of one model.
#[derive(Debug)]
pub struct KvCache {
    num_layers: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: KvDtype,
    slots: Vec<Option<SlotKv>>,
}

/// A slot index: which sequence's cache.
pub type SlotId = usize;

impl KvCache {
    /// An f32 cache.
    pub fn new(num_layers: usize, kv_heads: usize, head_dim: usize) -> Self {
        Self::with_dtype(num_layers, kv_heads, head_dim, KvDtype::F32)
    }

    pub fn with_dtype(num_layers: usize, kv_heads: usize, head_dim: usize, dtype: KvDtype) -> Self {
        KvCache {
            num_layers,
            kv_heads,
            head_dim,
            dtype,
            slots: Vec::new(),
        }
    }

    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    pub fn kv_heads(&self) -> usize {
        self.kv_heads
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Reserves a slot for a sequence of up to `capacity` tokens.
    pub fn allocate(&mut self, capacity: usize) -> SlotId {
        let per_layer = self.kv_heads * capacity * self.head_dim;
        let slot = SlotKv {
            layers: (0..self.num_layers)
                .map(|_| LayerKv {
                    k: KvBuf::zeros(self.dtype, per_layer),
                    v: KvBuf::zeros(self.dtype, per_layer),
                })
                .collect(),
            capacity,
            len: 0,
        };
        match self.slots.iter().position(Option::is_none) {
            Some(i) => {
                self.slots[i] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        }
    }

    /// Frees a slot's memory; its id may be reused.
    pub fn free(&mut self, slot: SlotId) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = None;
        }
    }

    /// Copies the first `len` cached tokens of `src` into `dst` (beam search forks).
    pub fn copy_prefix(&mut self, src: SlotId, dst: SlotId, len: usize) -> Result<()> {
        if src == dst {
            return Ok(());
        }
        let source = self.snapshot(src, len)?;
        self.restore(dst, &source, len)
    }

    /// A compact copy of the first `len` cached tokens of `slot` (prefix caching).
    pub fn snapshot(&self, slot: SlotId, len: usize) -> Result<SlotKv> {
        let source = self.slot(slot)?;
        if len > source.len {
            return Err(ModelError::Input(format!(
                "kv cache: slot {slot} holds {} tokens, not {len}",
                source.len
            )));
        }
        Ok(source.clone_prefix(len, self.kv_heads, self.head_dim))
    }

    /// Makes the first `len` tokens of `snapshot` the whole content of `dst`.
    pub fn restore(&mut self, dst: SlotId, snapshot: &SlotKv, len: usize) -> Result<()> {
        let (kv_heads, head_dim) = (self.kv_heads, self.head_dim);
        let target = self.slot_mut(dst)?;
        if len > target.capacity || len > snapshot.len {
            return Err(ModelError::Input(format!(
                "kv cache: cannot restore {len} tokens into slot {dst} (reserved {}) from a \
                 snapshot of {}",
                target.capacity, snapshot.len
            )));
        }
        let (cap_s, cap_t) = (snapshot.capacity, target.capacity);
        for (ls, lt) in snapshot.layers.iter().zip(target.layers.iter_mut()) {
            for h in 0..kv_heads {
                let n = len * head_dim;
                let (s0, t0) = (h * cap_s * head_dim, h * cap_t * head_dim);
                lt.k.copy_from(t0, &ls.k, s0, n)?;
                lt.v.copy_from(t0, &ls.v, s0, n)?;
            }
        }
        target.len = len;
        Ok(())
    }

    /// Tokens cached over all slots (what the KV budget counts).
    pub fn cached_tokens(&self) -> usize {
        self.slots.iter().flatten().map(|s| s.len).sum()
    }

    /// Bytes one cached token takes over all layers (keys and values).
    pub fn bytes_per_token(&self) -> usize {
        2 * self.num_layers * self.kv_heads * self.head_dim * self.dtype.size_in_bytes()
    }

    pub fn slot(&self, slot: SlotId) -> Result<&SlotKv> {
        self.slots
            .get(slot)
            .and_then(Option::as_ref)
            .ok_or_else(|| ModelError::Input(format!("kv cache: slot {slot} is not allocated")))
    }

    pub fn slot_mut(&mut self, slot: SlotId) -> Result<&mut SlotKv> {
        self.slots
            .get_mut(slot)
            .and_then(Option::as_mut)
            .ok_or_else(|| ModelError::Input(format!("kv cache: slot {slot} is not allocated")))
    }

    /// Tokens cached in `slot`.
    pub fn len(&self, slot: SlotId) -> Result<usize> {
        Ok(self.slot(slot)?.len)
    }

    /// Writes one layer's new keys/values of a sequence at positions `start..start+n`.
    /// `k` and `v` are `[n, kv_heads, head_dim]`.
    pub(crate) fn write(
        &mut self,
        slot: SlotId,
        layer: usize,
        start: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<()> {
        let (kv_heads, d) = (self.kv_heads, self.head_dim);
        let s = self.slot_mut(slot)?;
        let n = k.len() / (kv_heads * d);
        if start + n > s.capacity {
            return Err(ModelError::Input(format!(
                "kv cache: sequence in slot {slot} needs {} positions, reserved {}",
                start + n,
                s.capacity
            )));
        }
        let cap = s.capacity;
        let l = &mut s.layers[layer];
        for t in 0..n {
            for h in 0..kv_heads {
                let src = (t * kv_heads + h) * d;
                let dst = (h * cap + start + t) * d;
                l.k.store(dst, &k[src..src + d]);
                l.v.store(dst, &v[src..src + d]);
            }
        }
        Ok(())
    }

    /// Marks `n` more tokens of `slot` as cached (after every layer has written them).
    pub(crate) fn advance(&mut self, slot: SlotId, n: usize) -> Result<()> {
        let s = self.slot_mut(slot)?;
        s.len += n;
        Ok(())
    }
}

impl SlotKv {
    fn clone_prefix(&self, len: usize, kv_heads: usize, head_dim: usize) -> SlotKv {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let mut k = l.k.with_capacity_like(kv_heads * len * head_dim);
                let mut v = l.v.with_capacity_like(kv_heads * len * head_dim);
                for h in 0..kv_heads {
                    let s = h * self.capacity * head_dim;
                    k.extend_from(&l.k, s, len * head_dim);
                    v.extend_from(&l.v, s, len * head_dim);
                }
                LayerKv { k, v }
            })
            .collect();
        SlotKv {
            layers,
            capacity: len,
            len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_prefixes_copied() {
        let mut c = KvCache::new(2, 2, 4);
        let a = c.allocate(8);
        let b = c.allocate(8);
        assert_ne!(a, b);
        let k: Vec<f32> = (0..3 * 2 * 4).map(|i| i as f32).collect();
        let v: Vec<f32> = k.iter().map(|x| -x).collect();
        for layer in 0..2 {
            c.write(a, layer, 0, &k, &v).unwrap();
        }
        c.advance(a, 3).unwrap();
        c.copy_prefix(a, b, 2).unwrap();
        assert_eq!(c.len(b).unwrap(), 2);
        let (sa, sb) = (
            c.slot(a).unwrap().layer(1).k.to_f32_vec(),
            c.slot(b).unwrap().layer(1).k.to_f32_vec(),
        );
        // head 1, position 1 of both.
        assert_eq!(sa[(8 + 1) * 4..(8 + 2) * 4], sb[(8 + 1) * 4..(8 + 2) * 4]);
        assert_eq!(sa[(8 + 1) * 4], 12.0);
        assert_eq!(c.cached_tokens(), 5);
        let snap = c.snapshot(a, 3).unwrap();
        assert!(c.snapshot(a, 4).is_err(), "only 3 tokens are cached");
        c.free(a);
        assert!(c.len(a).is_err());
        assert_eq!(c.allocate(4), a);
        c.restore(a, &snap, 3).unwrap();
        assert_eq!(c.len(a).unwrap(), 3);
        let restored = c.slot(a).unwrap().layer(1).k.to_f32_vec();
        // head 1 of a slot reserved for 4 tokens starts at 4 * head_dim.
        assert_eq!(
            restored[(4 + 2) * 4..(4 + 3) * 4],
            k[(2 * 2 + 1) * 4..(2 * 2 + 2) * 4]
        );
        assert!(
            c.restore(b, &snap, 4).is_err(),
            "more than the snapshot holds"
        );
        assert_eq!(c.bytes_per_token(), 2 * 2 * 2 * 4 * 4);
    }

    #[test]
    fn a_bf16_cache_holds_the_rounded_values_in_half_the_bytes() {
        let mut c = KvCache::with_dtype(1, 1, 4, KvDtype::BF16);
        assert_eq!(c.bytes_per_token(), 2 * 4 * 2);
        let s = c.allocate(3);
        let k = [1.0, 1.0 + 1.0 / 256.0, -3.140625, 1e-3];
        c.write(s, 0, 1, &k, &[2.0; 4]).unwrap();
        c.advance(s, 2).unwrap();
        let layer = c.slot(s).unwrap().layer(0);
        assert!(matches!(layer.k, KvBuf::BF16(_)));
        let got = layer.k.to_f32_vec();
        let rounded: Vec<f32> = k.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
        assert_eq!(&got[4..8], &rounded[..]);
        assert_eq!(got[4 + 1], 1.0, "1 + 2^-8 rounds to 1 in bf16");
        // Snapshots and restores keep the dtype.
        let snap = c.snapshot(s, 2).unwrap();
        let t = c.allocate(2);
        c.restore(t, &snap, 2).unwrap();
        assert_eq!(
            c.slot(t).unwrap().layer(0).k.to_f32_vec()[4..8],
            rounded[..]
        );
        // A snapshot of an f32 cache does not go into a bf16 one.
        let mut f = KvCache::new(1, 1, 4);
        let fs = f.allocate(2);
        f.advance(fs, 2).unwrap();
        let f32_snap = f.snapshot(fs, 2).unwrap();
        assert!(c.restore(t, &f32_snap, 2).is_err());
    }

    #[test]
    fn writing_past_the_reservation_is_an_error() {
        let mut c = KvCache::new(1, 1, 2);
        let s = c.allocate(2);
        let e = c
            .write(s, 0, 1, &[0.0; 4], &[0.0; 4])
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs 3"), "{e}");
    }
}
