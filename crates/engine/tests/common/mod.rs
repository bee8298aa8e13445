//! Helpers shared by the integration tests.
// Each test binary uses a different part of the helpers.
#![allow(dead_code)]

pub mod gguf_writer;
pub mod tiny_model;
