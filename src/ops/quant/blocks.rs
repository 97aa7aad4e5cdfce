//! ggml's block formats, as GGUF stores them, and the int8 activation rows their dot products
//! take. Dequantisation is f32 arithmetic in ggml's reference order, so values match ggml's bit
//! for bit; quantisation follows ggml's reference quantisers (`quantize_row_*_ref`).
//!
//! | type | elements | bytes | value                                                   |
//! |------|----------|-------|---------------------------------------------------------|
//! | Q8_0 | 32       | 34    | f16 d, 32 × i8 q: d·q                                   |
//! | Q4_0 | 32       | 18    | f16 d, 16 B nibbles: d·(q − 8)                          |
//! | Q4_1 | 32       | 20    | f16 d, f16 m, 16 B nibbles: d·q + m                     |
//! | Q4_K | 256      | 144   | f16 d, f16 dmin, 12 B 6-bit scales/mins, 128 B nibbles  |
//!
//! Q4_0/Q4_1 nibbles: byte j holds element j (low) and j + 16 (high). Q4_K: each 64 elements
//! share 32 bytes, elements 0..32 in the low nibbles and 32..64 in the high ones, with one
//! (scale, min) pair per 32: value = d·sc·q − dmin·m.

use half::f16;
use std::sync::OnceLock;

/// Elements of an activation block: every weight block is a whole number of them.
pub const ACT_BLOCK: usize = 32;

/// A ggml quantised type dlm keeps in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q8_0,
    Q4_0,
    Q4_1,
    Q4K,
}

impl QuantType {
    pub const ALL: [QuantType; 4] = [Self::Q8_0, Self::Q4_0, Self::Q4_1, Self::Q4K];

    /// The ggml type id (GGUF's tensor type field).
    pub fn ggml_id(self) -> u32 {
        match self {
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
        }
    }

    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ggml_id() == id)
    }

    /// Lower-case name, as `dlm quantize --to` and the stored tensor names spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q4K => "q4_k",
        }
    }

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            Self::Q4K => 256,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q4K => 144,
        }
    }

    /// Bytes of one row of `cols` elements (`cols` a multiple of the block size).
    pub fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_elems() * self.block_bytes()
    }
}

impl std::str::FromStr for QuantType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown quantisation `{s}` (expected q8_0, q4_0, q4_1 or q4_k)")
            })
    }
}

pub(super) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_K's 6-bit (scale, min) of sub-block `j` (0..8) from its 12 packed bytes (ggml's
/// `get_scale_min_k4`).
pub(super) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Appends the values of one block of type `ty` to `out`.
pub fn dequantize_block(ty: QuantType, b: &[u8], out: &mut Vec<f32>) {
    let start = out.len();
    out.resize(start + ty.block_elems(), 0.0);
    dequantize_block_into(ty, b, &mut out[start..]);
}

/// Writes the values of one block of type `ty` into `out` (`ty.block_elems()` long): slice
/// writes the compiler vectorises, in ggml's arithmetic order.
#[inline(always)]
pub fn dequantize_block_into(ty: QuantType, b: &[u8], out: &mut [f32]) {
    match ty {
        QuantType::Q8_0 => {
            let d = f16_at(b, 0);
            for (o, &q) in out[..32].iter_mut().zip(&b[2..34]) {
                *o = d * (q as i8) as f32;
            }
        }
        QuantType::Q4_0 => {
            let d = f16_at(b, 0);
            let (lo, hi) = out[..32].split_at_mut(16);
            for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[2..18]) {
                *l = d * ((q & 0x0F) as f32 - 8.0);
                *h = d * ((q >> 4) as f32 - 8.0);
            }
        }
        QuantType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let (lo, hi) = out[..32].split_at_mut(16);
            for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[4..20]) {
                *l = d * (q & 0x0F) as f32 + m;
                *h = d * (q >> 4) as f32 + m;
            }
        }
        QuantType::Q4K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (scales, qs) = (&b[4..16], &b[16..144]);
            for (c, (q, o)) in qs
                .chunks_exact(32)
                .zip(out.chunks_exact_mut(64))
                .enumerate()
            {
                let (sc1, m1) = scale_min_k4(2 * c, scales);
                let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
                let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                let (lo, hi) = o.split_at_mut(32);
                for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(q) {
                    *l = d1 * (q & 0x0F) as f32 - m1;
                    *h = d2 * (q >> 4) as f32 - m2;
                }
            }
        }
    }
}

