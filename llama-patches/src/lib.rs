//! Raw bindings to the patched llama.cpp (see `README.md` beside this crate).
//!
//! This crate stands in for upstream `llama-cpp-sys-2` through `[patch.crates-io]`:
//! the same bindings, plus the Nakshatra span API (`llama_set_layer_range`,
//! `llama_model_span`) that the patches add to `llama.h`.

#![allow(non_upper_case_globals)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(unpredictable_function_pointer_comparisons)]
#![allow(clippy::all)]
#![allow(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
