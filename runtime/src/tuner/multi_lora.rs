//! Many LoRA adapters over one base model, chosen per sequence (multi-LoRA serving).
//!
//! Every adapted linear layer carries one [`MultiLoraLayer`] holding the LoRA pair of each
//! adapter that targets it. A forward of a ragged batch adds, to the rows of each sequence,
//! the unmerged delta of that sequence's adapter: `y = x W^T + scale * (x A^T) B^T`, and
//! nothing to rows of base-model sequences. The base weights stay shared and unchanged.
//! A DoRA adapter shares a batch too: its gain `m / ||W + scale B A||` scales each output
//! feature of its own rows only, so its rows become `gain * (x W^T + scale (x A^T) B^T) + b`
//! (the gain folded into B once at load) while other rows stay as they are.
//!
//! Which rows use which adapter is the batch's [`Routing`]: the engine sets it around a
//! forward with [`with_routing`]. It travels beside the call (a scoped thread-local, like a
//! tracing span) rather than through every module's signature, so the decoder does not
//! change; the linear layers run on the thread that called the forward, and a layer that
//! finds no routing fails loudly instead of guessing.
//!
//! The delta is computed one sequence (run of rows) at a time: a short run (decode) row by
//! row with plain loops, a long one (prefill) with gemm. Which path a run takes depends only
//! on its own length, so a sequence gets the same bits whatever other sequences and
//! adapters share its batch.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::dora::MAGNITUDE;
use super::lora::{LoraAdapters, LoraError};
use crate::model::{CausalLm, LinearAdapter};

/// Index of an adapter in the [`AdapterSet`] it was loaded into.
pub type AdapterId = usize;

/// Consecutive rows of a batch (one sequence's tokens) and the adapter they use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRun {
    pub rows: usize,
    pub adapter: Option<AdapterId>,
}

/// The adapter of every row of one forward, as runs in row order.
pub type Routing = [RowRun];

thread_local! {
    static ROUTING: RefCell<Option<Vec<RowRun>>> = const { RefCell::new(None) };
}

/// Runs `f` (a model forward) with `routing` visible to the multi-LoRA layers it calls on
/// this thread; the previous routing is restored afterwards, also on panic.
pub fn with_routing<R>(routing: &Routing, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Vec<RowRun>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            ROUTING.with(|r| *r.borrow_mut() = previous);
        }
    }
    let previous = ROUTING.with(|r| r.borrow_mut().replace(routing.to_vec()));
    let _restore = Restore(previous);
    f()
}

fn current_routing() -> Option<Vec<RowRun>> {
    ROUTING.with(|r| r.borrow().clone())
}

/// The routing the engine set, or an error naming what is missing.
fn routing_here() -> candle_core::Result<Vec<RowRun>> {
    current_routing().ok_or_else(|| {
        candle_core::Error::Msg(
            "multi-LoRA layer called without a routing (the engine sets which rows use which \
             adapter)"
                .into(),
        )
    })
}

/// Rows at or above which a run's delta goes through gemm (as the base linear's kernel).
const GEMM_MIN_ROWS: usize = 16;

/// One adapter's LoRA pair on one layer, in f32 for the inference kernel.
#[derive(Debug, Clone)]
struct Pair {
    /// `a` and `b` as tensors, for the gemm path.
    a_t: Tensor,
    b_t: Tensor,
    /// `[rank, in]`, row-major.
    a: Vec<f32>,
    /// `[out, rank]`, row-major.
    b: Vec<f32>,
    rank: usize,
    scale: f32,
    /// `lora_bias all`: trained bias minus the layer's own, added to the adapter's rows.
    bias_shift: Option<Vec<f32>>,
    /// DoRA: the gain, already folded into `b`/`b_t`, still to apply to the base rows.
    dora: Option<DoraRows>,
}

/// A DoRA adapter's gain per output feature and the layer's own bias.
#[derive(Debug, Clone)]
struct DoraRows {
    gain: Vec<f32>,
    base_bias: Option<Vec<f32>>,
}

impl DoraRows {
    /// A base output row `x W^T + b0` becomes `gain * x W^T + b0`.
    fn rescale(&self, y: &mut [f32]) {
        for (o, yo) in y.iter_mut().enumerate() {
            let b0 = self.base_bias.as_ref().map_or(0.0, |b| b[o]);
            *yo = self.gain[o] * (*yo - b0) + b0;
        }
    }
}

