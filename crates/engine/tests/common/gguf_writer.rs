//! A small GGUF writer for tests: builds valid files from metadata [`Value`]s and tensor specs,
//! and records where each length/type/offset field landed so tests can corrupt exactly that field.

use engine::gguf::{Array, TensorType, Value};

/// Kinds of fields whose offsets [`Built`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Version,
    TensorCount,
    KvCount,
    /// Length of a key (label: the key).
    KeyLen,
    /// Value type id of a key (label: the key).
    ValueType,
    /// Length of a string value (label: the key, or `key[i]` for an array element).
    StrLen,
    /// Element type id of an array (label: the key).
    ArrayElemType,
    /// Element count of an array (label: the key).
    ArrayLen,
    /// Length of a tensor name (label: the tensor name).
    NameLen,
    NDims,
    /// One dimension (label: `name[i]`).
    Dim,
    TensorType,
    TensorOffset,
}

/// Where one field lies in the built file.
#[derive(Debug, Clone)]
pub struct FieldAt {
    pub kind: Field,
    pub label: String,
    pub offset: usize,
    /// 4 or 8 bytes.
    pub width: usize,
}

/// A tensor to write. `type_id` is raw so tests can write ids that do not exist.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub data: Vec<u8>,
    /// Data offset relative to the data section; `None` packs tensors in order at the alignment.
    pub offset: Option<u64>,
}

impl TensorSpec {
    /// A tensor of a known type whose data has the size its shape implies (filled with a pattern).
    pub fn new(name: &str, dims: &[u64], dtype: TensorType) -> Self {
        let n: u64 = dims.iter().product();
        let n_bytes = n / dtype.block_size() * dtype.type_size();
        let data = (0..n_bytes)
            .map(|i| (i.wrapping_mul(31) % 251) as u8)
            .collect();
        TensorSpec {
            name: name.to_string(),
            dims: dims.to_vec(),
            type_id: dtype.id(),
            data,
            offset: None,
        }
    }
}

/// What to write.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    pub version: u32,
    /// Used only for padding; set the `general.alignment` key separately.
    pub alignment: u64,
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<TensorSpec>,
}

/// A written file and the positions of its fields.
#[derive(Debug, Clone)]
pub struct Built {
    pub bytes: Vec<u8>,
    pub fields: Vec<FieldAt>,
    pub data_offset: usize,
}

impl Built {
    pub fn field(&self, kind: Field, label: &str) -> &FieldAt {
        self.fields
            .iter()
            .find(|f| f.kind == kind && f.label == label)
            .unwrap_or_else(|| panic!("no {kind:?} field labelled '{label}'"))
    }

    /// The file with `field` overwritten by `value` (truncated to the field's width).
    pub fn with_field(&self, kind: Field, label: &str, value: u64) -> Vec<u8> {
        let f = self.field(kind, label);
        let mut bytes = self.bytes.clone();
        bytes[f.offset..f.offset + f.width].copy_from_slice(&value.to_le_bytes()[..f.width]);
        bytes
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            alignment: 32,
            kv: Vec::new(),
            tensors: Vec::new(),
        }
    }

    pub fn kv(mut self, key: &str, value: Value) -> Self {
        self.kv.push((key.to_string(), value));
        self
    }

    pub fn tensor(mut self, spec: TensorSpec) -> Self {
        self.tensors.push(spec);
        self
    }

    pub fn build(&self) -> Built {
        let mut w = Out {
            bytes: Vec::new(),
            fields: Vec::new(),
        };
        w.bytes.extend_from_slice(b"GGUF");
        w.u32(Field::Version, "", self.version);
        w.u64(Field::TensorCount, "", self.tensors.len() as u64);
        w.u64(Field::KvCount, "", self.kv.len() as u64);
        for (key, value) in &self.kv {
            w.string(Field::KeyLen, key, key);
            w.value(key, value);
        }
        let mut next = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            let offset = t.offset.unwrap_or(next);
            next = (offset + t.data.len() as u64).next_multiple_of(self.alignment);
            offsets.push(offset);
            w.string(Field::NameLen, &t.name, &t.name);
            w.u32(Field::NDims, &t.name, t.dims.len() as u32);
            for (i, &d) in t.dims.iter().enumerate() {
                w.u64(Field::Dim, &format!("{}[{i}]", t.name), d);
            }
            w.u32(Field::TensorType, &t.name, t.type_id);
            w.u64(Field::TensorOffset, &t.name, offset);
        }
        let data_offset = w.bytes.len().next_multiple_of(self.alignment as usize);
        w.bytes.resize(data_offset, 0);
        for (t, &offset) in self.tensors.iter().zip(&offsets) {
            let start = data_offset + offset as usize;
            if w.bytes.len() < start + t.data.len() {
                w.bytes.resize(start + t.data.len(), 0);
            }
            w.bytes[start..start + t.data.len()].copy_from_slice(&t.data);
        }
        Built {
            bytes: w.bytes,
            fields: w.fields,
            data_offset,
        }
    }
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

