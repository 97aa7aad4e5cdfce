//! ZeRO stage 1 (Rajbhandari et al., 2020): optimizer-state sharding. The parameters are viewed
//! as one flat f32 vector (in name order, padded to a multiple of the world size) cut into one
//! equal slice per rank. Each rank keeps the AdamW moments of its slice only; gradients are
//! reduce-scattered so that each rank receives the summed gradient of its slice, each rank updates
//! its slice with the same arithmetic as the fused kernel, and the slices are all-gathered back
//! into every rank's parameters. Checkpoints hold the gathered moments in the ordinary AdamW
//! layout, so a run can resume with or without sharding and under another world size.

use std::collections::BTreeMap;
use std::ops::Range;

use candle_core::{DType, Tensor, Var};

use super::adamw::{AdamW, AdamWConfig, StepScalars};
use crate::dist::Communicator;
use crate::error::{Error, Result};

/// Where each parameter lies in the flat vector.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    offset: usize,
    len: usize,
}

pub struct ShardedAdamW {
    config: AdamWConfig,
    /// Steps taken so far.
    step: u64,
    entries: Vec<Entry>,
    /// This rank's slice of the padded flat vector.
    range: Range<usize>,
    /// The moments of that slice.
    m: Vec<f32>,
    v: Vec<f32>,
}

impl ShardedAdamW {
    pub fn new(
        config: AdamWConfig,
        vars: &BTreeMap<String, Var>,
        rank: usize,
        world: usize,
    ) -> Self {
        let mut entries = Vec::with_capacity(vars.len());
        let mut offset = 0;
        for (name, var) in vars {
            let len = var.elem_count();
            entries.push(Entry {
                name: name.clone(),
                offset,
                len,
            });
            offset += len;
        }
        let shard = offset.div_ceil(world.max(1));
        let range = rank * shard..(rank + 1) * shard;
        Self {
            config,
            step: 0,
            entries,
            m: vec![0.0; shard],
            v: vec![0.0; shard],
            range,
        }
    }

    fn shard_len(&self) -> usize {
        self.range.len()
    }

    /// The parts of parameters that fall in this rank's slice: (entry, range within the
    /// parameter, range within the slice).
    fn overlaps(&self) -> impl Iterator<Item = (&Entry, Range<usize>, Range<usize>)> {
        let (lo, hi) = (self.range.start, self.range.end);
        self.entries.iter().filter_map(move |e| {
            let (a, b) = (e.offset.max(lo), (e.offset + e.len).min(hi));
            (a < b).then(|| (e, a - e.offset..b - e.offset, a - lo..b - lo))
        })
    }

