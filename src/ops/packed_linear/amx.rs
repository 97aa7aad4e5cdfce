//! The AMX-BF16 microkernel of the packed GEMM. Eight tile registers, each 16 rows × 64 bytes:
//! tmm0..3 hold a 32 × 32 block of y in f32 (2 row tiles × 2 panels), tmm4/5 two 16-row tiles
//! of a (16 rows × 32 k in bf16), tmm6/7 two panels' 16 pair lines (32 k × 16 columns, the
//! layout `LinePair` packs). Per 32 k: four tile loads and four TDPBF16PS, each
//! 16 × 16 × 32 multiply-adds. The block is stored through a stack buffer and added into y, so
//! y's edges (rows past the last, columns past n) are never written.
//!
//! Stable Rust has no AMX intrinsics, so each instruction is an `asm!` statement. The compiler
//! never allocates tile registers (the `amx` target features are not enabled), so they keep
//! their values between statements. Linux grants tile data per process (isa.rs asks once);
//! the tile configuration is per thread, loaded at the start of every call and released at its
//! end.

use std::arch::asm;
use std::arch::x86_64::*;

use super::avx512::add_row;
use super::{LinePair, NR};

/// The fewest rows this kernel takes; fewer go to the AVX-512-BF16 kernel.
pub const MIN_ROWS: usize = 16;

/// How many 32-k steps ahead the panels' lines are prefetched.
const PREFETCH: usize = 4;

/// Tile rows, and bytes per tile row.
const TR: usize = 16;
const TB: usize = 64;

/// The tile configuration (palette 1): eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct Config([u8; 64]);

impl Config {
    const ALL_FULL: Config = Config::rows(TR, TR);

    /// Every tile 64 bytes wide; y's and a's first row tile (tmm0, tmm1, tmm4) `r1` rows, their
    /// second (tmm2, tmm3, tmm5) `r2`, the panels' (tmm6, tmm7) 16. A block of fewer than 32
    /// rows then multiplies only its rows, not zero rows up to 16: SmolLM2's head at M = 257
    /// (256 + 1) took 9.1-9.7 ms instead of 10.0-10.2 (`dlm bench gemm --shapes smollm2:257`).
    const fn rows(r1: usize, r2: usize) -> Config {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = TB as u8;
            c[48 + t] = match t {
                0 | 1 | 4 => r1,
                2 | 3 | 5 => r2,
                _ => TR,
            } as u8;
            t += 1;
        }
        Config(c)
    }

    /// Loads this configuration on this thread.
    ///
    /// # Safety
    /// AMX is present and permitted (isa.rs).
    unsafe fn load(&self) {
        asm!("ldtilecfg [{0}]", in(reg) self.0.as_ptr(), options(nostack, readonly));
    }
}

/// Loads the configuration of eight 16 × 64-byte tiles on this thread.
///
/// # Safety
/// AMX is present and permitted (isa.rs).
pub(crate) unsafe fn configure_tiles() {
    Config::ALL_FULL.load();
}

