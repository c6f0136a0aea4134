//! Span GGUFs: a contiguous range of a model's layers as a loadable file.
//!
//! A span of layers `[a, b)` of an `n`-layer model is a normal GGUF with
//! `{arch}.block_count = b - a`, tensors `blk.{i}` renamed to `blk.{i - a}`, per-layer
//! metadata arrays cut to the range, and four `nakshatra.span.*` keys saying where it
//! sits. The first span (a == 0) carries the token embedding; the last (b == n) carries
//! the output norm and head (and the token embedding when the head is tied to it). A
//! middle span carries neither, nor the tokenizer: its file is its layers plus a small
//! header. Slicing is planned first ([`plan_span`], pure data), then written
//! ([`write_span`]), so the same plan can later be fed from other sources of tensor bytes.

use std::ops::Range;
use std::path::Path;

use crate::gguf::{GgufError, GgufFile, GgufWriter, TensorInfo, TensorSource, Value};

/// Key: index in the whole model of the span's first layer.
pub const KEY_FIRST_LAYER: &str = "nakshatra.span.first_layer";
/// Key: number of layers of the whole model.
pub const KEY_TOTAL_LAYERS: &str = "nakshatra.span.total_layers";
/// Key: whether the span carries the token embedding (takes token ids).
pub const KEY_HAS_EMBEDDING: &str = "nakshatra.span.has_embedding";
/// Key: whether the span carries the output norm and head (produces logits).
pub const KEY_HAS_HEAD: &str = "nakshatra.span.has_head";

/// Architectures whose llama.cpp graph runs any range of layers (the graph patches in
/// `llama-patches/`). A model of any other architecture runs only whole.
pub const SPLITTABLE_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "qwen3moe", "gemma3", "phi3", "mistral3"];

const TOKEN_EMBD: &str = "token_embd.weight";
const OUTPUT: &str = "output.weight";

/// Errors of span planning and writing.
#[derive(Debug, thiserror::Error)]
pub enum SpanError {
    /// Reading or writing GGUF failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The requested layer range does not fit the model.
    #[error("layer range {start}:{end} is not a non-empty range within the model's {n_layer} layers")]
    BadRange {
        /// Requested first layer.
        start: u32,
        /// Requested end (exclusive).
        end: u32,
        /// Layers in the model.
        n_layer: u32,
    },
    /// The source is itself a span; slice the whole model instead.
    #[error("the source file is already a span (layers {first}..{end} of {total})")]
    AlreadySpan {
        /// Its first layer.
        first: u32,
        /// Its end layer.
        end: u32,
        /// Layers of its model.
        total: u32,
    },
    /// A tensor the span needs is not in the source.
    #[error("the source has no tensor `{0}`, which the span needs")]
    MissingTensor(String),
    /// The architecture's graph cannot run a part of the model.
    #[error(
        "architecture {arch} cannot be split into spans (these can: {}); serve it whole",
        SPLITTABLE_ARCHITECTURES.join(", ")
    )]
    Unsplittable {
        /// The model's architecture.
        arch: String,
    },
    /// Every layer of the span is a global-attention layer of a sliding-window model,
    /// which llama.cpp's sliding-window cache cannot hold on its own.
    #[error(
        "layers {start}:{end} are all global-attention layers of a sliding-window model; a span needs at least \
         one sliding-window layer (widen it by a layer)"
    )]
    OnlyGlobalLayers {
        /// First layer.
        start: u32,
        /// End (exclusive).
        end: u32,
    },
}

