//! Nakshatra's model files and blob store: GGUF reading and writing, span slicing,
//! synthetic models, content addressing (manifests, model ids, blobs on disk) and
//! verified blob transfer over any transport. See the code map in
//! `docs/ARCHITECTURE.md` for where this crate sits.
//!
//! - [`gguf`]: parse a GGUF header and stream tensor bytes; write a GGUF deterministically.
//! - [`span`]: plan and write a span GGUF (a contiguous range of layers) from a whole model.
//! - [`synth`]: random-weight llama-family models of any shape for tests and benchmarks.
//! - [`manifest`]: blob roles and formats, manifests and model ids (content addressing).
//! - [`store`]: the on-disk blob store (atomic, verified writes; verifying reads).
//! - [`import`]: GGUF -> blobs + manifest, and blobs -> span GGUF.
//! - [`transfer`]: verified, resumable, multi-provider blob download (transport-agnostic).
//!
//! This crate knows nothing of llama.cpp or the network: it moves bytes and metadata.

pub mod gguf;
pub mod import;
pub mod manifest;
pub mod span;
pub mod store;
pub mod synth;
pub mod tensor_type;
pub mod transfer;

pub use gguf::{GgufError, GgufFile, GgufWriter, TensorInfo, Value};
pub use import::{assemble_span, cached_span, import_gguf, tokenizer_file, ImportError, ImportReport};
pub use manifest::{BlobRef, BlobRole, Hash, Manifest, ModelId};
pub use span::{plan_span, write_span, SpanError, SpanPlan, SpanPosition};
pub use store::{default_data_dir, Store, StoreError};
pub use synth::{write_synthetic, SynthArch, SynthConfig};
pub use tensor_type::TensorType;
