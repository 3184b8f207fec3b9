//! LoRA layers on the model's linear layers, saved and loaded in PEFT's format.
//!
//! Injection attaches a [`LoraLayer`] to each targeted [`Linear`] through its adapter slot;
//! the base weights are shared, never copied. Training runs the fused `lora_linear`
//! kernel (frozen base, gradients only for A and B); inference adds `scale * x A^T B^T` to
//! the frozen output of the fast CPU kernel. With `use_dora` a layer also carries DoRA's
//! magnitude ([`super::dora`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor, Var};
use kubeswift_kernels::{
    LoraDropout, lora_linear_grad_only, lora_linear_replay, lora_linear_with_dropout,
};
use rand::SeedableRng;
use rand::distr::{Distribution, Uniform};
use rand::rngs::StdRng;
use rand_distr::Normal;

use super::dora::{Dora, MAGNITUDE, magnitude_key, merged_weight, weight_norm};
use super::lora_config::{Init, LoraConfig, PeftLoraConfig, peft_key};
use super::pissa::{PissaSvd, converted_pair, pissa_inits};
use crate::model::{CausalLm, Linear, LinearAdapter};
use crate::train::optimizer::{Trainable, decays};

/// File names of a PEFT adapter folder.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// Errors of injecting, saving and loading adapters; they name the module or file.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("{0}")]
    Config(#[from] super::lora_config::LoraConfigError),
    #[error("--{arg}: {reason}")]
    Unsupported { arg: &'static str, reason: String },
    #[error("LoRA target_modules/target_regex match no linear layer of the model")]
    NoTargets,
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{what}: {source}")]
    Tensor {
        what: String,
        #[source]
        source: candle_core::Error,
    },
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
}

type Result<T> = std::result::Result<T, LoraError>;

fn terr(what: impl Into<String>) -> impl FnOnce(candle_core::Error) -> LoraError {
    let what = what.into();
    move |source| LoraError::Tensor { what, source }
}

/// Train/eval switch and dropout seed, shared by every layer of one model. The trainer sets
/// a new seed per micro-batch; a layer mixes in its own index, so the mask of every
/// (micro-batch, layer) is reproducible, including when gradient checkpointing recomputes
/// a layer and after a resume.
#[derive(Debug, Default)]
pub struct DropoutControl {
    training: AtomicBool,
    seed: AtomicU64,
}

impl DropoutControl {
    pub fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }

    pub fn set_seed(&self, seed: u64) {
        self.seed.store(seed, Ordering::Relaxed);
    }

    fn dropout(&self, p: f32, layer: u64) -> Option<LoraDropout> {
        (p > 0.0 && self.training.load(Ordering::Relaxed)).then(|| LoraDropout {
            p,
            seed: self.seed.load(Ordering::Relaxed) ^ layer.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        })
    }
}

/// One LoRA pair on a linear layer: `y = x W^T + b + scale * dropout(x) A^T B^T`, or with
/// DoRA the decomposed form of [`super::dora`].
#[derive(Debug)]
pub struct LoraLayer {
    /// `lora_A`, `[r, in]`.
    pub a: Var,
    /// `lora_B`, `[out, r]`.
    pub b: Var,
    /// With `lora_bias all`: a trainable copy of the layer's bias, and the frozen original
    /// (which the inference kernel still adds).
    pub bias: Option<Var>,
    frozen_bias: Option<Tensor>,
    /// `use_dora`: the magnitude vector and the base weight its norm is taken of.
    pub dora: Option<Dora>,
    pub scale: f64,
    dropout_p: f32,
    index: u64,
    control: Arc<DropoutControl>,
}

/// Which form of the fused kernel a plain LoRA training forward runs.
#[derive(Clone, Copy)]
enum PlainPass<'a> {
    Value,
    GradOnly,
    /// The layer's output from the forward (no trained bias, so it is the kernel's).
    Replay(&'a Tensor),
}