/// Checks that the layers `range` (whole-model indices) of the model or span file with
/// this metadata can run as one span: the whole model always can; a part only of a
/// splittable architecture, and (for a sliding-window model) only with at least one
/// sliding-window layer in it.
pub fn check_splittable(metadata: &[(String, Value)], range: Range<u32>) -> Result<(), SpanError> {
    let get = |k: &str| metadata.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let arch = get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| GgufError::MissingKey("general.architecture".into()))?;
    let n_layer = get(&format!("{arch}.block_count")).and_then(Value::as_u64).unwrap_or(0);
    // A span file says where it sits; a whole model is its own span 0..n.
    let first = get(KEY_FIRST_LAYER).and_then(Value::as_u64).unwrap_or(0);
    let total = get(KEY_TOTAL_LAYERS).and_then(Value::as_u64).unwrap_or(n_layer);
    if range.start == 0 && u64::from(range.end) >= total {
        return Ok(());
    }
    if !SPLITTABLE_ARCHITECTURES.contains(&arch) {
        return Err(SpanError::Unsplittable { arch: arch.to_string() });
    }
    if !range.clone().any(|il| !is_global_layer(metadata, arch, first, u64::from(il))) {
        return Err(SpanError::OnlyGlobalLayers { start: range.start, end: range.end });
    }
    Ok(())
}

/// Whether whole-model layer `il` is a global-attention layer of a model that mixes
/// them with sliding-window layers, as llama.cpp reads it: a per-layer array (cut to
/// the span in a span file starting at `first`), else a period whose last layer is
/// global. False for a model without a sliding window.
fn is_global_layer(metadata: &[(String, Value)], arch: &str, first: u64, il: u64) -> bool {
    // The architectures of the allow-list with a sliding-window/global pattern, and its default period.
    let default_period = match arch {
        "gemma3" => 6,
        _ => return false,
    };
    let get = |k: &str| metadata.iter().find(|(key, _)| *key == format!("{arch}.{k}")).map(|(_, v)| v);
    if get("attention.sliding_window").and_then(Value::as_u64).unwrap_or(0) == 0 {
        return false;
    }
    match get("attention.sliding_window_pattern") {
        Some(Value::Array(_, items)) => {
            let local = il.checked_sub(first).and_then(|i| items.get(i as usize));
            !local.and_then(Value::as_bool).unwrap_or(true)
        }
        other => {
            let period = other.and_then(Value::as_u64).unwrap_or(default_period);
            period != 0 && il % period == period - 1
        }
    }
}

/// Where a span sits in its model, as read from a GGUF's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanPosition {
    /// Index of the first layer in the whole model.
    pub first: u32,
    /// Number of layers in the span.
    pub n_layer: u32,
    /// Layers in the whole model.
    pub total: u32,
    /// Carries the token embedding.
    pub has_embedding: bool,
    /// Carries the output norm and head.
    pub has_head: bool,
}

impl SpanPosition {
    /// The span's layers as a range of whole-model indices.
    pub fn layers(&self) -> Range<u32> {
        self.first..self.first + self.n_layer
    }

    /// Reads the position of a GGUF: a span's keys, or the whole model for a plain file.
    pub fn of(file: &GgufFile) -> Result<Self, GgufError> {
        Self::of_metadata(&file.metadata)
    }

    /// Reads the position from a GGUF's metadata (see [`SpanPosition::of`]).
    pub fn of_metadata(metadata: &[(String, Value)]) -> Result<Self, GgufError> {
        let get = |k: &str| metadata.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let missing = |k: &str| GgufError::MissingKey(k.into());
        let arch =
            get("general.architecture").and_then(Value::as_str).ok_or_else(|| missing("general.architecture"))?;
        let block_count = format!("{arch}.block_count");
        let n_layer =
            as_u32(get(&block_count).and_then(Value::as_u64).ok_or_else(|| missing(&block_count))?, "block_count")?;
        let u = |k: &str, default: u32| -> Result<u32, GgufError> {
            get(k).map_or(Ok(default), |v| as_u32(v.as_u64().ok_or_else(|| missing(k))?, k))
        };
        let b =
            |k: &str| -> Result<bool, GgufError> { get(k).map_or(Ok(true), |v| v.as_bool().ok_or_else(|| missing(k))) };
        let pos = SpanPosition {
            first: u(KEY_FIRST_LAYER, 0)?,
            n_layer,
            total: u(KEY_TOTAL_LAYERS, n_layer)?,
            has_embedding: b(KEY_HAS_EMBEDDING)?,
            has_head: b(KEY_HAS_HEAD)?,
        };
        if pos.first.checked_add(n_layer).is_none_or(|end| end > pos.total) {
            return Err(GgufError::MissingKey(format!("{KEY_FIRST_LAYER} + block_count exceeds {KEY_TOTAL_LAYERS}")));
        }
        Ok(pos)
    }

