//! A GGUF v3 writer for crafted test files: metadata values of the types the importer reads (and
//! raw ones, for corrupt values), tensors as (name, GGUF dims, type id, bytes), 32-byte aligned.

/// Metadata values the writer can emit (GGUF value type ids in comments).
#[derive(Clone)]
pub enum V {
    U32(u32),          // 4
    F32(f32),          // 6
    Str(&'static str), // 8
    Strs(Vec<String>), // 9 of 8
    I32s(Vec<i32>),    // 9 of 5
    Raw(u32, Vec<u8>), // any type id followed by raw bytes, for corrupt values
}

pub struct Gguf {
    pub kv: Vec<(String, V)>,
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

/// Byte offsets of the sections of a written file, for truncation tests.
pub struct Layout {
    pub metadata: usize,
    pub tensor_infos: usize,
    pub data: usize,
}

pub fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

impl Gguf {
    pub fn set(&mut self, key: &str, v: V) {
        self.kv.retain(|(k, _)| k != key);
        self.kv.push((key.to_owned(), v));
    }

    pub fn tensor_mut(&mut self, name: &str) -> &mut (String, Vec<u64>, u32, Vec<u8>) {
        self.tensors.iter_mut().find(|t| t.0 == name).unwrap()
    }

    pub fn write(&self) -> (Vec<u8>, Layout) {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        let metadata = b.len();
        for (k, v) in &self.kv {
            put_str(&mut b, k);
            match v {
                V::U32(x) => b.extend(4u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
                V::F32(x) => b.extend(6u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
                V::Str(s) => {
                    b.extend(8u32.to_le_bytes());
                    put_str(&mut b, s);
                }
                V::Strs(a) => {
                    b.extend(9u32.to_le_bytes().into_iter().chain(8u32.to_le_bytes()));
                    b.extend((a.len() as u64).to_le_bytes());
                    a.iter().for_each(|s| put_str(&mut b, s));
                }
                V::I32s(a) => {
                    b.extend(9u32.to_le_bytes().into_iter().chain(5u32.to_le_bytes()));
                    b.extend((a.len() as u64).to_le_bytes());
                    a.iter().for_each(|x| b.extend(x.to_le_bytes()));
                }
                V::Raw(t, raw) => {
                    b.extend(t.to_le_bytes());
                    b.extend(raw);
                }
            }
        }
        let tensor_infos = b.len();
        let mut offset = 0u64;
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offset += (data.len() as u64).div_ceil(32) * 32;
        }
        b.resize(b.len().div_ceil(32) * 32, 0);
        let data = b.len();
        for (_, _, _, d) in &self.tensors {
            b.extend(d);
            b.resize(b.len().div_ceil(32) * 32, 0);
        }
        (
            b,
            Layout {
                metadata,
                tensor_infos,
                data,
            },
        )
    }
}
