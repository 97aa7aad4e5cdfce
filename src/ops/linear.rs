//! Linear and embedding layers that keep weights exactly as the HF checkpoint stores them, so that
//! saving, gradients and parameter names need no translation.

use candle_core::{DType, Result, Shape, Tensor};

use super::cpu;
use super::custom;
use super::gemm::Data;
use super::linear_bf16;
use super::linear_fused::FusedLinear;
use super::packed_linear::{self, Greedy, PackedCache, PackedWeight};
use super::quant::QuantMatrix;

/// How a linear weight is laid out. HF `nn.Linear` stores `[out, in]` (y = x·Wᵀ); GPT-2's `Conv1D`
/// stores `[in, out]` (y = x·W). The layout travels with the weight instead of transposing it at
/// load time, so the tensor stays the one the checkpoint named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    OutIn,
    InOut,
}

impl WeightLayout {
    /// The stored shape of a weight from `d_in` inputs to `d_out` outputs.
    pub fn shape(self, d_in: usize, d_out: usize) -> (usize, usize) {
        match self {
            WeightLayout::OutIn => (d_out, d_in),
            WeightLayout::InOut => (d_in, d_out),
        }
    }

    /// (in, out) of a weight stored in this layout with shape `w`.
    pub fn in_out(self, w: &Shape) -> Result<(usize, usize)> {
        let (a, b) = w.dims2()?;
        Ok(match self {
            WeightLayout::OutIn => (b, a),
            WeightLayout::InOut => (a, b),
        })
    }
}

/// The dimensions of x with the last one, the features, replaced by `d_out`.
pub(super) fn output_dims(x: &[usize], d_out: usize) -> Vec<usize> {
    let mut dims = x.to_vec();
    if let Some(last) = dims.last_mut() {
        *last = d_out;
    }
    dims
}

/// Output elements above which a forward that writes its product takes candle's GEMM even when
/// the packed kernel could serve it: a full-vocabulary head over a whole canvas writes more
/// than it multiplies, and the GEMM stores its first k-block without reading the output back
/// (257 × 49152 × 576: 78–108 GFLOP/s packed vs 100–142 for the GEMM; 33 rows: even). The
/// greedy head never writes it and always takes the packed kernel, and so do bf16 weights (the
/// alternative widens them to f32 on every call).
const PACKED_MAX_OUTPUT: usize = 1 << 22;