    /// Whether this is a whole model (every layer, embedding and head).
    pub fn is_whole(&self) -> bool {
        self.first == 0 && self.n_layer == self.total && self.has_embedding && self.has_head
    }
}

fn as_u32(v: u64, what: &str) -> Result<u32, GgufError> {
    u32::try_from(v).map_err(|_| GgufError::MissingKey(format!("{what} out of range")))
}

/// What a span file holds: its metadata and, for each tensor, its new entry and source name.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanPlan {
    /// Where the span sits.
    pub position: SpanPosition,
    /// Metadata of the span file, in order.
    pub metadata: Vec<(String, Value)>,
    /// (tensor entry in the span file, name of the tensor in the whole model), in order.
    pub tensors: Vec<(TensorInfo, String)>,
}

/// Plans the span `range` of a whole model described by its metadata and tensor table.
pub fn plan_span(
    metadata: &[(String, Value)],
    tensors: &[TensorInfo],
    range: Range<u32>,
) -> Result<SpanPlan, SpanError> {
    let get = |k: &str| metadata.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let arch = get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| GgufError::MissingKey("general.architecture".into()))?
        .to_string();
    let block_count_key = format!("{arch}.block_count");
    let n_layer = get(&block_count_key)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| GgufError::MissingKey(block_count_key.clone()))?;
    if let Some(first) = get(KEY_FIRST_LAYER).and_then(Value::as_u64) {
        let total = get(KEY_TOTAL_LAYERS).and_then(Value::as_u64).unwrap_or(0);
        let (first, total) = (first.min(u32::MAX.into()) as u32, total.min(u32::MAX.into()) as u32);
        return Err(SpanError::AlreadySpan { first, end: first.saturating_add(n_layer), total });
    }
    if range.start >= range.end || range.end > n_layer {
        return Err(SpanError::BadRange { start: range.start, end: range.end, n_layer });
    }
    check_splittable(metadata, range.clone())?;

    let position = SpanPosition {
        first: range.start,
        n_layer: range.end - range.start,
        total: n_layer,
        has_embedding: range.start == 0,
        has_head: range.end == n_layer,
    };
    let keeps_vocab = position.has_embedding || position.has_head;
    let arch_prefix = format!("{arch}.");
    let vocab_size_key = format!("{arch}.vocab_size");

    let mut out_meta = Vec::with_capacity(metadata.len() + 4);
    for (key, value) in metadata {
        // A middle span needs no vocabulary; without these keys llama.cpp loads it without one.
        if !keeps_vocab && (key.starts_with("tokenizer.") || *key == vocab_size_key) {
            continue;
        }
        let value = if *key == block_count_key {
            Value::U32(position.n_layer)
        } else {
            match value {
                // Per-layer arrays (head counts, feed-forward sizes, ...) follow the layers.
                Value::Array(ty, items) if key.starts_with(&arch_prefix) && items.len() == n_layer as usize => {
                    Value::Array(*ty, items[range.start as usize..range.end as usize].to_vec())
                }
                other => other.clone(),
            }
        };
        out_meta.push((key.clone(), value));
    }
    if !keeps_vocab {
        out_meta.push(("tokenizer.ggml.model".into(), Value::String("none".into())));
    }
    out_meta.push((KEY_FIRST_LAYER.into(), Value::U32(position.first)));
    out_meta.push((KEY_TOTAL_LAYERS.into(), Value::U32(position.total)));
    out_meta.push((KEY_HAS_EMBEDDING.into(), Value::Bool(position.has_embedding)));
    out_meta.push((KEY_HAS_HEAD.into(), Value::Bool(position.has_head)));

    let tied_head = !tensors.iter().any(|t| t.name == OUTPUT);
    let mut out_tensors = Vec::new();
    for t in tensors {
        let role = TensorRole::of(&t.name);
        let keep = match role {
            TensorRole::Block(i) => range.contains(&i),
            TensorRole::Embedding => position.has_embedding || (position.has_head && tied_head),
            TensorRole::Head => position.has_head,
            TensorRole::Shared => true,
        };
        if !keep {
            continue;
        }
        let new_name = match (role, block_index(&t.name)) {
            (TensorRole::Block(i), Some((_, rest))) => format!("blk.{}.{rest}", i - range.start),
            _ => t.name.clone(),
        };
        out_tensors.push((role, TensorInfo { name: new_name, offset: 0, ..t.clone() }, t.name.clone()));
    }
    // Canonical order (stable within a role), so a span assembled from per-role pieces is
    // byte-identical to one sliced from the file.
    out_tensors.sort_by_key(|(role, _, _)| *role);
    let out_tensors: Vec<(TensorInfo, String)> = out_tensors.into_iter().map(|(_, t, from)| (t, from)).collect();
    if position.has_embedding && !tensors.iter().any(|t| t.name == TOKEN_EMBD) {
        return Err(SpanError::MissingTensor(TOKEN_EMBD.into()));
    }
    for i in range.clone() {
        let prefix = format!("blk.{i}.");
        if !tensors.iter().any(|t| t.name.starts_with(&prefix)) {
            return Err(SpanError::MissingTensor(format!("{prefix}*")));
        }
    }

    Ok(SpanPlan { position, metadata: out_meta, tensors: out_tensors })
}