    /// Reduce-scatters the ranks' gradients: returns the summed gradient of this rank's slice
    /// and the global gradient norm.
    pub fn reduce(
        &self,
        comm: &dyn Communicator,
        grads: &[(String, Tensor)],
    ) -> Result<(Vec<f32>, f64)> {
        if grads.len() != self.entries.len() {
            return Err(Error::Input(format!(
                "ZeRO: {} gradients for {} parameters",
                grads.len(),
                self.entries.len()
            )));
        }
        let mut flat = Vec::with_capacity(self.shard_len() * comm.world_size());
        for ((name, g), e) in grads.iter().zip(&self.entries) {
            if *name != e.name || g.elem_count() != e.len {
                return Err(Error::Input(format!(
                    "ZeRO: gradient `{name}` does not match parameter `{}`",
                    e.name
                )));
            }
            flat.extend(g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        }
        flat.resize(self.shard_len() * comm.world_size(), 0.0);
        let mut shard = vec![0.0; self.shard_len()];
        comm.reduce_scatter_sum(&flat, &mut shard)?;
        let mut sq = [shard.iter().map(|&g| g as f64 * g as f64).sum::<f64>()];
        comm.all_reduce_sum_f64(&mut sq)?;
        Ok((shard, sq[0].sqrt()))
    }

    /// Updates this rank's slice from its summed gradient (multiplied by `scale`, the clipping
    /// coefficient) and all-gathers every rank's slice into `vars`.
    pub fn step(
        &mut self,
        comm: &dyn Communicator,
        vars: &BTreeMap<String, Var>,
        grad: &[f32],
        lr: f64,
        scale: f64,
    ) -> Result<()> {
        self.step += 1;
        let mut p = vec![0.0f32; self.shard_len()];
        for (e, in_param, in_shard) in self.overlaps() {
            let t = var(vars, &e.name)?.as_tensor().flatten_all()?;
            let part = t.narrow(0, in_param.start, in_param.len())?;
            p[in_shard].copy_from_slice(&part.to_vec1::<f32>()?);
        }
        StepScalars::new(self.config, self.step, lr, scale).apply(
            &mut p,
            grad,
            &mut self.m,
            &mut self.v,
        );
        let mut full = vec![0.0f32; self.shard_len() * comm.world_size()];
        comm.all_gather(&p, &mut full)?;
        for e in &self.entries {
            let var = var(vars, &e.name)?;
            let data = &full[e.offset..e.offset + e.len];
            var.set(&Tensor::from_slice(data, var.shape(), var.device())?)?;
        }
        Ok(())
    }

    /// The full moments of every parameter, gathered from all ranks (a collective), in the
    /// ordinary AdamW layout for checkpoints.
    pub fn gather(&self, comm: &dyn Communicator) -> Result<AdamW> {
        let mut full = AdamW::new(self.config);
        full.step = self.step;
        if self.step == 0 {
            return Ok(full);
        }
        let n = self.shard_len() * comm.world_size();
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        comm.all_gather(&self.m, &mut m)?;
        comm.all_gather(&self.v, &mut v)?;
        for e in &self.entries {
            let r = e.offset..e.offset + e.len;
            full.set_moments(&e.name, m[r.clone()].to_vec(), v[r].to_vec());
        }
        Ok(full)
    }

    /// Takes this rank's slice of full moments (as loaded from a checkpoint).
    pub fn load(&mut self, full: &AdamW) -> Result<()> {
        self.step = full.step;
        let mut m = vec![0.0f32; self.shard_len()];
        let mut v = vec![0.0f32; self.shard_len()];
        for (e, in_param, in_shard) in self.overlaps() {
            let Some((fm, fv)) = full.moments(&e.name) else {
                continue; // not stepped yet: zero moments
            };
            if fm.len() != e.len || fv.len() != e.len {
                return Err(Error::Input(format!(
                    "optimizer state for `{}` has {} values, the parameter {}",
                    e.name,
                    fm.len(),
                    e.len
                )));
            }
            m[in_shard.clone()].copy_from_slice(&fm[in_param.clone()]);
            v[in_shard].copy_from_slice(&fv[in_param]);
        }
        (self.m, self.v) = (m, v);
        Ok(())
    }
}

fn var<'a>(vars: &'a BTreeMap<String, Var>, name: &str) -> Result<&'a Var> {
    vars.get(name)
        .ok_or_else(|| Error::Input(format!("ZeRO: unknown parameter `{name}`")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::SingleProcess;
    use candle_core::Device;

    fn vars() -> BTreeMap<String, Var> {
        let dev = Device::Cpu;
        let mut vars = BTreeMap::new();
        for (name, n) in [("a", 3usize), ("b", 4)] {
            let data: Vec<f32> = (0..n).map(|i| 0.1 * (i as f32 + 1.0)).collect();
            vars.insert(name.to_string(), Var::from_slice(&data, n, &dev).unwrap());
        }
        vars
    }

    /// On one rank the flat update equals the per-tensor AdamW, and the state round-trips.
    #[test]
    fn one_shard_matches_adamw() {
        let (flat, fused) = (vars(), vars());
        let grads: Vec<(String, Tensor)> = fused
            .iter()
            .map(|(n, v)| (n.clone(), (v.as_tensor() * 0.5).unwrap()))
            .collect();
        let config = AdamWConfig::default();
        let mut zero = ShardedAdamW::new(config, &flat, 0, 1);
        let mut adamw = AdamW::new(config);
        for _ in 0..3 {
            let (g, _) = zero.reduce(&SingleProcess, &grads).unwrap();
            zero.step(&SingleProcess, &flat, &g, 1e-2, 0.5).unwrap();
            adamw.step(&fused, &grads, 1e-2, 0.5).unwrap();
        }
        for (name, v) in &fused {
            let a = v.as_tensor().to_vec1::<f32>().unwrap();
            let b = flat[name].as_tensor().to_vec1::<f32>().unwrap();
            assert_eq!(a, b, "{name}");
        }
        let gathered = zero.gather(&SingleProcess).unwrap();
        assert_eq!(gathered.moments("b"), adamw.moments("b"));
        let mut again = ShardedAdamW::new(config, &flat, 0, 1);
        again.load(&gathered).unwrap();
        assert_eq!((again.m, again.v, again.step), (zero.m, zero.v, 3));
    }

    #[test]
    fn slices_cover_parameters_across_ranks() {
        let vars = vars(); // 7 values, 2 ranks: slices of 4, the second padded by one
        let r0 = ShardedAdamW::new(AdamWConfig::default(), &vars, 0, 2);
        let r1 = ShardedAdamW::new(AdamWConfig::default(), &vars, 1, 2);
        let o0: Vec<_> = r0
            .overlaps()
            .map(|(e, p, s)| (e.name.clone(), p, s))
            .collect();
        let o1: Vec<_> = r1
            .overlaps()
            .map(|(e, p, s)| (e.name.clone(), p, s))
            .collect();
        assert_eq!(o0, vec![("a".into(), 0..3, 0..3), ("b".into(), 0..1, 3..4)]);
        assert_eq!(o1, vec![("b".to_string(), 1..4, 0..3)]);
    }
}