#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub layout: WeightLayout,
    /// The weight in the inference GEMM's layout, made on the first forward that needs no
    /// gradient (packed_linear.rs).
    packed: PackedCache,
    /// Kept-quantised blocks (quant/): when present they are the weight, every forward takes
    /// them, and `weight` is a zero placeholder of the right shape that holds no memory.
    quant: Option<QuantMatrix>,
    /// The packed copy is the only copy (`release_for_inference`): `weight` is a placeholder
    /// of the right shape, and a forward that would read it is an error.
    released: bool,
    /// Mixed-precision training (`compute_in_bf16`): the products take bf16 operands, the
    /// weight (an f32 master) rounded to bf16 on each forward.
    bf16_products: bool,
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linear")
            .field("weight", &self.weight)
            .field("bias", &self.bias)
            .field("layout", &self.layout)
            .field("packed", &self.packed.get().is_some())
            .field("quant", &self.quant.as_ref().map(|q| q.ty))
            .field("released", &self.released)
            .field("bf16_products", &self.bf16_products)
            .finish()
    }
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>, layout: WeightLayout) -> Self {
        Self {
            weight,
            bias,
            layout,
            packed: PackedCache::default(),
            quant: None,
            released: false,
            bf16_products: false,
        }
    }

    /// Mixed precision, as autocast runs a linear layer: the products in bf16 operands with f32
    /// accumulation, the weight staying what it is (the f32 master weight a training step
    /// updates) and x, y and the gradients in their own dtypes.
    pub fn compute_in_bf16(&mut self) {
        self.bf16_products = true;
    }

    /// A zero placeholder of `shape` that holds one element of memory.
    fn placeholder(shape: (usize, usize), dtype: DType) -> Result<Tensor> {
        Tensor::zeros((), dtype, &candle_core::Device::Cpu)?.broadcast_as(shape)
    }

    /// For a model that will only be run: packs a bf16 CPU weight now and drops the stored copy,
    /// so the weight occupies memory once (a bf16 8B model: 16 GB, not 32). The tensor's memory
    /// is freed when no other holder (the loaded checkpoint's map, a tied embedding) is left.
    /// Other weights (f32, whose large heads take candle's GEMM; quantised; on a GPU) are kept.
    /// Returns whether this weight was released.
    pub fn release_for_inference(&mut self) -> Result<bool> {
        if self.released
            || self.quant.is_some()
            || self.weight.dtype() != DType::BF16
            || !self.weight.device().is_cpu()
        {
            return Ok(false);
        }
        self.packed()?;
        self.weight = Self::placeholder(self.weight.dims2()?, DType::BF16)?;
        self.released = true;
        Ok(true)
    }

    /// A linear whose weight stays quantised (inference only; `[out, in]` = `[q.rows, q.cols]`).
    pub fn quantized(q: QuantMatrix, bias: Option<Tensor>) -> Result<Self> {
        let placeholder = Self::placeholder((q.rows, q.cols), DType::F32)?;
        let mut lin = Self::new(placeholder, bias, WeightLayout::OutIn);
        lin.quant = Some(q);
        Ok(lin)
    }

    /// The quantised weight, when the weight is kept quantised.
    pub fn quantized_weight(&self) -> Option<&QuantMatrix> {
        self.quant.as_ref()
    }

    /// x: [..., in] → [..., out]. Leading dimensions are flattened so one 2-D GEMM does the work;
    /// on f32 CPU tensors that GEMM, the bias and the backward pass are one node (linear_fused.rs).
    /// A forward nothing will differentiate (neither x nor the weight is a variable or computed
    /// from one), which is every forward of a model being run, uses the weight packed once.
    /// bf16 CPU tensors take dlm's bf16 GEMM either way (linear_bf16.rs).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(q) = &self.quant {
            return q.forward(x, self.bias.as_ref());
        }
        if self.released {
            self.check_released_input(x)?;
            return self.forward_packed(x);
        }
        if self.bf16_products {
            let mut ts = vec![x, &self.weight];
            ts.extend(self.bias.as_ref());
            return match linear_bf16::fusable_mixed(&ts) {
                true => linear_bf16::apply(self.layout, &ts),
                false => self.forward_composed(x),
            };
        }
        if self.packable(x)
            && (x.dtype() == DType::BF16 || self.output_elems(x) <= PACKED_MAX_OUTPUT)
        {
            return self.forward_packed(x);
        }
        let mut ts = vec![x, &self.weight];
        ts.extend(self.bias.as_ref());
        if cpu::fusable(&ts) {
            let op = FusedLinear {
                layout: self.layout,
            };
            return custom::apply(op, &ts);
        }
        if linear_bf16::fusable(&ts) {
            return linear_bf16::apply(self.layout, &ts);
        }
        self.forward_composed(x)
    }

    /// x through several layers of its width (a block's q, k and v projections; its gate and
    /// up): kept-quantised weights take x quantised once and one parallel op for all their
    /// products (`QuantMatrix::forward_many`); other weights are each their own `forward`.
    pub fn forward_each<const N: usize>(layers: [&Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
        let quantised: Option<Vec<_>> = layers
            .iter()
            .map(|l| l.quant.as_ref().map(|q| (q, l.bias.as_ref())))
            .collect();
        let ys = match quantised {
            Some(weights) => QuantMatrix::forward_many(&weights, x)?,
            None => layers.iter().map(|l| l.forward(x)).collect::<Result<_>>()?,
        };
        <[Tensor; N]>::try_from(ys)
            .map_err(|ys| candle_core::Error::Msg(format!("{} outputs of {N} layers", ys.len())))
    }

    /// The inference path: y = x·Wᵀ (+ b) with the packed weight, as an untracked tensor of x's
    /// dtype (f32 accumulation either way).
    fn forward_packed(&self, x: &Tensor) -> Result<Tensor> {
        let (packed, rows) = self.packed_for(x)?;
        let (d_in, d_out) = self.in_out()?;
        let mut y = match &self.bias {
            Some(b) => linear_bf16::bias_f32(b)?.repeat(rows),
            None => vec![0f32; rows * d_out],
        };
        linear_bf16::with_matrix(x, rows, d_in, |x| {
            packed.matmul_acc(x, &mut y);
            Ok(())
        })?;
        let dims = output_dims(x.dims(), d_out);
        match x.dtype() {
            DType::BF16 => Tensor::from_vec(linear_bf16::to_bf16(&y), dims, x.device()),
            _ => Tensor::from_vec(y, dims, x.device()),
        }
    }

    /// The greedy choice (first maximum, its log-probability) of every row of x·Wᵀ + b, x of
    /// shape [..., in]: what a greedy sampler needs from an LM head. On the packed path the
    /// [rows, out] product is never written (for a 49k-token vocabulary that is 200 KB a row);
    /// elsewhere it is the forward, reduced row by row.
    pub fn greedy_rows(&self, x: &Tensor) -> Result<Vec<Greedy>> {
        if self.released {
            self.check_released_input(x)?;
        }
        if self.released || self.packable(x) {
            let (packed, rows) = self.packed_for(x)?;
            let bias = self.bias.as_ref().map(linear_bf16::bias_f32).transpose()?;
            let d_in = self.in_out()?.0;
            return linear_bf16::with_matrix(x, rows, d_in, |x| {
                Ok(packed.greedy_rows(x, bias.as_deref()))
            });
        }
        let y = self.forward(x)?.to_dtype(candle_core::DType::F32)?;
        let width = y.dims().last().copied().unwrap_or(0);
        cpu::with_data(&y, |y| Ok(y.chunks(width.max(1)).map(Greedy::of).collect()))
    }

    /// Whether the packed kernel serves x: nothing to differentiate, and f32 on the AVX2 path
    /// or bf16 on any.
    fn packable(&self, x: &Tensor) -> bool {
        let mut ts = vec![x, &self.weight];
        ts.extend(self.bias.as_ref());
        self.quant.is_none()
            && ((packed_linear::f32_fast() && cpu::fusable(&ts)) || linear_bf16::fusable(&ts))
            && !ts.iter().any(|t| t.track_op())
    }

    /// A released weight serves untracked CPU inputs only: it has nothing to differentiate.
    fn check_released_input(&self, x: &Tensor) -> Result<()> {
        if x.track_op() || !x.device().is_cpu() {
            candle_core::bail!(
                "linear: this weight was packed for inference and its stored copy released; \
                 gradients and other devices need the model loaded without release_for_inference"
            );
        }
        Ok(())
    }

    /// (in, out) of the weight in its layout.
    fn in_out(&self) -> Result<(usize, usize)> {
        self.layout.in_out(self.weight.shape())
    }

    /// Elements of the forward's output (0 when the weight is not a matrix: the forward says why).
    fn output_elems(&self, x: &Tensor) -> usize {
        let d_in = x.dims().last().copied().unwrap_or(1).max(1);
        self.in_out()
            .map_or(0, |(_, d_out)| x.elem_count() / d_in * d_out)
    }

    /// The packed weight (made on first use) and the number of rows of x, whose last dimension
    /// must be the weight's input size.
    fn packed_for(&self, x: &Tensor) -> Result<(&PackedWeight, usize)> {
        let (d_in, _) = self.in_out()?;
        if x.dims().last() != Some(&d_in) {
            candle_core::bail!(
                "linear: input {:?}, weight {:?}",
                x.dims(),
                self.weight.dims()
            );
        }
        Ok((self.packed()?, x.elem_count() / d_in.max(1)))
    }

    /// The packed weight, made from `weight` on first use.
    fn packed(&self) -> Result<&PackedWeight> {
        if let Some(p) = self.packed.get() {
            return Ok(p);
        }
        let (d_in, d_out) = self.in_out()?;
        let transposed = self.layout == WeightLayout::InOut;
        let p = match self.weight.dtype() {
            DType::BF16 => cpu::with_slice(&self.weight, |w| {
                Ok(PackedWeight::new(Data::Bf16(w), d_out, d_in, transposed))
            })?,
            _ => cpu::with_data(&self.weight, |w| {
                Ok(PackedWeight::new(Data::F32(w), d_out, d_in, transposed))
            })?,
        };
        Ok(self.packed.get_or_init(|| p))
    }

    /// The composed reference.
    pub fn forward_composed(&self, x: &Tensor) -> Result<Tensor> {
        if self.released {
            candle_core::bail!("linear: the composed reference needs the released weight");
        }
        let dims = x.dims().to_vec();
        let d_in = *dims
            .last()
            .ok_or_else(|| candle_core::Error::Msg("linear on a scalar".into()))?;
        let rows = x.elem_count() / d_in.max(1);
        // Mixed precision (a bf16 weight or bf16 products, f32 activations): the product in
        // bf16, as autocast runs it, and the result back in x's dtype.
        let w = match self.bf16_products {
            true => self.weight.to_dtype(DType::BF16)?,
            false => self.weight.clone(),
        };
        let x2 = x.reshape((rows, d_in))?.to_dtype(w.dtype())?;
        let y = match self.layout {
            WeightLayout::OutIn => x2.matmul(&w.t()?)?,
            WeightLayout::InOut => x2.matmul(&w)?,
        }
        .to_dtype(x.dtype())?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(&b.to_dtype(x.dtype())?)?,
            None => y,
        };
        y.reshape(output_dims(&dims, y.dim(1)?))
    }
}