/// What part of a model a tensor belongs to. The order of the variants is the canonical
/// order of tensors in a span file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TensorRole {
    /// The token embedding (`token_embd.*`).
    Embedding,
    /// Tensors outside blocks that every layer may use (e.g. rope frequencies).
    Shared,
    /// A tensor of transformer block `i` (`blk.{i}.*`).
    Block(u32),
    /// The output norm and head (`output_norm.*`, `output.*`).
    Head,
}

impl TensorRole {
    /// The role of the tensor named `name`.
    pub fn of(name: &str) -> Self {
        if let Some((i, _)) = block_index(name) {
            return TensorRole::Block(i);
        }
        match name.split('.').next().unwrap_or(name) {
            "token_embd" => TensorRole::Embedding,
            "output" | "output_norm" => TensorRole::Head,
            _ => TensorRole::Shared,
        }
    }
}

/// `blk.{i}.{rest}` -> `(i, rest)`.
pub fn block_index(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (idx, rest) = rest.split_once('.')?;
    Some((idx.parse().ok()?, rest))
}

/// Writes the span `range` of the whole model `src` to `out`.
pub fn write_span(src: &GgufFile, range: Range<u32>, out: &Path) -> Result<SpanPlan, SpanError> {
    let plan = plan_span(&src.metadata, &src.tensors, range)?;
    let mut sources = Vec::with_capacity(plan.tensors.len());
    for (info, src_name) in &plan.tensors {
        let src_info = src.tensor(src_name).ok_or_else(|| SpanError::MissingTensor(src_name.clone()))?.clone();
        sources.push(TensorSource {
            info: info.clone(),
            write: Box::new(move |w| src.copy_tensor_data(&src_info, w).map(|_| ())),
        });
    }
    GgufWriter::with_alignment(src.alignment).write(out, &plan.metadata, sources)?;
    Ok(plan)
}

/// Parses `A:B` (end exclusive) into a layer range.
pub fn parse_layer_range(s: &str) -> Option<Range<u32>> {
    let (a, b) = s.split_once(':')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a < b).then_some(a..b)
}
