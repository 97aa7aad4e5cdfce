//! GGUF v2/v3 container reader over a memory map. Every length and offset comes from the file,
//! so every read is bounds-checked and every count is checked against the bytes left before
//! anything is allocated: a corrupt file yields an error saying what was being read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::dequant::type_layout;
use super::value::{GgufValue, TensorInfo};
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Arrays of arrays are legal; the cap keeps a crafted file from exhausting the stack.
const MAX_NESTING: usize = 8;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;

/// An open GGUF file: metadata, tensor directory and the mapped bytes.
pub struct GgufFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    pub version: u32,
    pub metadata: HashMap<String, GgufValue>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset of the (aligned) data section.
    pub data_offset: u64,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; like every mmap user we assume nobody truncates the file
        // while it is open (we only ever copy out of it during import).
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mut c = Cursor {
            buf: &mmap,
            pos: 0,
            path,
        };

        let magic = c.bytes(4, "the magic number")?;
        if magic != MAGIC {
            return Err(c.err(format!(
                "not a GGUF file (magic {magic:02x?}, expected \"GGUF\")"
            )));
        }
        let version = c.u32("the version")?;
        match version {
            2 | 3 => {}
            1 => return Err(c.err("GGUF version 1 is not supported (only 2 and 3)")),
            v if v.swap_bytes() <= 3 => {
                return Err(c.err("big-endian GGUF files are not supported"))
            }
            v => return Err(c.err(format!("unknown GGUF version {v} (only 2 and 3)"))),
        }
        let n_tensors = c.u64("the tensor count")?;
        let n_kv = c.u64("the metadata count")?;
        // A key/value pair takes at least 13 bytes and a tensor info at least 24: reject counts
        // the file cannot hold before they size any allocation.
        c.check_count(n_kv, 13, "metadata entries")?;
        c.check_count(n_tensors, 24, "tensor infos")?;

        let mut metadata = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let what = format!("metadata entry {} of {n_kv}", i + 1);
            let key = c.string(&what)?;
            let ty = c.u32(&format!("the type of metadata {key:?}"))?;
            let value = c.value(ty, &format!("metadata {key:?}"), 0)?;
            metadata.insert(key, value);
        }

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let what = format!("tensor info {} of {n_tensors}", i + 1);
            let name = c.string(&what)?;
            let n_dims = c.u32(&what)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.err(format!(
                    "tensor {name} has {n_dims} dimensions (1..={MAX_DIMS} allowed)"
                )));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64(&what))
                .collect::<Result<Vec<_>>>()?;
            let dtype = c.u32(&what)?;
            let offset = c.u64(&what)?;
            tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                offset,
            });
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(c.err(format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = mmap.len() as u64;
        let file = Self {
            path: path.to_owned(),
            mmap,
            version,
            metadata,
            tensors,
            data_offset,
        };
        for t in &file.tensors {
            file.check_tensor(t, file_len)?;
        }
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Byte size of a tensor: Ok(None) when its type is one dlm cannot size (not importable),
    /// Err(()) when the size overflows u64 (a corrupt shape).
    fn byte_size(t: &TensorInfo) -> std::result::Result<Option<u64>, ()> {
        let n = t
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or(())?;
        let Some((block, bytes)) = type_layout(t.dtype) else {
            return Ok(None);
        };
        (n / block).checked_mul(bytes).map(Some).ok_or(())
    }

    /// Validates the shape and, for types dlm knows, that the data lies inside the file.
    fn check_tensor(&self, t: &TensorInfo, file_len: u64) -> Result<()> {
        let size = Self::byte_size(t)
            .ok()
            .filter(|_| usize::try_from(t.n_elements()).is_ok());
        let Some(size) = size else {
            return Err(self.err(format!(
                "tensor {}: dimensions {:?} are impossibly large",
                t.name, t.dims
            )));
        };
        let Some(need) = size else { return Ok(()) };
        let block = type_layout(t.dtype).map_or(1, |l| l.0);
        if !t.dims[0].is_multiple_of(block) {
            return Err(self.err(format!(
                "tensor {}: first dimension {} is not a multiple of the {} block size {block}",
                t.name,
                t.dims[0],
                t.type_name()
            )));
        }
        let end = self
            .data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(need));
        match end {
            Some(end) if end <= file_len => Ok(()),
            _ => {
                Err(self.err(format!(
                "tensor {}: data extends past end of file (needs {need} bytes at data offset {}, \
                 file has {file_len}; {} elements of {})",
                t.name, t.offset, t.n_elements(), t.type_name()
            )))
            }
        }
    }

    /// The raw bytes of a tensor (bounds were checked at open; types dlm cannot size error).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8]> {
        let size = Self::byte_size(t)
            .ok()
            .flatten()
            .ok_or_else(|| self.unsupported(t))?;
        let start = self.data_offset + t.offset;
        usize::try_from(start)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(s, n)| self.mmap.get(s..s.checked_add(n)?))
            .ok_or_else(|| self.err(format!("tensor {}: data extends past end of file", t.name)))
    }

    /// Dequantised values in GGUF order (ne0 fastest), i.e. a row-major `[ne1, ne0]` matrix.
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let bytes = self.tensor_bytes(t)?;
        super::dequant::dequantize(t.dtype, bytes, t.n_elements() as usize)
            .ok_or_else(|| self.unsupported(t))
    }

    pub(crate) fn unsupported(&self, t: &TensorInfo) -> Error {
        self.err(format!(
            "tensor {} has quantisation type {} ({}), which dlm does not import; \
             supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K",
            t.name,
            t.type_name(),
            t.dtype
        ))
    }

    pub(crate) fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::gguf(&self.path, msg)
    }
}

/// A bounds-checked little-endian reader over the mapped bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::gguf(self.path, msg)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated while reading {what} (needs {n} bytes at offset {}, file has {})",
                self.pos,
                self.buf.len()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn check_count(&self, n: u64, min_bytes: u64, what: &str) -> Result<()> {
        if n.saturating_mul(min_bytes) > self.remaining() as u64 {
            return Err(self.err(format!(
                "{n} {what} claimed, but only {} bytes are left (truncated or corrupt file)",
                self.remaining()
            )));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(self.err(format!(
                "truncated while reading {what}: string of {len} bytes at offset {}, only {} left",
                self.pos,
                self.remaining()
            )));
        }
        let b = self.bytes(len as usize, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(format!("{what}: string is not UTF-8")))
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("{what}: bool byte {b} is neither 0 nor 1"))),
            },
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(
                        self.err(format!("{what}: arrays nested deeper than {MAX_NESTING}"))
                    );
                }
                let elem = self.u32(what)?;
                let n = self.u64(what)?;
                // Smallest encoding of one element, so n cannot outgrow the file.
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(self.err(format!("{what}: unknown array element type {t}"))),
                };
                self.check_count(n, min, &format!("elements in {what}"))?;
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem, what, depth + 1)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            t => return Err(self.err(format!("{what}: unknown value type {t}"))),
        })
    }
}
