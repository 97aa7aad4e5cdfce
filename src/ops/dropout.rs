//! Dropout for training (`--dropout P`): each element is kept with probability 1 − p and scaled
//! by 1/(1 − p), or zeroed ("inverted" dropout, as `torch.nn.Dropout`), so inference uses the
//! weights as they are. It is off until the trainer turns it on for a step (`train`), with masks
//! from a stream the trainer seeds from the run's seed, the step and the rank: a resumed run
//! draws the masks the uninterrupted one would have. The mask is an ordinary tensor factor, so
//! the backward pass is candle's product rule (dy · mask), on any device.

use std::sync::Mutex;

use candle_core::{Result, Tensor};

use crate::rng::Rng;

#[derive(Debug)]
pub struct Dropout {
    p: f32,
    /// The mask stream while training; None: pass everything through (validation, inference).
    stream: Mutex<Option<Rng>>,
}

impl Dropout {
    /// Dropout with probability `p`, in [0, 1); off until `train`.
    pub fn new(p: f32) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            candle_core::bail!("dropout probability {p} is not in [0, 1)");
        }
        Ok(Self {
            p,
            stream: Mutex::new(None),
        })
    }

    /// Drops from here on, with masks drawn from `seed`'s stream.
    pub fn train(&self, seed: u64) {
        *self.lock() = Some(Rng::seed(seed));
    }

    /// Passes everything through from here on.
    pub fn eval(&self) {
        *self.lock() = None;
    }

    /// x with dropout applied while training; x itself otherwise or when p = 0.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let mut stream = self.lock();
        let Some(rng) = stream.as_mut().filter(|_| self.p > 0.0) else {
            return Ok(x.clone());
        };
        let kept = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.uniform_f32() < self.p {
                    0.0
                } else {
                    kept
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x.mul(&mask)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Rng>> {
        // A panic elsewhere while the stream was held leaves it usable: it is only a seed.
        self.stream.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `x` through `dropout` where there is one (a model in training), else x.
pub fn maybe_dropout(x: Tensor, dropout: Option<&Dropout>) -> Result<Tensor> {
    match dropout {
        Some(d) => d.apply(&x),
        None => Ok(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn ramp(n: usize) -> Result<Tensor> {
        let v: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32).collect();
        Tensor::from_vec(v, (n / 8, 8), &Device::Cpu)
    }

    #[test]
    fn off_until_trained_and_after_eval() -> Result<()> {
        let x = ramp(64)?;
        let d = Dropout::new(0.5)?;
        assert_eq!(d.apply(&x)?.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
        d.train(1);
        d.eval();
        assert_eq!(d.apply(&x)?.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
        let zero = Dropout::new(0.0)?;
        zero.train(1);
        assert_eq!(zero.apply(&x)?.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
        Ok(())
    }

    #[test]
    fn drops_about_p_scales_the_rest_and_repeats_per_seed() -> Result<()> {
        let n = 80_000;
        let x = ramp(n)?;
        let d = Dropout::new(0.25)?;
        d.train(7);
        let y = d.apply(&x)?.flatten_all()?.to_vec1::<f32>()?;
        let x1 = x.flatten_all()?.to_vec1::<f32>()?;
        let dropped = y.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
        // Binomial standard deviation √(p(1−p)/n) ≈ 0.0015: 5 of them.
        assert!((dropped - 0.25).abs() < 0.008, "dropped {dropped}");
        for (a, b) in x1.iter().zip(&y) {
            assert!(*b == 0.0 || *b == a * (1.0 / 0.75), "{a} -> {b}");
        }
        // The same seed gives the same mask; the stream moves on between calls.
        d.train(7);
        assert_eq!(d.apply(&x)?.flatten_all()?.to_vec1::<f32>()?, y);
        assert_ne!(d.apply(&x)?.flatten_all()?.to_vec1::<f32>()?, y);
        assert!(Dropout::new(1.0).is_err() && Dropout::new(-0.1).is_err());
        Ok(())
    }

    /// d Σ dropout(x) / dx is the mask: 0 where dropped, 1/(1 − p) where kept.
    #[test]
    fn gradient_is_the_mask() -> Result<()> {
        let x = Var::from_tensor(&ramp(512)?)?;
        let d = Dropout::new(0.5)?;
        d.train(3);
        let y = d.apply(x.as_tensor())?;
        let grads = y.sum_all()?.backward()?;
        let g = grads.get(&x).expect("x's gradient");
        let (g, y, x) = (
            g.flatten_all()?.to_vec1::<f32>()?,
            y.flatten_all()?.to_vec1::<f32>()?,
            x.flatten_all()?.to_vec1::<f32>()?,
        );
        for ((g, y), x) in g.iter().zip(&y).zip(&x) {
            assert_eq!(*g, y / x);
            assert!(*g == 0.0 || *g == 2.0);
        }
        Ok(())
    }
}
