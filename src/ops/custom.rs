//! The one bridge between the fused CPU kernels and candle's `CustomOp1/2/3`. A kernel sees its
//! inputs as contiguous CPU slices and returns its output buffer; its backward pass gets the input
//! tensors, the output and the output's gradient, and returns one gradient buffer per input that
//! has one. Borrowing the storages, wrapping the buffers as tensors and fitting the result to
//! candle's per-arity signatures happen here, once.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::cpu;

/// A fused CPU kernel over one to three inputs.
pub trait Kernel: Send + Sync + 'static {
    /// The op's name in candle's graph when applied to `arity` inputs.
    fn name(&self, arity: usize) -> &'static str;

    /// The output buffer and its shape.
    fn forward(&self, inputs: &Inputs) -> Result<(Vec<f32>, Shape)>;

    /// The gradients of the leading inputs, each a buffer of its input's shape. The inputs after
    /// them (a constant mask, target ids) get none.
    fn backward(&self, inputs: &[&Tensor], y: &Tensor, dy: &Tensor) -> Result<Vec<Vec<f32>>>;

    /// Whether input `i` reaches the forward pass as it is, a view read through its strides
    /// (`Inputs::f32_strided`), rather than made contiguous first.
    fn strided_input(&self, _i: usize) -> bool {
        false
    }
}

/// Applies `kernel` to the tensors (made contiguous, unless the kernel reads an input through its
/// strides) as one autograd node.
pub fn apply(kernel: impl Kernel, inputs: &[&Tensor]) -> Result<Tensor> {
    let op = Op(kernel);
    let arg = |i: usize| match op.0.strided_input(i) {
        true => Ok(inputs[i].clone()),
        false => inputs[i].contiguous(),
    };
    match inputs.len() {
        1 => arg(0)?.apply_op1(op),
        2 => arg(0)?.apply_op2(&arg(1)?, op),
        3 => arg(0)?.apply_op3(&arg(1)?, &arg(2)?, op),
        n => candle_core::bail!("{}: {n} inputs", op.0.name(n)),
    }
}

/// A kernel's inputs in the forward pass: contiguous CPU storages with their layouts.
pub struct Inputs<'a>(&'a [(&'a CpuStorage, &'a Layout)]);

impl<'a> Inputs<'a> {
    /// How many inputs the op was applied to.
    pub fn arity(&self) -> usize {
        self.0.len()
    }

    fn at(&self, i: usize) -> Result<(&'a CpuStorage, &'a Layout)> {
        match self.0.get(i) {
            Some(&input) => Ok(input),
            None => candle_core::bail!("fused kernel has no input {i} of {}", self.0.len()),
        }
    }

    /// The f32 data of input `i`.
    pub fn f32(&self, i: usize) -> Result<&'a [f32]> {
        let (s, l) = self.at(i)?;
        cpu::slice(s, l)
    }

    /// The f32 data of input `i` from its first element to its last, and its strides: element
    /// (i₀, i₁, …) sits at Σ iₖ·strides[k] (for an input the kernel reads strided).
    pub fn f32_strided(&self, i: usize) -> Result<(&'a [f32], &'a [usize])> {
        let (s, l) = self.at(i)?;
        let data = s.as_slice::<f32>()?;
        let span = match l.dims().contains(&0) {
            true => 0,
            false => {
                1 + l
                    .dims()
                    .iter()
                    .zip(l.stride())
                    .map(|(d, s)| (d - 1) * s)
                    .sum::<usize>()
            }
        };
        match data.get(l.start_offset()..l.start_offset() + span) {
            Some(view) => Ok((view, l.stride())),
            None => candle_core::bail!("a view {l:?} past its storage of {}", data.len()),
        }
    }

    /// The f32 data of input `i`, or None where the op was applied to fewer inputs.
    pub fn f32_if_any(&self, i: usize) -> Result<Option<&'a [f32]>> {
        (i < self.arity()).then(|| self.f32(i)).transpose()
    }

    /// The u32 data of input `i`.
    pub fn u32(&self, i: usize) -> Result<&'a [u32]> {
        let (s, l) = self.at(i)?;
        cpu::slice(s, l)
    }

    pub fn shape(&self, i: usize) -> Result<&'a Shape> {
        Ok(self.at(i)?.1.shape())
    }
}

/// What a kernel's forward pass keeps for its backward pass (candle calls both on one op value).
pub struct Saved<T> {
    /// The op, for the errors.
    what: &'static str,
    value: Mutex<Option<T>>,
}

impl<T> Saved<T> {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            value: Mutex::new(None),
        }
    }

    pub fn put(&self, value: T) -> Result<()> {
        *self.lock()? = Some(value);
        Ok(())
    }

    /// Runs `f` on what the forward pass saved.
    pub fn with<R>(&self, f: impl FnOnce(&T) -> Result<R>) -> Result<R> {
        match self.lock()?.as_ref() {
            Some(value) => f(value),
            None => candle_core::bail!("{} backward before its forward", self.what),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Option<T>>> {
        self.value
            .lock()
            .map_err(|_| candle_core::Error::Msg(format!("{} state lock poisoned", self.what)))
    }
}

/// A kernel in candle's clothes.
struct Op<K>(K);

impl<K: Kernel> Op<K> {
    fn forward(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let (y, shape) = self.0.forward(&Inputs(inputs))?;
        Ok((CpuStorage::F32(y), shape))
    }

    fn backward<const N: usize>(
        &self,
        inputs: [&Tensor; N],
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<[Option<Tensor>; N]> {
        let grads = self.0.backward(&inputs, y, dy)?;
        if grads.len() > N {
            candle_core::bail!(
                "{}: {} gradients for {N} inputs",
                self.0.name(N),
                grads.len()
            );
        }
        let mut out = [(); N].map(|_| None);
        for ((slot, grad), input) in out.iter_mut().zip(grads).zip(inputs) {
            *slot = Some(Tensor::from_vec(grad, input.shape(), input.device())?);
        }
        Ok(out)
    }
}

/// candle's `CustomOpN` for a kernel of N inputs: the same three methods at every arity, input i
/// arriving as storage `si` with layout `li` in the forward pass and as tensor `xi`, with
/// gradient `di`, in the backward pass.
macro_rules! custom_op {
    ($trait:ident, $arity:literal, $grads:ty, $(($s:ident, $l:ident, $x:ident, $d:ident)),+) => {
        impl<K: Kernel> $trait for Op<K> {
            fn name(&self) -> &'static str {
                self.0.name($arity)
            }

            fn cpu_fwd(&self, $($s: &CpuStorage, $l: &Layout),+) -> Result<(CpuStorage, Shape)> {
                self.forward(&[$(($s, $l)),+])
            }

            #[allow(unused_parens)]
            fn bwd(&self, $($x: &Tensor,)+ y: &Tensor, dy: &Tensor) -> Result<$grads> {
                let [$($d),+] = self.backward([$($x),+], y, dy)?;
                Ok(($($d),+))
            }
        }
    };
}

custom_op!(CustomOp1, 1, Option<Tensor>, (s1, l1, x1, d1));
custom_op!(
    CustomOp2,
    2,
    (Option<Tensor>, Option<Tensor>),
    (s1, l1, x1, d1),
    (s2, l2, x2, d2)
);
custom_op!(
    CustomOp3,
    3,
    (Option<Tensor>, Option<Tensor>, Option<Tensor>),
    (s1, l1, x1, d1),
    (s2, l2, x2, d2),
    (s3, l3, x3, d3)
);