/// Token (or position) embedding table, [rows, D].
#[derive(Debug, Clone)]
pub struct Embedding {
    pub weight: Tensor,
    /// PyTorch's `padding_idx`: this row is used as stored but never receives a gradient.
    pub padding_idx: Option<u32>,
    /// The dtype of the rows it emits, when not the table's (bf16 inference with f32
    /// activations: `LanguageModel::widen_activations`).
    pub emit: Option<DType>,
}

impl Embedding {
    pub fn new(weight: Tensor) -> Self {
        Self {
            weight,
            padding_idx: None,
            emit: None,
        }
    }

    pub fn with_padding_idx(self, padding_idx: Option<u32>) -> Self {
        Self {
            padding_idx,
            ..self
        }
    }

    /// ids: [B, L] (u32) → [B, L, D]. index_select carries a gradient to the table, except to
    /// the padding row: where an id is `padding_idx` its row is read from the table detached.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let d = self.weight.dim(1)?;
        let flat = ids.flatten_all()?;
        let rows = self.weight.index_select(&flat, 0)?;
        let rows = match self.padding_idx {
            Some(pad) if self.weight.track_op() => {
                let is_pad = flat
                    .to_dtype(candle_core::DType::U32)?
                    .eq(pad)?
                    .unsqueeze(1)?
                    .broadcast_as(rows.shape())?;
                let detached = self.weight.detach().index_select(&flat, 0)?;
                is_pad.where_cond(&detached, &rows)?
            }
            _ => rows,
        };
        let rows = match self.emit {
            Some(dtype) => rows.to_dtype(dtype)?,
            None => rows,
        };
        rows.reshape((b, l, d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::fused_check::{assert_fused_matches, max_diff, Tolerance};
    use candle_core::{Device, Var};

    /// Both weight layouts, without and with a bias.
    const CASES: [(WeightLayout, bool); 4] = [
        (WeightLayout::OutIn, false),
        (WeightLayout::OutIn, true),
        (WeightLayout::InOut, false),
        (WeightLayout::InOut, true),
    ];

    /// Fused against composed in both weight layouts, with and without a bias: the value and
    /// the gradients of x, W and b.
    #[test]
    fn fused_linear_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        let (d_in, d_out) = (13, 21);
        for (layout, with_bias) in CASES {
            let shape = layout.shape(d_in, d_out);
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, d_in), &dev)?)?;
            let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &dev)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, d_out, &dev)?)?;
            let bias = with_bias.then(|| b.as_tensor().clone());
            let lin = Linear::new(w.as_tensor().clone(), bias, layout);
            let (f, c) = (lin.forward(&x)?, lin.forward_composed(&x)?);
            assert_eq!(f.dims(), [2, 5, d_out]);
            let vars: &[&Var] = if with_bias { &[&x, &w, &b] } else { &[&x, &w] };
            let what = format!("{layout:?} bias {with_bias}");
            assert_fused_matches(&what, vars, &f, &c, Tolerance::new(1e-5, 1e-5))?;
        }
        Ok(())
    }

    /// The padding row reads as stored, and its gradient is exactly zero while every other
    /// row's equals the plain lookup's (Dream's `nn.Embedding(padding_idx=pad_token_id)`).
    #[test]
    fn padding_row_gets_no_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let table = Var::from_tensor(&Tensor::randn(0f32, 1.0, (6, 4), &dev)?)?;
        let ids = Tensor::new(&[[1u32, 3, 3], [5, 0, 3]], &dev)?;
        let probe = Tensor::randn(0f32, 1.0, (2, 3, 4), &dev)?;
        let plain = Embedding::new(table.as_tensor().clone());
        let padded = plain.clone().with_padding_idx(Some(3));
        let (p, q) = (plain.forward(&ids)?, padded.forward(&ids)?);
        assert_eq!(max_diff(&p, &q)?, 0.0, "the forward uses the stored row");
        let grad = |y: &Tensor| -> Result<Tensor> {
            let g = (y * &probe)?.sum_all()?.backward()?;
            Ok(g.get(&table).expect("gradient of the table").clone())
        };
        let (gp, gq) = (grad(&p)?, grad(&q)?);
        let row = |g: &Tensor, i: usize| g.get(i)?.abs()?.sum_all()?.to_scalar::<f32>();
        assert!(row(&gp, 3)? > 0.0, "the plain lookup differentiates row 3");
        assert_eq!(row(&gq, 3)?, 0.0, "the padding row's gradient is zero");
        for i in [0, 1, 2, 4, 5] {
            assert_eq!(max_diff(&gp.get(i)?, &gq.get(i)?)?, 0.0, "row {i}");
        }
        Ok(())
    }

    /// A forward nothing will differentiate takes the packed weight (when the CPU has the
    /// kernel) and must agree with the composed form in both layouts, with and without a bias,
    /// on its first call (which packs) and on a later one (which reuses the packing).
    #[test]
    fn packed_forward_matches_composed() -> Result<()> {
        let dev = Device::Cpu;
        let (d_in, d_out) = (37, 45);
        for (layout, with_bias) in CASES {
            let shape = layout.shape(d_in, d_out);
            let w = Tensor::randn(0f32, 1.0, shape, &dev)?;
            let b = with_bias
                .then(|| Tensor::randn(0f32, 1.0, d_out, &dev))
                .transpose()?;
            let lin = Linear::new(w, b, layout);
            for rows in [7, 20] {
                let x = Tensor::randn(0f32, 1.0, (2, rows, d_in), &dev)?;
                let (y, want) = (lin.forward(&x)?, lin.forward_composed(&x)?);
                assert_eq!(y.dims(), [2, rows, d_out]);
                assert!(!y.track_op());
                let d = max_diff(&y, &want)?;
                assert!(d < 1e-4, "{layout:?} bias {with_bias}: differs by {d}");
            }
            assert_eq!(
                lin.packed.get().is_some(),
                packed_linear::f32_fast(),
                "the weight is packed once the kernel ran"
            );
        }
        Ok(())
    }

    #[test]
    fn released_bf16_weight_gives_the_same_outputs() -> Result<()> {
        let dev = Device::Cpu;
        let (d_in, d_out) = (37, 45);
        for (layout, with_bias) in CASES {
            let w =
                Tensor::randn(0f32, 1.0, layout.shape(d_in, d_out), &dev)?.to_dtype(DType::BF16)?;
            let b = with_bias
                .then(|| Tensor::randn(0f32, 1.0, d_out, &dev)?.to_dtype(DType::BF16))
                .transpose()?;
            let kept = Linear::new(w.clone(), b.clone(), layout);
            let mut released = Linear::new(w, b, layout);
            assert!(released.release_for_inference()?);
            assert!(!released.release_for_inference()?, "released once");
            assert_eq!(released.weight.dims(), kept.weight.dims());
            let x = Tensor::randn(0f32, 1.0, (2, 5, d_in), &dev)?.to_dtype(DType::BF16)?;
            let f32 = |y: Tensor| y.to_dtype(DType::F32);
            let (y, want) = (f32(released.forward(&x)?)?, f32(kept.forward(&x)?)?);
            assert_eq!(max_diff(&y, &want)?, 0.0);
            let (g, want) = (released.greedy_rows(&x)?, kept.greedy_rows(&x)?);
            assert_eq!(
                g.iter().map(|g| g.token).collect::<Vec<_>>(),
                want.iter().map(|g| g.token).collect::<Vec<_>>()
            );
            // Nothing to differentiate any more: a tracked input is an error, not zeros.
            let var = candle_core::Var::from_tensor(&x)?;
            let err = released.forward(var.as_tensor()).unwrap_err().to_string();
            assert!(err.contains("released"), "{err}");
            assert!(released.forward_composed(&x).is_err());
        }
        // f32 weights stay: their large heads take candle's GEMM, which reads them.
        let mut f32_lin = Linear::new(
            Tensor::zeros((4, 3), DType::F32, &dev)?,
            None,
            WeightLayout::OutIn,
        );
        assert!(!f32_lin.release_for_inference()?);
        Ok(())
    }
}