/// The LoRA pairs of every served adapter on one linear layer.
#[derive(Debug)]
pub struct MultiLoraLayer {
    in_features: usize,
    out_features: usize,
    /// Indexed by [`AdapterId`]; `None` where that adapter leaves this layer alone.
    pairs: Vec<Option<Pair>>,
}

fn tensor_err(e: candle_core::Error) -> candle_core::Error {
    candle_core::Error::Msg(format!("multi-LoRA: {e}"))
}

impl MultiLoraLayer {
    /// `base` plus each run's adapter delta on its rows.
    fn forward_routed(
        &self,
        x: &Tensor,
        base: Tensor,
        routing: &Routing,
    ) -> candle_core::Result<Tensor> {
        if routing.iter().all(|r| r.adapter.is_none()) {
            return Ok(base);
        }
        let rows: usize = routing.iter().map(|r| r.rows).sum();
        let (n, out) = base.dims2()?;
        if n != rows || x.dims2()? != (n, self.in_features) || out != self.out_features {
            return Err(candle_core::Error::Msg(format!(
                "multi-LoRA: routing covers {rows} rows, input is {:?}, output {:?}",
                x.dims(),
                base.dims()
            )));
        }
        let x: Vec<f32> = x
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()
            .map_err(tensor_err)?;
        let mut y: Vec<f32> = base.flatten_all()?.to_vec1().map_err(tensor_err)?;
        self.add_deltas(&x, &mut y, routing)?;
        Tensor::from_vec(y, (n, out), base.device())
    }

    /// Adds `scale * (x A^T) B^T` of each row's adapter to `y` (`rows` x `out`).
    fn add_deltas(&self, x: &[f32], y: &mut [f32], routing: &Routing) -> candle_core::Result<()> {
        let (inp, out) = (self.in_features, self.out_features);
        let mut row = 0;
        for run in routing {
            let pair = run
                .adapter
                .and_then(|id| self.pairs.get(id))
                .and_then(Option::as_ref);
            if let Some(d) = pair.and_then(|p| p.dora.as_ref()) {
                for yr in y[row * out..(row + run.rows) * out].chunks_exact_mut(out) {
                    d.rescale(yr);
                }
            }
            if let Some(p) = pair
                && run.rows >= GEMM_MIN_ROWS
            {
                let xs = Tensor::from_slice(
                    &x[row * inp..(row + run.rows) * inp],
                    (run.rows, inp),
                    p.a_t.device(),
                )?;
                let delta = (xs.matmul(&p.a_t.t()?)? * p.scale as f64)?.matmul(&p.b_t.t()?)?;
                let delta: Vec<f32> = delta.flatten_all()?.to_vec1()?;
                let ys = &mut y[row * out..(row + run.rows) * out];
                for (yo, d) in ys.iter_mut().zip(&delta) {
                    *yo += d;
                }
                if let Some(shift) = &p.bias_shift {
                    for yr in ys.chunks_exact_mut(out) {
                        for (yo, s) in yr.iter_mut().zip(shift) {
                            *yo += s;
                        }
                    }
                }
            } else if let Some(p) = pair {
                let mut t = vec![0f32; p.rank];
                for r in row..row + run.rows {
                    let xr = &x[r * inp..(r + 1) * inp];
                    for (j, tj) in t.iter_mut().enumerate() {
                        *tj = dot(&p.a[j * inp..(j + 1) * inp], xr) * p.scale;
                    }
                    let yr = &mut y[r * out..(r + 1) * out];
                    for (o, yo) in yr.iter_mut().enumerate() {
                        *yo += dot(&p.b[o * p.rank..(o + 1) * p.rank], &t);
                    }
                    if let Some(shift) = &p.bias_shift {
                        for (yo, s) in yr.iter_mut().zip(shift) {
                            *yo += s;
                        }
                    }
                }
            }
            row += run.rows;
        }
        Ok(())
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: vectorises, and the order is fixed so results are reproducible.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8 * 8;
    for (ca, cb) in a[..chunks].chunks_exact(8).zip(b[..chunks].chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in a[chunks..].iter().zip(&b[chunks..]) {
        s += x * y;
    }
    s
}

impl LinearAdapter for MultiLoraLayer {
    fn forward_train(
        &self,
        _x: &Tensor,
        _weight: &Tensor,
        _bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(
            "multi-LoRA layers serve only; train one adapter at a time".into(),
        ))
    }

    fn forward_infer(&self, x: &Tensor, base: Tensor) -> candle_core::Result<Tensor> {
        let routing = routing_here()?;
        self.forward_routed(x, base, &routing)
    }

    /// One row per run: each sequence's last token.
    fn forward_infer_last_tokens(&self, x: &Tensor, base: Tensor) -> candle_core::Result<Tensor> {
        let routing: Vec<RowRun> = routing_here()?
            .iter()
            .map(|r| RowRun { rows: 1, ..*r })
            .collect();
        self.forward_routed(x, base, &routing)
    }
}

/// Errors of loading adapters for serving; they name the adapter folder.
#[derive(Debug, thiserror::Error)]
pub enum MultiLoraError {
    #[error("adapter {dir}: {source}")]
    Load {
        dir: PathBuf,
        #[source]
        source: Box<LoraError>,
    },
    #[error(
        "adapter {dir} trains whole modules ({modules}), which replace base weights and cannot \
         be shared with other adapters; merge it (swift export --merge_lora true) and serve \
         the merged model"
    )]
    ModulesToSave { dir: PathBuf, modules: String },
    #[error(
        "adapter {dir} adapts lm_head, which multi-LoRA serving does not support yet; merge it \
         (swift export --merge_lora true) and serve the merged model"
    )]
    OutputHead { dir: PathBuf },
    #[error("adapter {dir}: {what}: {source}")]
    Tensor {
        dir: PathBuf,
        what: String,
        #[source]
        source: Box<candle_core::Error>,
    },
}

