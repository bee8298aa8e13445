//! Metadata lookups: raw values, and typed accessors that say which key is missing or mistyped.
//!
//! Integer accessors accept any of GGUF's eight integer types as long as the value fits, because
//! writers disagree on them (llama.cpp's converters use u32, others i32 or u64 for the same key).

use super::error::GgufError;
use super::types::{Array, Value};
use super::Gguf;

impl Gguf {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv_index
            .get(key)
            .and_then(|&i| self.kv.get(i))
            .map(|(_, v)| v)
    }

    /// All key-value pairs, in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.kv.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        required(key, self.opt_u32(key))
    }

    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.opt_integer(key, "u32")
    }

    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        required(key, self.opt_u64(key))
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.opt_integer(key, "u64")
    }

    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        required(key, self.opt_i64(key))
    }

    pub fn opt_i64(&self, key: &str) -> Result<Option<i64>, GgufError> {
        self.opt_integer(key, "i64")
    }

    /// An `f32` or `f64` value, as `f32`.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        required(key, self.opt_f32(key))
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v)),
            Some(Value::F64(v)) => {
                let narrowed = *v as f32;
                if v.is_finite() && !narrowed.is_finite() {
                    return Err(out_of_range(key, v, "f32"));
                }
                Ok(Some(narrowed))
            }
            Some(other) => Err(wrong_type(key, "f32 or f64", other)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        required(key, self.opt_bool(key))
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(wrong_type(key, "bool", other)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        required(key, self.opt_str(key))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_type(key, "str", other)),
        }
    }

    /// An array of strings (a vocabulary, merges), borrowed.
    pub fn get_str_array(&self, key: &str) -> Result<&[String], GgufError> {
        required(key, self.opt_str_array(key))
    }

    pub fn opt_str_array(&self, key: &str) -> Result<Option<&[String]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(Array::Str(items))) => Ok(Some(items)),
            Some(other) => Err(wrong_type(key, "arr[str]", other)),
        }
    }

    /// An array of any integer type whose elements all fit in an `i32` (token types).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        required(key, self.opt_i32_array(key))
    }

    pub fn opt_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>, GgufError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let expected = "an array of integers";
        let Value::Array(array) = value else {
            return Err(wrong_type(key, expected, value));
        };
        // Fast path for the common case: no per-element conversion.
        if let Array::I32(items) = array {
            return Ok(Some(items.clone()));
        }
        let Some(items) = array.integers() else {
            return Err(wrong_type(key, expected, value));
        };
        items
            .enumerate()
            .map(|(i, n)| {
                i32::try_from(n).map_err(|_| out_of_range(key, format!("{n} (element {i})"), "i32"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Any integer value that fits in `T`.
    fn opt_integer<T: TryFrom<i128>>(
        &self,
        key: &str,
        target: &'static str,
    ) -> Result<Option<T>, GgufError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let Some(n) = value.as_integer() else {
            return Err(wrong_type(key, "an integer", value));
        };
        T::try_from(n)
            .map(Some)
            .map_err(|_| out_of_range(key, n, target))
    }
}

fn required<T>(key: &str, found: Result<Option<T>, GgufError>) -> Result<T, GgufError> {
    found?.ok_or_else(|| GgufError::MissingKey(key.to_string()))
}

fn wrong_type(key: &str, expected: &'static str, found: &Value) -> GgufError {
    GgufError::WrongType {
        key: key.to_string(),
        expected,
        found: found.type_description(),
    }
}

fn out_of_range(key: &str, value: impl std::fmt::Display, target: &'static str) -> GgufError {
    GgufError::OutOfRange {
        key: key.to_string(),
        value: value.to_string(),
        target,
    }
}