struct Out {
    bytes: Vec<u8>,
    fields: Vec<FieldAt>,
}

impl Out {
    fn mark(&mut self, kind: Field, label: &str, width: usize) {
        self.fields.push(FieldAt {
            kind,
            label: label.to_string(),
            offset: self.bytes.len(),
            width,
        });
    }

    fn u32(&mut self, kind: Field, label: &str, v: u32) {
        self.mark(kind, label, 4);
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, kind: Field, label: &str, v: u64) {
        self.mark(kind, label, 8);
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    fn string(&mut self, kind: Field, label: &str, s: &str) {
        self.u64(kind, label, s.len() as u64);
        self.bytes.extend_from_slice(s.as_bytes());
    }

    fn value(&mut self, key: &str, value: &Value) {
        self.u32(Field::ValueType, key, value.value_type().id());
        self.payload(key, value);
    }

    /// A value without its type id, as it appears on its own or as an array element.
    fn payload(&mut self, key: &str, value: &Value) {
        match value {
            Value::U8(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::I8(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => self.bytes.push(u8::from(*v)),
            Value::Str(s) => self.string(Field::StrLen, key, s),
            Value::U64(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::Array(a) => {
                self.u32(Field::ArrayElemType, key, a.elem().id());
                self.u64(Field::ArrayLen, key, a.len() as u64);
                for i in 0..a.len() {
                    let item = a.get(i).expect("index in range");
                    self.payload(&format!("{key}[{i}]"), &item);
                }
            }
        }
    }
}

/// A valid file with metadata of every value type, arrays of several element types (one of
/// strings), and tensors of several types with data.
pub fn sample() -> GgufWriter {
    GgufWriter::new()
        .kv("general.architecture", Value::Str("llama".into()))
        .kv("t.u8", Value::U8(200))
        .kv("t.i8", Value::I8(-100))
        .kv("t.u16", Value::U16(60000))
        .kv("t.i16", Value::I16(-30000))
        .kv("t.u32", Value::U32(4_000_000_000))
        .kv("t.i32", Value::I32(-2_000_000_000))
        .kv("t.f32", Value::F32(1.5e-6))
        .kv("t.bool", Value::Bool(true))
        .kv("t.u64", Value::U64(1 << 40))
        .kv("t.i64", Value::I64(-(1 << 40)))
        .kv("t.f64", Value::F64(2.5e300))
        .kv("t.str", Value::Str("héllo wörld".into()))
        .kv(
            "tokenizer.ggml.tokens",
            Value::Array(Array::Str(
                ["<s>", "</s>", "a", "Ġb", "日本", ""]
                    .map(String::from)
                    .to_vec(),
            )),
        )
        .kv(
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(vec![3, 3, 1, 1, 1, 6])),
        )
        .kv("t.arr_u8", Value::Array(Array::U8(vec![0, 1, 255])))
        .kv("t.arr_f32", Value::Array(Array::F32(vec![0.5, -2.0])))
        .kv("t.arr_bool", Value::Array(Array::Bool(vec![true, false])))
        .kv("t.arr_u64", Value::Array(Array::U64(vec![u64::MAX])))
        .kv("t.arr_empty", Value::Array(Array::I16(vec![])))
        .tensor(TensorSpec::new("tok.weight", &[8, 3], TensorType::F32))
        .tensor(TensorSpec::new("norm.weight", &[8], TensorType::F16))
        .tensor(TensorSpec::new("q4.weight", &[64, 2], TensorType::Q4_0))
        .tensor(TensorSpec::new("q8.weight", &[32], TensorType::Q8_0))
        .tensor(TensorSpec::new("k.weight", &[256], TensorType::Q4K))
        .tensor(TensorSpec::new("ids", &[3, 1, 1, 2], TensorType::I32))
}