impl LoraLayer {
    /// The layer's merged weight (f32): `W + scale B A`, or DoRA's
    /// `(m / ||W + scale B A||)[:, None] * (W + scale B A)`, for the base weight `w`: a
    /// value, detached from the adapter's variables (see [`merged_weight`]).
    pub fn merged_weight(&self, w: &Tensor) -> candle_core::Result<Tensor> {
        let magnitude = self.dora.as_ref().map(|d| d.magnitude.as_tensor());
        merged_weight(
            w,
            self.a.as_tensor(),
            self.b.as_tensor(),
            self.scale,
            magnitude,
        )
    }

    /// DoRA only: the per-output-row gain `m / ||W + scale B A||` (f32 `[out]`).
    pub fn dora_gain(&self) -> candle_core::Result<Option<Tensor>> {
        self.dora
            .as_ref()
            .map(|d| d.gain(self.a.as_tensor(), self.b.as_tensor(), self.scale))
            .transpose()
    }

    /// Plain LoRA's training forward (not DoRA), as `pass` asks: the value, or through
    /// the kernel that skips the frozen product because the caller only backpropagates
    /// through the result, or replaying the value a forward saved.
    fn forward_train_plain(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        pass: PlainPass,
    ) -> candle_core::Result<Tensor> {
        let dropout = self.control.dropout(self.dropout_p, self.index);
        let frozen_bias = if self.bias.is_some() { None } else { bias };
        let (a, b) = (self.a.as_tensor(), self.b.as_tensor());
        let y = match pass {
            PlainPass::Value => {
                lora_linear_with_dropout(x, weight, frozen_bias, a, b, self.scale, dropout)?
            }
            PlainPass::GradOnly => {
                lora_linear_grad_only(x, weight, frozen_bias, a, b, self.scale, dropout)?
            }
            PlainPass::Replay(saved) => {
                // Only without a trained bias (see `forward_train_replay`): `saved` is the
                // kernel's output.
                lora_linear_replay(x, weight, frozen_bias, a, b, self.scale, dropout, saved)?
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(&b.as_tensor().to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }
}

impl LinearAdapter for LoraLayer {
    fn forward_train(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        if let Some(dora) = &self.dora {
            let dropout = self.control.dropout(self.dropout_p, self.index);
            let trained = self.bias.as_ref().map(|b| b.as_tensor());
            return dora.forward_train(
                x,
                self.a.as_tensor(),
                self.b.as_tensor(),
                self.scale,
                trained.or(bias),
                dropout,
            );
        }
        self.forward_train_plain(x, weight, bias, PlainPass::Value)
    }

    fn forward_train_grad_only(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        if self.dora.is_some() {
            // DoRA's magnitude gradient reads the layer's output value.
            return self.forward_train(x, weight, bias);
        }
        self.forward_train_plain(x, weight, bias, PlainPass::GradOnly)
    }

    fn replays(&self) -> bool {
        self.dora.is_none() && self.bias.is_none()
    }

    fn forward_train_replay(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        saved: &Tensor,
    ) -> candle_core::Result<Tensor> {
        if !self.replays() {
            // DoRA's output is not the kernel's, and a trained bias is added after it:
            // neither has the kernel's output at hand to replay, so both recompute.
            return self.forward_train(x, weight, bias);
        }
        self.forward_train_plain(x, weight, bias, PlainPass::Replay(saved))
    }

    fn forward_infer(&self, x: &Tensor, base: Tensor) -> candle_core::Result<Tensor> {
        if let Some(dora) = &self.dora {
            let trained = self.bias.as_ref().map(|b| b.as_tensor());
            let (a, b) = (self.a.as_tensor(), self.b.as_tensor());
            return dora.forward_infer(x, base, a, b, self.scale, trained);
        }
        let a = self.a.as_tensor().to_dtype(DType::F32)?;
        let b = self.b.as_tensor().to_dtype(DType::F32)?;
        let delta = (x.matmul(&a.t()?)?.matmul(&b.t()?)? * self.scale)?;
        let y = (base + delta)?;
        match (&self.bias, &self.frozen_bias) {
            // The frozen output already holds the original bias: swap it for the trained one.
            (Some(trained), Some(frozen)) => {
                let shift =
                    (trained.as_tensor().to_dtype(DType::F32)? - frozen.to_dtype(DType::F32)?)?;
                y.broadcast_add(&shift)
            }
            _ => Ok(y),
        }
    }
}

/// The adapters of one model: every LoRA layer by module path, the `modules_to_save`
/// variables by checkpoint name, and the PEFT config they save with.
#[derive(Debug)]
pub struct LoraAdapters {
    pub layers: Vec<(String, Arc<LoraLayer>)>,
    pub saved: Vec<(String, Var)>,
    pub peft: PeftLoraConfig,
    pub control: Arc<DropoutControl>,
    /// PiSSA only: each layer's initial `(A0, B0)` by module path, to save the adapter
    /// converted to a plain LoRA on the original base (see [`super::pissa`]).
    pub initial: Vec<(String, Tensor, Tensor)>,
}

/// PiSSA's SVD for an init, `None` for the other inits.
fn pissa_svd(init: &Init) -> Option<PissaSvd> {
    match init {
        Init::Pissa => Some(PissaSvd::Exact),
        Init::PissaNiter(niter) => Some(PissaSvd::Randomized { niter: *niter }),
        _ => None,
    }
}

/// Each PiSSA layer's initial `(A0, B0)` values (`[r, in]`, `[out, r]`) by module path.
type PissaPairs = HashMap<String, (Vec<f32>, Vec<f32>)>;

/// Runs PiSSA on the layers at `paths`: each weight becomes its residual; returns each
/// layer's initial `(A0, B0)` values by path.
///
/// The SVDs of a few layers at a time run together ([`pissa_inits`]) and their residuals
/// replace the weights at once, so the model never holds more than those few weights
/// twice (all of them would double a 7B model's memory for the length of the init).
fn pissa_for(
    model: &mut CausalLm,
    paths: &[String],
    rank: usize,
    scale: f64,
    svd: PissaSvd,
    rng: &mut StdRng,
) -> Result<PissaPairs> {
    let started = std::time::Instant::now();
    let mut targets: Vec<(String, &mut Linear)> = linears(model)
        .into_iter()
        .filter(|(path, _)| paths.contains(path))
        .collect();
    let mut out = HashMap::new();
    for chunk in targets.chunks_mut(PISSA_CHUNK) {
        let weights: Vec<&Tensor> = chunk.iter().map(|(_, linear)| linear.weight()).collect();
        let inits = pissa_inits(&weights, rank, scale, svd, rng);
        for ((path, linear), init) in chunk.iter_mut().zip(inits) {
            let init = init.map_err(terr(format!("{path}: PiSSA init")))?;
            let bias = linear.bias().cloned();
            linear.set_weight(init.residual, bias);
            out.insert(path.clone(), (init.a, init.b));
        }
    }
    tracing::info!(
        layers = out.len(),
        svd = ?svd,
        seconds = started.elapsed().as_secs_f64(),
        "PiSSA: adapters initialised from the base weights' singular vectors"
    );
    Ok(out)
}

/// Layers whose PiSSA SVDs run together: enough that the threads stay busy on layers of
/// unequal sizes (q and k, or gate and down), few enough to hold their weights twice.
const PISSA_CHUNK: usize = 8;

/// The precomputed PiSSA `(A0, B0)` of the layer at `path`.
fn take_pissa(path: &str, inits: &mut PissaPairs) -> Result<(Vec<f32>, Vec<f32>)> {
    inits.remove(path).ok_or_else(|| LoraError::Tensor {
        what: format!("{path}: PiSSA init"),
        source: candle_core::Error::Msg("no PiSSA init was computed for this layer".into()),
    })
}

/// Every linear layer of the model with its module path; `lm_head` last.
fn linears(model: &mut CausalLm) -> Vec<(String, &mut Linear)> {
    let mut out = model.model.linears_mut();
    if !model.config.tie_word_embeddings {
        out.push(("lm_head".into(), &mut model.lm_head));
    }
    out
}

fn module_name(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

fn adapter_dtype(cfg: &LoraConfig) -> Result<DType> {
    match cfg.dtype.as_deref() {
        None | Some("float32") | Some("fp32") => Ok(DType::F32),
        Some("bfloat16") | Some("bf16") => Ok(DType::BF16),
        Some("float16") | Some("fp16") => Ok(DType::F16),
        Some(other) => Err(LoraError::Unsupported {
            arg: "lora_dtype",
            reason: format!("{other} is not a float dtype"),
        }),
    }
}

/// Initial `(A, B)` as PEFT makes them (`init_lora_weights`): `true` Kaiming-uniform A
/// (bound `1/sqrt(in)`) and zero B; `gaussian` A ~ N(0, 1/r) and zero B; `false` both
/// with nn.Linear's default init, so the adapter changes the output from the start.
fn init_pair(
    init: &Init,
    rank: usize,
    inp: usize,
    out: usize,
    rng: &mut StdRng,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let uniform = |fan_in: usize, n: usize, rng: &mut StdRng| -> Vec<f32> {
        let bound = 1.0 / (fan_in as f32).sqrt();
        match Uniform::new(-bound, bound) {
            Ok(u) => (0..n).map(|_| u.sample(rng)).collect(),
            Err(_) => vec![0.0; n],
        }
    };
    match init {
        Init::Default => Ok((uniform(inp, rank * inp, rng), vec![0.0; out * rank])),
        Init::Random => Ok((
            uniform(inp, rank * inp, rng),
            uniform(rank, out * rank, rng),
        )),
        Init::Gaussian => {
            let normal =
                Normal::new(0.0f32, 1.0 / rank as f32).map_err(|e| LoraError::Unsupported {
                    arg: "init_weights",
                    reason: e.to_string(),
                })?;
            Ok((
                (0..rank * inp).map(|_| normal.sample(rng)).collect(),
                vec![0.0; out * rank],
            ))
        }
        // PiSSA needs the base weight: `apply_pissa`.
        Init::Pissa | Init::PissaNiter(_) => Err(LoraError::Unsupported {
            arg: "init_weights",
            reason: "PiSSA is initialised from the base weight, not here".into(),
        }),
    }
}

fn var(
    values: Vec<f32>,
    shape: (usize, usize),
    dtype: DType,
    device: &Device,
    what: &str,
) -> Result<Var> {
    let t = Tensor::from_vec(values, shape, device)
        .and_then(|t| t.to_dtype(dtype))
        .map_err(terr(what))?;
    Var::from_tensor(&t).map_err(terr(what))
}

impl LoraAdapters {
    /// Adds fresh adapters to every linear layer `cfg` targets (random init from `seed`)
    /// and makes the `modules_to_save` parameters trainable.
    pub fn inject(
        model: &mut CausalLm,
        cfg: &LoraConfig,
        seed: u64,
        base_model: &str,
    ) -> Result<Self> {
        if cfg.use_dora && cfg.init.is_pissa() {
            return Err(dora_with_pissa());
        }
        let dtype = adapter_dtype(cfg)?;
        let device = model.device().clone();
        let control = Arc::new(DropoutControl::default());
        let mut rng = StdRng::seed_from_u64(seed);
        let mut pissa = match pissa_svd(&cfg.init) {
            Some(svd) => {
                let targets: Vec<String> = linears(model)
                    .into_iter()
                    .map(|(path, _)| path)
                    .filter(|path| path != "lm_head" && cfg.targets_module(path, false))
                    .collect();
                pissa_for(model, &targets, cfg.rank, cfg.scale(), svd, &mut rng)?
            }
            None => HashMap::new(),
        };
        let mut layers = Vec::new();
        let mut names = Vec::new();
        let mut initial = Vec::new();
        for (index, (path, linear)) in linears(model).into_iter().enumerate() {
            if !cfg.targets_module(&path, path == "lm_head") {
                continue;
            }
            if path == "lm_head" {
                return Err(LoraError::Unsupported {
                    arg: "target_modules",
                    reason: "LoRA on lm_head is not supported yet (use --modules_to_save lm_head)"
                        .into(),
                });
            }
            let (out, inp) = (linear.out_features(), linear.in_features());
            let (a, b) = match pissa_svd(&cfg.init) {
                Some(_) => {
                    let (a, b) = take_pissa(&path, &mut pissa)?;
                    let t = |v: &[f32], shape: (usize, usize)| {
                        Tensor::from_slice(v, shape, &device).map_err(terr(format!("{path} PiSSA")))
                    };
                    initial.push((
                        path.clone(),
                        t(&a, (cfg.rank, inp))?,
                        t(&b, (out, cfg.rank))?,
                    ));
                    (a, b)
                }
                None => init_pair(&cfg.init, cfg.rank, inp, out, &mut rng)?,
            };
            let a = var(
                a,
                (cfg.rank, inp),
                dtype,
                &device,
                &format!("{path}.lora_A"),
            )?;
            let b = var(
                b,
                (out, cfg.rank),
                dtype,
                &device,
                &format!("{path}.lora_B"),
            )?;
            let frozen_bias = linear.bias().filter(|_| cfg.train_bias).cloned();
            let bias = match &frozen_bias {
                Some(b) => Some(Var::from_tensor(b).map_err(terr(format!("{path}.bias")))?),
                None => None,
            };
            // PEFT's DoRA init: m = ||W + scale B A|| per output row, in the adapter dtype.
            let dora = match cfg.use_dora {
                true => {
                    let what = format!("{path}.{MAGNITUDE}");
                    let m = weight_norm(linear.weight(), a.as_tensor(), b.as_tensor(), cfg.scale())
                        .and_then(|m| m.to_dtype(dtype))
                        .and_then(|m| Var::from_tensor(&m))
                        .map_err(terr(what))?;
                    Some(Dora::new(
                        m,
                        linear.weight().clone(),
                        linear.bias().cloned(),
                    ))
                }
                false => None,
            };
            let layer = Arc::new(LoraLayer {
                a,
                b,
                bias,
                frozen_bias,
                dora,
                scale: cfg.scale(),
                dropout_p: cfg.dropout as f32,
                index: index as u64,
                control: control.clone(),
            });
            linear.set_adapter(Some(layer.clone()));
            let name = module_name(&path).to_string();
            if !names.contains(&name) {
                names.push(name);
            }
            layers.push((path, layer));
        }
        if layers.is_empty() {
            return Err(LoraError::NoTargets);
        }
        let saved = make_modules_to_save(model, &cfg.modules_to_save)?;
        Ok(LoraAdapters {
            layers,
            saved,
            peft: cfg.to_peft(base_model, names),
            control,
            initial,
        })
    }

    /// Loads a PEFT adapter folder (ours or PEFT's) onto the model. With `trainable` the
    /// weights become variables that keep training; otherwise they are plain tensors.
    pub fn load(model: &mut CausalLm, dir: &Path, trainable: bool) -> Result<Self> {
        let config_path = dir.join(ADAPTER_CONFIG);
        if !config_path.exists()
            && let Some(newest) = newest_checkpoint_in(dir)
        {
            // A training run's folder (or its output root) rather than one of its
            // checkpoints: say which one was probably meant.
            return Err(LoraError::File {
                file: config_path.display().to_string(),
                message: format!(
                    "not found: {} is a run folder, not an adapter; name one of its \
                     checkpoints (the newest is {})",
                    dir.display(),
                    newest.display()
                ),
            });
        }
        let peft = PeftLoraConfig::load(&config_path)?;
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        let file_err = |message: String| LoraError::File {
            file: weights_path.display().to_string(),
            message,
        };
        if !weights_path.is_file() {
            return Err(file_err("not found (an adapter folder holds adapter_model.safetensors and adapter_config.json)".into()));
        }
        let device = model.device().clone();
        let mut tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load(&weights_path, &device)
                .map_err(|e| file_err(e.to_string()))?;
        let control = Arc::new(DropoutControl::default());
        let scale = peft.scale();
        let model_dtype = model.dtype();
        let init = Init::from_value(&peft.init_lora_weights);
        // PEFT re-runs PiSSA on the original base when it loads a PiSSA adapter, so the
        // trained A and B sit on the same residual. The exact SVD is deterministic; a
        // randomized one (pissa_niter_N) is re-run exactly here, which matches the training
        // run's residual only approximately: `converted/default/` is exact for those.
        let pissa = init.as_ref().and_then(pissa_svd).map(|_| PissaSvd::Exact);
        if peft.use_dora && pissa.is_some() {
            return Err(LoraError::File {
                file: config_path.display().to_string(),
                message: dora_with_pissa().to_string(),
            });
        }
        let mut inits = match pissa {
            Some(svd) => {
                let adapted: Vec<String> = linears(model)
                    .into_iter()
                    .map(|(path, _)| path)
                    .filter(|path| tensors.contains_key(&peft_key(path, "lora_A")))
                    .collect();
                let mut rng = StdRng::seed_from_u64(0);
                pissa_for(model, &adapted, peft.r, scale, svd, &mut rng)?
            }
            None => HashMap::new(),
        };
        let mut initial = Vec::new();
        let mut layers = Vec::new();
        for (index, (path, linear)) in linears(model).into_iter().enumerate() {
            let ka = peft_key(&path, "lora_A");
            let kb = peft_key(&path, "lora_B");
            let (Some(a), Some(b)) = (tensors.remove(&ka), tensors.remove(&kb)) else {
                continue;
            };
            let (out, inp) = (linear.out_features(), linear.in_features());
            if a.dims() != [peft.r, inp] || b.dims() != [out, peft.r] {
                return Err(file_err(format!(
                    "{path}: lora_A {:?} / lora_B {:?} do not fit a [{out}, {inp}] layer with r {}",
                    a.dims(),
                    b.dims(),
                    peft.r
                )));
            }
            if pissa.is_some() {
                let (a0, b0) = take_pissa(&path, &mut inits)?;
                let t = |v: Vec<f32>, shape: (usize, usize)| {
                    Tensor::from_vec(v, shape, &device).map_err(terr(format!("{path} PiSSA")))
                };
                initial.push((path.clone(), t(a0, (peft.r, inp))?, t(b0, (out, peft.r))?));
            }
            let bias_key = format!("base_model.model.{path}.base_layer.bias");
            let bias = match tensors.remove(&bias_key) {
                Some(t) => Some(
                    Var::from_tensor(&t.to_dtype(model_dtype).map_err(terr(&bias_key))?)
                        .map_err(terr(&bias_key))?,
                ),
                None => None,
            };
            let frozen_bias = bias.as_ref().and(linear.bias().cloned());
            let dora = match peft.use_dora {
                true => {
                    let km = magnitude_key(&path);
                    // PEFT saves the key without `.weight`; accept a file that kept it.
                    let m = tensors
                        .remove(&km)
                        .or_else(|| tensors.remove(&format!("{km}.weight")))
                        .ok_or_else(|| {
                            file_err(format!(
                                "{path}: adapter_config.json has use_dora true but there is no {km}"
                            ))
                        })?;
                    if m.dims() != [out] {
                        return Err(file_err(format!(
                            "{km}: shape {:?}, the layer has {out} outputs",
                            m.dims()
                        )));
                    }
                    let m = Var::from_tensor(&m).map_err(terr(&km))?;
                    let mut dora = Dora::new(m, linear.weight().clone(), linear.bias().cloned());
                    if !trainable {
                        dora.freeze(&a, &b, scale).map_err(terr(&km))?;
                    }
                    Some(dora)
                }
                false => None,
            };
            let layer = Arc::new(LoraLayer {
                a: Var::from_tensor(&a).map_err(terr(&ka))?,
                b: Var::from_tensor(&b).map_err(terr(&kb))?,
                bias,
                frozen_bias,
                dora,
                scale,
                dropout_p: if trainable {
                    peft.lora_dropout as f32
                } else {
                    0.0
                },
                index: index as u64,
                control: control.clone(),
            });
            linear.set_adapter(Some(layer.clone()));
            layers.push((path, layer));
        }
        // What is left: modules_to_save weights (`base_model.model.<param name>`).
        let mut saved = Vec::new();
        let mut leftover: Vec<String> = tensors.keys().cloned().collect();
        leftover.sort();
        if let Some(k) = leftover.iter().find(|k| k.contains(MAGNITUDE)) {
            let why = if peft.use_dora {
                "no lora_A/lora_B of this model's layers goes with it"
            } else {
                "adapter_config.json has use_dora false"
            };
            return Err(file_err(format!("{k} is a DoRA magnitude, but {why}")));
        }
        if !leftover.is_empty() {
            let wanted: HashMap<String, Tensor> = tensors
                .into_iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("base_model.model.")
                        .map(|n| (n.to_string(), v))
                })
                .collect();
            let made = model.make_trainable(|name| wanted.contains_key(name))?;
            for (name, v) in made {
                let value = &wanted[&name];
                if value.dims() != v.dims() {
                    return Err(file_err(format!(
                        "{name}: shape {:?}, the model has {:?}",
                        value.dims(),
                        v.dims()
                    )));
                }
                v.set(&value.to_dtype(v.dtype()).map_err(terr(&name))?)
                    .map_err(terr(&name))?;
                saved.push((name, v));
            }
            if saved.len() != wanted.len() || wanted.len() != leftover.len() {
                let known: Vec<&String> = saved.iter().map(|(n, _)| n).collect();
                let unknown: Vec<&String> = leftover
                    .iter()
                    .filter(|k| !known.iter().any(|n| k.ends_with(n.as_str())))
                    .take(3)
                    .collect();
                return Err(file_err(format!(
                    "tensors that fit no module of the model: {unknown:?}"
                )));
            }
        }
        if layers.is_empty() && saved.is_empty() {
            return Err(file_err(
                "holds no LoRA weight for any linear layer of this model".into(),
            ));
        }
        if !trainable {
            control.set_training(false);
        }
        Ok(LoraAdapters {
            layers,
            saved,
            peft,
            control,
            initial,
        })
    }

    /// The trainable parameters for the optimizer, by PEFT key. LoRA+ (`lorap_lr_ratio`)
    /// scales the learning rate of every `lora_B`.
    pub fn trainables(&self, lorap_lr_ratio: Option<f64>) -> Vec<Trainable> {
        let mut out = Vec::new();
        for (path, layer) in &self.layers {
            out.push(Trainable {
                name: peft_key(path, "lora_A"),
                var: layer.a.clone(),
                decay: true,
                lr_scale: 1.0,
            });
            out.push(Trainable {
                name: peft_key(path, "lora_B"),
                var: layer.b.clone(),
                decay: true,
                lr_scale: lorap_lr_ratio.unwrap_or(1.0),
            });
            if let Some(dora) = &layer.dora {
                // LoRA+ puts every 1-d adapter parameter in lora_B's group (PEFT's
                // create_loraplus_optimizer, ms-swift's lorap): the magnitude too.
                let name = magnitude_key(path);
                out.push(Trainable {
                    decay: decays(&name),
                    name,
                    var: dora.magnitude.clone(),
                    lr_scale: lorap_lr_ratio.unwrap_or(1.0),
                });
            }
            if let Some(b) = &layer.bias {
                out.push(Trainable {
                    name: format!("base_model.model.{path}.base_layer.bias"),
                    var: b.clone(),
                    decay: false,
                    lr_scale: 1.0,
                });
            }
        }
        for (name, v) in &self.saved {
            out.push(Trainable {
                name: format!("base_model.model.{name}"),
                var: v.clone(),
                decay: decays(name),
                lr_scale: 1.0,
            });
        }
        out
    }

    /// Writes `adapter_model.safetensors` (PEFT's keys, A `[r, in]`, B `[out, r]`) and
    /// `adapter_config.json` into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let map: HashMap<String, Tensor> = self
            .trainables(None)
            .into_iter()
            .map(|t| (t.name, t.var.as_tensor().clone()))
            .collect();
        let path = dir.join(ADAPTER_WEIGHTS);
        crate::storage::weights_file::save(&map, &path).map_err(|e| LoraError::File {
            file: path.display().to_string(),
            message: e.to_string(),
        })?;
        let config = dir.join(ADAPTER_CONFIG);
        self.peft.save(&config).map_err(|e| LoraError::File {
            file: config.display().to_string(),
            message: e.to_string(),
        })?;
        if !self.initial.is_empty() {
            self.save_converted(&dir.join("converted").join("default"))?;
        }
        Ok(())
    }

    /// PiSSA: the adapter as a plain LoRA on the original base, where ms-swift writes it
    /// (`checkpoint-N/converted/default`, PEFT's `path_initial_model_for_weight_conversion`).
    pub fn save_converted(&self, dir: &Path) -> Result<()> {
        let file_err = |file: &Path, message: String| LoraError::File {
            file: file.display().to_string(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e.to_string()))?;
        let mut map: HashMap<String, Tensor> = self
            .trainables(None)
            .into_iter()
            .map(|t| (t.name, t.var.as_tensor().clone()))
            .collect();
        for (path, a0, b0) in &self.initial {
            let (ka, kb) = (peft_key(path, "lora_A"), peft_key(path, "lora_B"));
            let (Some(a), Some(b)) = (map.get(&ka), map.get(&kb)) else {
                continue;
            };
            let (a2, b2) =
                converted_pair(a, b, a0, b0).map_err(terr(format!("{path} PiSSA conversion")))?;
            map.insert(ka, a2);
            map.insert(kb, b2);
        }
        let weights = dir.join(ADAPTER_WEIGHTS);
        crate::storage::weights_file::save(&map, &weights)
            .map_err(|e| file_err(&weights, e.to_string()))?;
        let mut peft = self.peft.clone();
        peft.r *= 2;
        peft.lora_alpha *= if peft.use_rslora { 2f64.sqrt() } else { 2.0 };
        peft.init_lora_weights = serde_json::Value::Bool(true);
        let config = dir.join(ADAPTER_CONFIG);
        peft.save(&config)
            .map_err(|e| file_err(&config, e.to_string()))
    }
}

fn dora_with_pissa() -> LoraError {
    LoraError::Unsupported {
        arg: "use_dora",
        reason: "DoRA with --init_weights pissa/pissa_niter_N is not supported yet; use \
                 --init_weights true, false or gaussian with --use_dora true"
            .into(),
    }
}

/// `--modules_to_save`: the parameters of modules whose path equals a name or ends with
/// `.name` train fully and are saved with the adapter.
fn make_modules_to_save(model: &mut CausalLm, names: &[String]) -> Result<Vec<(String, Var)>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let matches = |param: &str| {
        let module = param.rsplit_once('.').map_or(param, |(m, _)| m);
        names
            .iter()
            .any(|n| module == n || module.ends_with(&format!(".{n}")))
    };
    let made = model.make_trainable(matches)?;
    if made.is_empty() {
        return Err(LoraError::Unsupported {
            arg: "modules_to_save",
            reason: format!("{names:?} match no module of the model"),
        });
    }
    Ok(made)
}

/// The highest-numbered `checkpoint-N` folder in `dir` or in its `vN-*` run folders.
fn newest_checkpoint_in(dir: &Path) -> Option<std::path::PathBuf> {
    let step = |p: &Path| {
        p.file_name()?
            .to_str()?
            .strip_prefix("checkpoint-")?
            .parse::<u64>()
            .ok()
    };
    let children = |d: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(d)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found: Vec<std::path::PathBuf> = children(dir);
    let runs: Vec<_> = found
        .iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('v') && n.contains('-'))
        })
        .cloned()
        .collect();
    for run in runs {
        found.extend(children(&run));
    }
    found
        .into_iter()
        .filter_map(|p| step(&p).map(|s| (s, p)))
        .max_by_key(|(s, p)| (*s, p.clone()))
        .map(|(_, p)| p)
}