/// Values of whole blocks of type `ty`; None when `bytes` is not a whole number of blocks.
pub fn dequantize(ty: QuantType, bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(ty.block_bytes()) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / ty.block_bytes() * ty.block_elems());
    for b in bytes.chunks_exact(ty.block_bytes()) {
        dequantize_block(ty, b, &mut out);
    }
    Some(out)
}

/// Appends one block of `ty` quantising 32 values `x` (ggml's reference quantisers). Q4_K is
/// read, never written: it needs ggml's iterative scale search to be worth its bits.
pub fn quantize_block(ty: QuantType, x: &[f32], out: &mut Vec<u8>) {
    let half = |v: f32| f16::from_f32(v).to_le_bytes();
    match ty {
        QuantType::Q8_0 => {
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend(half(d));
            out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
        }
        QuantType::Q4_0 => {
            // The value of largest magnitude, sign kept, maps to -8.
            let max = x
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend(half(d));
            let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
            out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
        }
        QuantType::Q4_1 => {
            let min = x.iter().copied().fold(f32::INFINITY, f32::min);
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend(half(d));
            out.extend(half(min));
            let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
            out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
        }
        QuantType::Q4K => unreachable!("Q4_K is not written (checked by the caller)"),
    }
}

/// Rows of activations quantised to int8 in 32-wide blocks (Q8_0-style, f32 scale), with each
/// block's scaled sum kept for the offset terms of Q4_1 and Q4_K.
pub struct QuantActs {
    /// Elements per row.
    pub cols: usize,
    /// Per block: scale d (x ≈ d·q).
    pub d: Vec<f32>,
    /// Per block: d·Σq.
    pub s: Vec<f32>,
    pub qs: Vec<i8>,
    /// `qs` in the 4-bit kernels' quad order, made on first use and shared by every task.
    quads: OnceLock<QuadActs>,
}

crate::ops::cpu::simd_fn! {
    /// `quantize_acts` compiled for the vector units this CPU has: a decoded token quantises
    /// ~100 rows, each on the critical path between two products.
    fn quantize_acts_on(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) = quantize_acts;
}

/// x's 32-element blocks to int8 `qs`, with each block's scale `d` and d·Σq `s`.
#[inline(always)]
fn quantize_acts(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    let blocks = x
        .chunks_exact(ACT_BLOCK)
        .zip(qs.chunks_exact_mut(ACT_BLOCK));
    for ((b, q), (d, s)) in blocks.zip(d.iter_mut().zip(s.iter_mut())) {
        let (b, q) = (
            b.try_into().expect("a block"),
            q.try_into().expect("a block"),
        );
        (*d, *s) = quantize_act_block(b, q);
    }
}

/// One block of activations to int8: returns (d, d·Σq). Round half away from zero, as `round`
/// does, in plain float ops over sixteen lanes that vectorise (`round` is a libm call per
/// element without SSE4.1, and `as i32` a saturating conversion with a fix-up per lane): the
/// values are clamped to ±128 first, which changes nothing for finite x (|x·id| ≤ 127) and
/// makes the unchecked conversion sound.
#[inline(always)]
fn quantize_act_block(b: &[f32; ACT_BLOCK], q: &mut [i8; ACT_BLOCK]) -> (f32, f32) {
    // max |v| as the largest of the magnitudes' bits: non-negative floats order as their bits
    // do, and an integer maximum vectorises where a fold of `f32::max` stays scalar.
    let amax = f32::from_bits(
        b.iter()
            .map(|v| v.to_bits() & 0x7FFF_FFFF)
            .max()
            .unwrap_or(0),
    );
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sums = [0i32; 16];
    for (qh, bh) in q.chunks_exact_mut(16).zip(b.chunks_exact(16)) {
        for ((q, &v), s) in qh.iter_mut().zip(bh).zip(sums.iter_mut()) {
            // Not `clamp`: it keeps a NaN, which the conversion below must not see.
            #[allow(clippy::manual_clamp)]
            let r = (v * id + 0.5f32.copysign(v)).max(-128.0).min(127.0);
            // SAFETY: r is finite and within i32 (clamped above; a NaN becomes -128).
            let i = unsafe { r.to_int_unchecked::<i32>() };
            *q = i as i8;
            *s += i;
        }
    }
    (d, d * sums.iter().sum::<i32>() as f32)
}