/// The adapters a model serves: attached to its linear layers as [`MultiLoraLayer`]s.
#[derive(Debug)]
pub struct AdapterSet {
    /// The folder of each adapter, by [`AdapterId`].
    pub dirs: Vec<PathBuf>,
    /// Linear layers that carry at least one adapter.
    pub adapted_layers: usize,
}

fn to_f32_vec(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

impl AdapterSet {
    /// Loads PEFT adapter folders (ours or PEFT's) and attaches them to `model`'s linear
    /// layers; adapter `i` of `dirs` gets id `i`. Each is checked against the model as
    /// `swift infer --adapters` checks it.
    pub fn attach(model: &mut CausalLm, dirs: &[PathBuf]) -> Result<Self, MultiLoraError> {
        let mut table: Vec<(String, Vec<Option<Pair>>)> = Vec::new();
        for (id, dir) in dirs.iter().enumerate() {
            let loaded =
                LoraAdapters::load(model, dir, false).map_err(|source| MultiLoraError::Load {
                    dir: dir.clone(),
                    source: Box::new(source),
                })?;
            if !loaded.saved.is_empty() {
                let modules: Vec<&str> = loaded.saved.iter().map(|(n, _)| n.as_str()).collect();
                return Err(MultiLoraError::ModulesToSave {
                    dir: dir.clone(),
                    modules: modules.join(", "),
                });
            }
            let mut linears = model.model.linears_mut();
            for (path, layer) in &loaded.layers {
                let Some((_, linear)) = linears.iter_mut().find(|(p, _)| p == path) else {
                    return Err(MultiLoraError::OutputHead { dir: dir.clone() });
                };
                let terr = |what: &str| {
                    let (dir, what) = (dir.clone(), format!("{path}.{what}"));
                    move |source| MultiLoraError::Tensor {
                        dir,
                        what,
                        source: Box::new(source),
                    }
                };
                let bias_shift = match (&layer.bias, linear.bias()) {
                    (Some(trained), Some(frozen)) => {
                        let t = to_f32_vec(trained.as_tensor()).map_err(terr("bias"))?;
                        let f = to_f32_vec(frozen).map_err(terr("bias"))?;
                        Some(t.iter().zip(&f).map(|(a, b)| a - b).collect())
                    }
                    (Some(trained), None) => {
                        Some(to_f32_vec(trained.as_tensor()).map_err(terr("bias"))?)
                    }
                    _ => None,
                };
                let a_t = layer.a.as_tensor().to_dtype(DType::F32);
                let mut b_t = layer
                    .b
                    .as_tensor()
                    .to_dtype(DType::F32)
                    .map_err(terr("lora_B"))?;
                let gain = layer.dora_gain().map_err(terr(MAGNITUDE))?;
                let dora = match gain {
                    Some(gain) => {
                        // B' = diag(gain) B: the delta comes out scaled.
                        b_t = b_t
                            .broadcast_mul(&gain.unsqueeze(1).map_err(terr(MAGNITUDE))?)
                            .map_err(terr(MAGNITUDE))?;
                        let base_bias = linear.bias().map(to_f32_vec).transpose();
                        Some(DoraRows {
                            gain: to_f32_vec(&gain).map_err(terr(MAGNITUDE))?,
                            base_bias: base_bias.map_err(terr("bias"))?,
                        })
                    }
                    None => None,
                };
                let pair = Pair {
                    a_t: a_t.map_err(terr("lora_A"))?,
                    a: to_f32_vec(layer.a.as_tensor()).map_err(terr("lora_A"))?,
                    b: to_f32_vec(&b_t).map_err(terr("lora_B"))?,
                    b_t,
                    rank: layer.a.as_tensor().dims()[0],
                    scale: layer.scale as f32,
                    bias_shift,
                    dora,
                };
                // The single-adapter layer `load` attached is replaced below.
                linear.set_adapter(None);
                let i = match table.iter().position(|(p, _)| p == path) {
                    Some(i) => i,
                    None => {
                        table.push((path.clone(), Vec::new()));
                        table.len() - 1
                    }
                };
                let pairs = &mut table[i].1;
                pairs.resize(id + 1, None);
                pairs[id] = Some(pair);
            }
            drop(linears);
            // `load` also attached to lm_head when the adapter has it.
            if model.lm_head.adapter().is_some() {
                model.lm_head.set_adapter(None);
                return Err(MultiLoraError::OutputHead { dir: dir.clone() });
            }
        }
        let adapted_layers = table.len();
        for (path, linear) in model.model.linears_mut() {
            if let Some((_, pairs)) = table.iter_mut().find(|(p, _)| *p == path) {
                let layer = MultiLoraLayer {
                    in_features: linear.in_features(),
                    out_features: linear.out_features(),
                    pairs: std::mem::take(pairs),
                };
                linear.set_adapter(Some(Arc::new(layer)));
            }
        }
        Ok(AdapterSet {
            dirs: dirs.to_vec(),
            adapted_layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: Vec<f32>, b: Vec<f32>, rank: usize, scale: f32, shift: Option<Vec<f32>>) -> Pair {
        let dev = candle_core::Device::Cpu;
        let inp = a.len() / rank;
        let out = b.len() / rank;
        Pair {
            a_t: Tensor::from_vec(a.clone(), (rank, inp), &dev).unwrap(),
            b_t: Tensor::from_vec(b.clone(), (out, rank), &dev).unwrap(),
            a,
            b,
            rank,
            scale,
            bias_shift: shift,
            dora: None,
        }
    }

    fn layer() -> MultiLoraLayer {
        // in 3, out 2; adapter 0 rank 1, adapter 1 absent, adapter 2 rank 2 with a bias.
        MultiLoraLayer {
            in_features: 3,
            out_features: 2,
            pairs: vec![
                Some(pair(vec![1.0, 0.0, 1.0], vec![1.0, 2.0], 1, 2.0, None)),
                None,
                Some(pair(
                    vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                    vec![1.0, 0.0, 0.0, 1.0],
                    2,
                    1.0,
                    Some(vec![10.0, 20.0]),
                )),
            ],
        }
    }

    fn run(rows: usize, adapter: Option<AdapterId>) -> RowRun {
        RowRun { rows, adapter }
    }

    #[test]
    fn each_run_gets_its_own_adapter_delta() {
        let x = [1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 5.0, 6.0, 7.0, 0.5, 0.5, 0.5];
        let mut y = vec![0f32; 8];
        let routing = [
            run(1, Some(0)),
            run(1, None),
            run(1, Some(2)),
            run(1, Some(1)),
        ];
        layer().add_deltas(&x, &mut y, &routing).unwrap();
        // Row 0: A x = 1 + 3 = 4, times scale 2 = 8, B -> [8, 16].
        // Row 1: base. Row 2: A x = [5, 6], B = I, bias [10, 20] -> [15, 26].
        // Row 3: adapter 1 does not touch this layer.
        assert_eq!(y, [8.0, 16.0, 0.0, 0.0, 15.0, 26.0, 0.0, 0.0]);
    }

    #[test]
    fn last_token_rows_take_their_sequences_adapters() {
        // Three sequences of 4, 2 and 5 tokens; only each one's last token is computed.
        let x = Tensor::new(
            &[[1f32, 2.0, 3.0], [1.0, 1.0, 1.0], [5.0, 6.0, 7.0]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let base = Tensor::zeros((3, 2), DType::F32, &candle_core::Device::Cpu).unwrap();
        let routing = [run(4, Some(0)), run(2, None), run(5, Some(2))];
        let l = layer();
        let y = with_routing(&routing, || l.forward_infer_last_tokens(&x, base.clone())).unwrap();
        assert_eq!(
            y.to_vec2::<f32>().unwrap(),
            [[8.0, 16.0], [0.0, 0.0], [15.0, 26.0]]
        );
        // The same rows read as every token of the step do not cover the routing.
        assert!(with_routing(&routing, || l.forward_infer(&x, base)).is_err());
    }

    #[test]
    fn long_runs_take_gemm_and_agree_with_the_row_loop() {
        let l = layer();
        let rows = GEMM_MIN_ROWS + 3;
        let x: Vec<f32> = (0..rows * 3).map(|i| (i as f32 * 0.37).sin()).collect();
        for adapter in [0, 2] {
            let mut long = vec![0f32; rows * 2];
            l.add_deltas(&x, &mut long, &[run(rows, Some(adapter))])
                .unwrap();
            let mut short = vec![0f32; rows * 2];
            let one_by_one = vec![run(1, Some(adapter)); rows];
            l.add_deltas(&x, &mut short, &one_by_one).unwrap();
            for (a, b) in long.iter().zip(&short) {
                assert!((a - b).abs() < 1e-5, "adapter {adapter}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn a_dora_adapter_scales_its_own_rows_only() {
        // Adapter 0 of `layer()` as DoRA with gain [2, 0.5] (folded into B) on a layer with
        // bias b0 [1, -1]: its rows become gain * (x W^T + delta) + b0.
        let mut l = layer();
        let gain = vec![2.0, 0.5];
        let base_bias = Some(vec![1.0, -1.0]);
        let p = l.pairs[0].as_mut().unwrap();
        p.b = vec![2.0, 1.0]; // diag(gain) [1, 2]
        p.b_t = Tensor::from_vec(p.b.clone(), (2, 1), &candle_core::Device::Cpu).unwrap();
        p.dora = Some(DoraRows { gain, base_bias });
        let x = [1.0, 2.0, 3.0, 1.0, 1.0, 1.0];
        // Base rows x W^T + b0 with x W^T = [3, 4] and [5, 6].
        let mut y = vec![4.0, 3.0, 6.0, 5.0];
        l.add_deltas(&x, &mut y, &[run(1, Some(0)), run(1, None)])
            .unwrap();
        // Row 0: delta [8, 16]; 2 * (3 + 8) + 1 = 23, 0.5 * (4 + 16) - 1 = 9. Row 1: base.
        assert_eq!(y, [23.0, 9.0, 6.0, 5.0]);
        let rows = GEMM_MIN_ROWS + 1;
        let x: Vec<f32> = (0..rows * 3).map(|i| (i as f32 * 0.37).sin()).collect();
        let base: Vec<f32> = (0..rows * 2).map(|i| (i as f32 * 0.11).cos()).collect();
        let (mut long, mut short) = (base.clone(), base);
        l.add_deltas(&x, &mut long, &[run(rows, Some(0))]).unwrap();
        l.add_deltas(&x, &mut short, &vec![run(1, Some(0)); rows])
            .unwrap();
        for (a, b) in long.iter().zip(&short) {
            assert!((a - b).abs() < 1e-5, "gemm {a} vs rows {b}");
        }
    }

    #[test]
    fn a_forward_without_routing_fails_and_routing_is_restored() {
        let l = layer();
        let x = Tensor::ones((1, 3), DType::F32, &candle_core::Device::Cpu).unwrap();
        let base = Tensor::zeros((1, 2), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(l.forward_infer(&x, base.clone()).is_err());
        let y = with_routing(&[run(1, Some(0))], || l.forward_infer(&x, base.clone())).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), [[4.0, 8.0]]);
        assert!(current_routing().is_none());
        // Rows that do not match the routing are an error, not a silent mix-up.
        assert!(with_routing(&[run(2, Some(0))], || l.forward_infer(&x, base)).is_err());
    }
}