/// y[rows × cols] += a[rows × 2·kpairs] · panels, in blocks of 32 rows × 2 panels.
///
/// # Safety
/// AMX-BF16 is present and permitted (isa.rs), and AVX-512 F/BW/VL; a holds `rows` rounded up to
/// a multiple of 16 rows of `lda` bf16 (the rows past `rows` zero), 2·kpairs of each read;
/// kpairs is a multiple of 16; each of the cols/16 panels holds kpairs lines `stride` apart; y
/// holds `rows` rows of `ldc` floats, the first `cols` of each written.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn strip(
    (a, lda): (*const u16, usize),
    (panel, stride): (*const LinePair, usize),
    kpairs: usize,
    y: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    debug_assert!(kpairs.is_multiple_of(TR));
    configure_tiles();
    let panels = cols.div_ceil(NR);
    for i in (0..rows).step_by(2 * TR) {
        let (a, y) = (a.add(i * lda), y.add(i * ldc));
        let rows = (rows - i).min(2 * TR);
        if rows < 2 * TR {
            // The last row block: tiles of its rows only (unused second tiles keep 16).
            let r2 = rows.saturating_sub(TR);
            Config::rows(rows.min(TR), if r2 == 0 { TR } else { r2 }).load();
        }
        for g in (0..panels).step_by(2) {
            let b = (panel.add(g * stride), panel.wrapping_add((g + 1) * stride));
            let block = Block {
                a: (a, 2 * lda),
                b,
                kpairs,
                y: (y.add(g * NR), ldc),
                rows,
                cols: (cols - g * NR).min(2 * NR),
            };
            match (rows > TR, g + 1 < panels) {
                (true, true) => block.run::<true, true>(),
                (true, false) => block.run::<true, false>(),
                (false, true) => block.run::<false, true>(),
                (false, false) => block.run::<false, false>(),
            }
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// One block of y: up to 32 rows × 32 columns.
struct Block {
    /// a's first row and its stride in bytes.
    a: (*const u16, usize),
    /// The block's two panels (the second unread unless P2).
    b: (*const LinePair, *const LinePair),
    kpairs: usize,
    /// y at the block's corner, and y's row stride in floats.
    y: (*mut f32, usize),
    rows: usize,
    cols: usize,
}

impl Block {
    /// With the second row tile (R2) and the second panel (P2) or without.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn run<const R2: bool, const P2: bool>(&self) {
        let (a, sa) = (self.a.0 as *const u8, self.a.1);
        let a2 = a.add(TR * sa);
        asm!("tilezero tmm0", options(nostack, nomem));
        if P2 {
            asm!("tilezero tmm1", options(nostack, nomem));
        }
        if R2 {
            asm!("tilezero tmm2", options(nostack, nomem));
        }
        if R2 && P2 {
            asm!("tilezero tmm3", options(nostack, nomem));
        }
        // 16 pair lines (32 k) per step: 64 bytes of each row of a.
        for q in (0..self.kpairs).step_by(TR) {
            // The panels stream from memory when few rows share them: ask for the lines
            // PREFETCH tiles ahead (wrapping pointers: a prefetch past the end is harmless).
            for l in 0..TR {
                let ahead = q + PREFETCH * TR + l;
                _mm_prefetch::<_MM_HINT_T0>(self.b.0.wrapping_add(ahead) as *const i8);
                if P2 {
                    _mm_prefetch::<_MM_HINT_T0>(self.b.1.wrapping_add(ahead) as *const i8);
                }
            }
            let ak = a.add(q * 4);
            asm!("tileloadd tmm4, [{0} + {1}*1]", in(reg) ak, in(reg) sa, options(nostack, readonly));
            asm!("tileloadd tmm6, [{0} + {1}*1]", in(reg) self.b.0.add(q), in(reg) TB, options(nostack, readonly));
            if P2 {
                asm!("tileloadd tmm7, [{0} + {1}*1]", in(reg) self.b.1.add(q), in(reg) TB, options(nostack, readonly));
            }
            if R2 {
                asm!("tileloadd tmm5, [{0} + {1}*1]", in(reg) a2.add(q * 4), in(reg) sa, options(nostack, readonly));
            }
            asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem));
            if P2 {
                asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem));
            }
            if R2 {
                asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem));
            }
            if R2 && P2 {
                asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem));
            }
        }
        let mut buf = Tile([0.0; TR * NR]);
        let out = buf.0.as_mut_ptr();
        macro_rules! store {
            ($t:literal, $r0:expr, $c0:expr) => {
                asm!(concat!("tilestored [{0} + {1}*1], tmm", $t), in(reg) out, in(reg) TB, options(nostack));
                self.add(&buf, $r0, $c0);
            };
        }
        store!(0, 0, 0);
        if P2 {
            store!(1, 0, NR);
        }
        if R2 {
            store!(2, TR, 0);
        }
        if R2 && P2 {
            store!(3, TR, NR);
        }
    }

    /// y[r0.., c0..] += the stored tile, within the block's rows and columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[inline]
    unsafe fn add(&self, tile: &Tile, r0: usize, c0: usize) {
        let (y, ldc) = self.y;
        let n = self.cols.saturating_sub(c0).min(NR);
        for r in 0..self.rows.saturating_sub(r0).min(TR) {
            let v = _mm512_load_ps(tile.0.as_ptr().add(r * NR));
            add_row(y.add((r0 + r) * ldc + c0), v, n);
        }
    }
}

/// One tile of f32 results, as `tilestored` writes it.
#[repr(C, align(64))]
struct Tile([f32; TR * NR]);
