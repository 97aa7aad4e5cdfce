//! ggml tensor types: their names, block layouts, and f32 dequantisation of the ones dlm imports
//! (the quantised blocks through `ops::quant`).
//! All arithmetic is f32, as in ggml's reference dequantisers, so results match them bit for bit.

use half::{bf16, f16};

use crate::ops::quant::QuantType;

pub const F32: u32 = 0;
pub const F16: u32 = 1;
pub const BF16: u32 = 30;

/// ggml type names by id (ids 4 and 5 were removed from ggml and stay unnamed).
pub fn type_name(id: u32) -> String {
    const NAMES: &[(u32, &str)] = &[
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (6, "Q5_0"),
        (7, "Q5_1"),
        (8, "Q8_0"),
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (12, "Q4_K"),
        (13, "Q5_K"),
        (14, "Q6_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (30, "BF16"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    NAMES
        .iter()
        .find(|(i, _)| *i == id)
        .map_or_else(|| "unknown".to_owned(), |(_, n)| (*n).to_owned())
}

/// (elements per block, bytes per block) of the types dlm can import; None for the rest.
pub fn type_layout(id: u32) -> Option<(u64, u64)> {
    match id {
        F32 => Some((1, 4)),
        F16 | BF16 => Some((1, 2)),
        _ => QuantType::from_ggml_id(id).map(|t| (t.block_elems() as u64, t.block_bytes() as u64)),
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantises `n` elements from `bytes`. None when the type is not importable or `bytes` is
/// not exactly the size `n` elements need (the reader guarantees it is, so that is a bug).
pub fn dequantize(id: u32, bytes: &[u8], n: usize) -> Option<Vec<f32>> {
    let (block, block_bytes) = type_layout(id)?;
    let (block, block_bytes) = (block as usize, block_bytes as usize);
    if !n.is_multiple_of(block) || bytes.len() != n / block * block_bytes {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    let blocks = bytes.chunks_exact(block_bytes);
    match id {
        F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        F16 => out.extend(blocks.map(|b| f16_at(b, 0))),
        BF16 => out.extend(blocks.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        _ => {
            // The quantised types: block layouts live with their kernels (ops::quant).
            let ty = QuantType::from_ggml_id(id)?;
            out = crate::ops::quant::dequantize(ty, bytes)?;
        }
    }
    Some(out)
}
