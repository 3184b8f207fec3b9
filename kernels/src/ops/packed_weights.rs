//! Frozen weights packed once for the bf16 GEMM and reused by every later product, inside
//! a scope a trainer opens ([`keep_packed_weights`]).
//!
//! In LoRA training the base weights never change, yet every step packed each of them again
//! for the input gradient `dx = g W`, where packing gathers bf16 pairs down W's columns
//! (~2.6% of a bf16 LoRA step's samples). In a scope, that packing is made the first time
//! and kept (one more bf16 copy of the frozen weights), keyed by the
//! weight tensor's id (never reused by candle) and the view's layout. Only tensors that
//! track no gradient are cached: a candle tensor with neither an op nor a `Var` behind it
//! does not change. The scope is per thread (the thread that runs the forward and backward)
//! and holds at most `budget` bytes; what does not fit is packed per product as before.
//!
//! The forward's `x W^T` packs W's rows, a cheap copy: keeping that packing too saved
//! ~0.5% of a step for a second copy of the weights, so the forward packs per product.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use candle_core::{Tensor, TensorId};
use half::bf16;

use crate::cpu::gemm::{COut, Epilogue, MatRef, PackedB, gemm_prepacked_b_out, gemm_then_out};
use crate::elem::Elem;

/// A cache key: the tensor and the strided view of it (the same weight is read both ways).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    tensor: TensorId,
    view: (usize, usize, usize, usize, usize),
}

struct Cache {
    budget: usize,
    used: usize,
    entries: HashMap<Key, Arc<PackedB>>,
}

thread_local! {
    static SCOPE: RefCell<Option<Rc<RefCell<Cache>>>> = const { RefCell::new(None) };
}

/// Keeps packed frozen weights until dropped; see [`keep_packed_weights`].
pub struct PackedWeightsScope {
    cache: Rc<RefCell<Cache>>,
    previous: Option<Rc<RefCell<Cache>>>,
}

impl PackedWeightsScope {
    /// Bytes of packed weights this scope holds so far.
    pub fn bytes(&self) -> usize {
        self.cache.borrow().used
    }
}

impl Drop for PackedWeightsScope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SCOPE.with(|s| *s.borrow_mut() = previous);
    }
}

/// Opens a scope on this thread in which the frozen-weight products keep their packed
/// weights (up to `budget` bytes) until the returned guard is dropped. The caller promises
/// that the frozen weights it passes to the ops in the scope are not modified in place
/// (`Tensor::slice_set`) while it is open.
pub fn keep_packed_weights(budget: usize) -> PackedWeightsScope {
    let cache = Rc::new(RefCell::new(Cache {
        budget,
        used: 0,
        entries: HashMap::new(),
    }));
    let previous = SCOPE.with(|s| s.borrow_mut().replace(cache.clone()));
    PackedWeightsScope { cache, previous }
}

/// The id under which a weight may be cached: only a tensor that tracks no gradient.
pub(crate) fn cache_id(w: &Tensor) -> Option<TensorId> {
    (!w.track_op()).then(|| w.id())
}

/// `c = alpha a b + beta c` where `b` is a view of the frozen weight `id`, then `epilogue`
/// on each finished tile: with bf16 operands inside a scope, `b`'s packing is looked up (or
/// made and kept) instead of packed again.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_frozen_b<TA: Elem, TB: Elem>(
    id: Option<TensorId>,
    a: MatRef<'_, TA>,
    b: MatRef<'_, TB>,
    c: COut<'_>,
    ldc: usize,
    alpha: f32,
    beta: f32,
    epilogue: &Epilogue<'_>,
) {
    if let (Some(id), Some(a16), Some(b16)) = (id, a.as_bf16(), b.as_bf16())
        && let Some(packed) = packed(id, b16)
    {
        gemm_prepacked_b_out(a16, &packed, c, ldc, alpha, beta, Some(epilogue));
        return;
    }
    gemm_then_out(a, b, c, ldc, alpha, beta, epilogue);
}

/// The kept packing of `b`, made now if it fits the scope's budget; `None` outside a scope,
/// over budget, or where the bf16 kernel is not in use.
fn packed(id: TensorId, b: MatRef<'_, bf16>) -> Option<Arc<PackedB>> {
    let cache = SCOPE.with(|s| s.borrow().clone())?;
    let key = Key {
        tensor: id,
        view: b.layout(),
    };
    if let Some(hit) = cache.borrow().entries.get(&key) {
        return Some(hit.clone());
    }
    let mut cache = cache.borrow_mut();
    // bf16 pairs padded to whole panels: a little over the weight's own size.
    let estimate = b.rows() * b.cols() * std::mem::size_of::<bf16>();
    if cache.used + estimate > cache.budget {
        return None;
    }
    let packed = Arc::new(PackedB::new(b)?);
    cache.used += packed.bytes();
    cache.entries.insert(key, packed.clone());
    Some(packed)
}
