//! The portable microkernel of the packed GEMM: the AVX2 one's loop in plain Rust (what the
//! compiler makes of it for the baseline target), for CPUs below AVX2 and as `DLM_CPU_ISA=generic`.

use super::{Line, NR};

/// Rows per tile: four rows of 16 accumulators fill the sixteen SSE registers.
const MR: usize = 4;

/// y[rows × cols] += x[rows × kc] · panels, as the AVX2 `strip`.
///
/// # Safety
/// As the AVX2 `strip`: x holds `rows` rows of `lda` floats (kc of each read), each of the
/// cols/16 panels holds kc lines `panel_stride` apart, y holds `rows` rows of `ldc`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn strip<L: Line>(
    x: *const f32,
    lda: usize,
    (panel, panel_stride): (*const L, usize),
    kc: usize,
    y: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let mut i = 0;
    while i < rows {
        let a = x.add(i * lda);
        for g in 0..cols.div_ceil(NR) {
            let (b, c) = (panel.add(g * panel_stride), y.add(i * ldc + g * NR));
            let cols = (cols - g * NR).min(NR);
            match rows - i {
                1 => tile::<1, L>(a, lda, b, kc, c, ldc, cols),
                2 => tile::<2, L>(a, lda, b, kc, c, ldc, cols),
                3 => tile::<3, L>(a, lda, b, kc, c, ldc, cols),
                _ => tile::<MR, L>(a, lda, b, kc, c, ldc, cols),
            }
        }
        i += MR;
    }
}

#[inline]
unsafe fn tile<const R: usize, L: Line>(
    a: *const f32,
    lda: usize,
    panel: *const L,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    let mut acc = [[0f32; NR]; R];
    for q in 0..kc {
        let b = (*panel.add(q)).widen();
        for (r, acc) in acc.iter_mut().enumerate() {
            let av = *a.add(r * lda + q);
            for (s, bv) in acc.iter_mut().zip(b) {
                *s += av * bv;
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let row = c.add(r * ldc);
        for (j, v) in acc.iter().take(cols).enumerate() {
            *row.add(j) += v;
        }
    }
}