/// Elements per quad: four blocks, what one 64-byte register of 4-bit weights holds.
pub const QUAD: usize = 4 * ACT_BLOCK;

/// Activation rows in the order the AVX-512 4-bit kernels read them (tile_vnni.rs): a 4-bit
/// block's byte j holds its elements j and j + 16, so a register of four blocks' bytes splits
/// into those blocks' elements 0..16 (low nibbles) and 16..32 (high ones) with one mask and one
/// shift. Per quad of four blocks: the four blocks' elements 0..16 (64 bytes), then their
/// elements 16..32 (64 bytes), a block past the row's end as zeros.
pub struct QuadActs {
    /// Quads per row.
    pub quads: usize,
    /// `rows · quads · 128` bytes.
    pub halves: Vec<i8>,
    /// Per quad, sixteen i32: lane 4k holds −8·Σq of the quad's block k (Q4_0's offset, the
    /// starting sum of every weight row's dot products), the other lanes 0.
    pub starts: Vec<i32>,
    /// Per quad, sixteen f32: block k's scale d in lanes 4k..4k + 4, where the kernel leaves
    /// that block's integer sums.
    pub scales: Vec<f32>,
    /// Per quad, sixteen f32: block k's d·Σq (Q4_1's min term) in lane 4k, the others 0.
    pub sums: Vec<f32>,
}

/// One row of [`QuantActs`].
#[derive(Clone, Copy)]
pub struct ActRow<'a> {
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub qs: &'a [i8],
}

impl QuantActs {
    /// Quantises `x`, rows of `cols` elements (`cols` a multiple of 32).
    pub fn new(x: &[f32], cols: usize) -> Self {
        let blocks = x.len() / ACT_BLOCK;
        let mut a = Self {
            cols,
            d: vec![0.0; blocks],
            s: vec![0.0; blocks],
            qs: vec![0; blocks * ACT_BLOCK],
            quads: OnceLock::new(),
        };
        quantize_acts_on(x, &mut a.qs, &mut a.d, &mut a.s);
        a
    }

    /// `new`, with the quad order (`quads`) made at once where the 4-bit kernel will read it.
    pub fn with_quads(x: &[f32], cols: usize) -> Self {
        let a = Self::new(x, cols);
        a.quads();
        a
    }

    pub fn rows(&self) -> usize {
        self.qs.len() / self.cols.max(1)
    }

    /// The rows in quad order (`QuadActs`), made once.
    pub fn quads(&self) -> &QuadActs {
        self.quads.get_or_init(|| {
            let (nb, rows) = (self.cols / ACT_BLOCK, self.rows());
            let quads = nb.div_ceil(4);
            let mut halves = vec![0i8; rows * quads * QUAD];
            let mut starts = vec![0i32; rows * quads * 16];
            let (mut scales, mut sums) = (vec![0f32; starts.len()], vec![0f32; starts.len()]);
            for (i, row) in self.qs.chunks_exact(self.cols.max(1)).enumerate() {
                for (b, block) in row.chunks_exact(ACT_BLOCK).enumerate() {
                    let at = (i * quads + b / 4) * QUAD + (b % 4) * 16;
                    halves[at..at + 16].copy_from_slice(&block[..16]);
                    halves[at + 64..at + 80].copy_from_slice(&block[16..]);
                    let lane = (i * quads + b / 4) * 16 + (b % 4) * 4;
                    let sum: i32 = block.iter().map(|&q| q as i32).sum();
                    starts[lane] = -8 * sum;
                    scales[lane..lane + 4].fill(self.d[i * nb + b]);
                    sums[lane] = self.s[i * nb + b];
                }
            }
            QuadActs {
                quads,
                halves,
                starts,
                scales,
                sums,
            }
        })
    }

    pub fn row(&self, i: usize) -> ActRow<'_> {
        let nb = self.cols / ACT_BLOCK;
        ActRow {
            d: &self.d[i * nb..(i + 1) * nb],
            s: &self.s[i * nb..(i + 1) * nb],
            qs: &self.qs[i * self.cols..(i + 1) * self.cols],
        }
    }
}
