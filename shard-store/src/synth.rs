//! Synthetic llama-family GGUFs with random weights, of any shape.
//!
//! Used by fast tests, simulations and large-shape benchmarks: the file is a real
//! llama model as far as llama.cpp is concerned (SentencePiece-style vocabulary with
//! byte fallback, so any text tokenizes), only its weights are noise. Tensor data is
//! generated row by row while it is written, so a model of many gigabytes needs
//! only a few megabytes of memory. The same config gives the same bytes.

use std::io::Write;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::gguf::{GgufError, GgufWriter, TensorInfo, TensorSource, Value, ValueType};
use crate::tensor_type::TensorType;

/// Shape and options of a synthetic model. `Default` is a tiny 4-layer model.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Transformer layers. Default 4.
    pub n_layer: u32,
    /// Hidden width. Default 64.
    pub n_embd: u32,
    /// Attention heads. Default 4.
    pub n_head: u32,
    /// Key/value heads (grouped-query attention when fewer than `n_head`). Default 2.
    pub n_head_kv: u32,
    /// Feed-forward width. Default 128.
    pub n_ff: u32,
    /// Vocabulary size, at least 300 (control and byte tokens come first). Default 512.
    pub n_vocab: u32,
    /// Training context length written to the file. Default 2048.
    pub n_ctx_train: u32,
    /// Type of the 2-D weight matrices (F32, F16 or Q8_0); norms are always F32. Default F32.
    pub weight_type: TensorType,
    /// Whether the output head reuses the token embedding (no `output.weight`). Default false.
    pub tied_embedding: bool,
    /// Seed of the weights. Default 1.
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            n_layer: 4,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 128,
            n_vocab: 512,
            n_ctx_train: 2048,
            weight_type: TensorType::F32,
            tied_embedding: false,
            seed: 1,
        }
    }
}

/// Errors of synthetic model generation.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// The configuration cannot describe a valid model.
    #[error("invalid synthetic model config: {0}")]
    Config(String),
    /// Writing failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

const N_SPECIAL: u32 = 3; // <unk>, <s>, </s>
const N_BYTE: u32 = 256;

impl SynthConfig {
    fn validate(&self) -> Result<(), SynthError> {
        let bad = |m: &str| Err(SynthError::Config(m.to_string()));
        if self.n_layer == 0 || self.n_embd == 0 || self.n_ff == 0 {
            return bad("layers, width and feed-forward width must be positive");
        }
        if self.n_head == 0
            || !self.n_embd.is_multiple_of(self.n_head)
            || !(self.n_embd / self.n_head).is_multiple_of(2)
        {
            return bad("n_embd must split into n_head heads of even size");
        }
        if self.n_head_kv == 0 || !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad("n_head must be a multiple of n_head_kv");
        }
        if self.n_vocab < 300 {
            return bad("n_vocab must be at least 300");
        }
        if !matches!(self.weight_type, TensorType::F32 | TensorType::F16 | TensorType::Q8_0) {
            return bad("weight_type must be F32, F16 or Q8_0");
        }
        if self.weight_type == TensorType::Q8_0 && (!self.n_embd.is_multiple_of(32) || !self.n_ff.is_multiple_of(32)) {
            return bad("Q8_0 needs n_embd and n_ff to be multiples of 32");
        }
        Ok(())
    }

    fn head_dim(&self) -> u32 {
        self.n_embd / self.n_head
    }

    /// Size in bytes of the weights this config produces.
    pub fn weight_bytes(&self) -> u64 {
        self.tensor_table().iter().filter_map(TensorInfo::n_bytes).sum()
    }

    fn tensor_table(&self) -> Vec<TensorInfo> {
        let (e, f, v) = (self.n_embd as u64, self.n_ff as u64, self.n_vocab as u64);
        let kv = (self.head_dim() * self.n_head_kv) as u64;
        let w = self.weight_type;
        let t = |name: String, dims: Vec<u64>, ty| TensorInfo { name, dims, ty, offset: 0 };
        let mut out = vec![t("token_embd.weight".into(), vec![e, v], w)];
        for i in 0..self.n_layer {
            out.push(t(format!("blk.{i}.attn_norm.weight"), vec![e], TensorType::F32));
            out.push(t(format!("blk.{i}.attn_q.weight"), vec![e, e], w));
            out.push(t(format!("blk.{i}.attn_k.weight"), vec![e, kv], w));
            out.push(t(format!("blk.{i}.attn_v.weight"), vec![e, kv], w));
            out.push(t(format!("blk.{i}.attn_output.weight"), vec![e, e], w));
            out.push(t(format!("blk.{i}.ffn_norm.weight"), vec![e], TensorType::F32));
            out.push(t(format!("blk.{i}.ffn_gate.weight"), vec![e, f], w));
            out.push(t(format!("blk.{i}.ffn_down.weight"), vec![f, e], w));
            out.push(t(format!("blk.{i}.ffn_up.weight"), vec![e, f], w));
        }
        out.push(t("output_norm.weight".into(), vec![e], TensorType::F32));
        if !self.tied_embedding {
            out.push(t("output.weight".into(), vec![e, v], w));
        }
        out
    }

    fn metadata(&self) -> Vec<(String, Value)> {
        let s = |v: &str| Value::String(v.to_string());
        let mut m = vec![
            ("general.architecture".to_string(), s("llama")),
            ("general.name".to_string(), s(&format!("synthetic-llama-{}L-{}d", self.n_layer, self.n_embd))),
            ("llama.context_length".to_string(), Value::U32(self.n_ctx_train)),
            ("llama.embedding_length".to_string(), Value::U32(self.n_embd)),
            ("llama.block_count".to_string(), Value::U32(self.n_layer)),
            ("llama.feed_forward_length".to_string(), Value::U32(self.n_ff)),
            ("llama.attention.head_count".to_string(), Value::U32(self.n_head)),
            ("llama.attention.head_count_kv".to_string(), Value::U32(self.n_head_kv)),
            ("llama.rope.dimension_count".to_string(), Value::U32(self.head_dim())),
            ("llama.rope.freq_base".to_string(), Value::F32(10000.0)),
            ("llama.attention.layer_norm_rms_epsilon".to_string(), Value::F32(1e-5)),
            ("llama.vocab_size".to_string(), Value::U32(self.n_vocab)),
        ];
        let (tokens, scores, types) = self.vocab();
        m.push(("tokenizer.ggml.model".to_string(), s("llama")));
        m.push(("tokenizer.ggml.tokens".to_string(), Value::Array(ValueType::String, tokens)));
        m.push(("tokenizer.ggml.scores".to_string(), Value::Array(ValueType::F32, scores)));
        m.push(("tokenizer.ggml.token_type".to_string(), Value::Array(ValueType::I32, types)));
        m.push(("tokenizer.ggml.unknown_token_id".to_string(), Value::U32(0)));
        m.push(("tokenizer.ggml.bos_token_id".to_string(), Value::U32(1)));
        m.push(("tokenizer.ggml.eos_token_id".to_string(), Value::U32(2)));
        m.push(("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(true)));
        m
    }

    /// SentencePiece-style vocabulary: specials, 256 byte tokens, then single characters,
    /// word-start characters and letter pairs until `n_vocab`.
    fn vocab(&self) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
        const NORMAL: i32 = 1;
        const UNKNOWN: i32 = 2;
        const CONTROL: i32 = 3;
        const BYTE: i32 = 6;
        let mut pieces: Vec<(String, i32)> =
            vec![("<unk>".into(), UNKNOWN), ("<s>".into(), CONTROL), ("</s>".into(), CONTROL)];
        pieces.extend((0..N_BYTE).map(|b| (format!("<0x{b:02X}>"), BYTE)));
        let letters: Vec<char> = ('a'..='z').collect();
        let mut normal: Vec<String> = Vec::new();
        normal.extend((33u8..127).map(|c| (c as char).to_string()));
        normal.extend(letters.iter().map(|c| format!("\u{2581}{c}")));
        normal.push("\u{2581}".into());
        for a in &letters {
            for b in &letters {
                normal.push(format!("{a}{b}"));
                normal.push(format!("\u{2581}{a}{b}"));
            }
        }
        let want = (self.n_vocab - N_SPECIAL - N_BYTE) as usize;
        let mut i = 0;
        while normal.len() < want {
            normal.push(format!("<extra_{i}>"));
            i += 1;
        }
        pieces.extend(normal.into_iter().take(want).map(|p| (p, NORMAL)));
        let n = pieces.len();
        let tokens = pieces.iter().map(|(p, _)| Value::String(p.clone())).collect();
        let scores = (0..n).map(|i| Value::F32(-(i as f32))).collect();
        let types = pieces.iter().map(|(_, t)| Value::I32(*t)).collect();
        (tokens, scores, types)
    }
}

/// Writes the synthetic model `cfg` to `path`; returns the file size.
pub fn write_synthetic(cfg: &SynthConfig, path: &Path) -> Result<u64, SynthError> {
    cfg.validate()?;
    let table = cfg.tensor_table();
    let sources = table
        .into_iter()
        .enumerate()
        .map(|(idx, info)| {
            let seed = cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(idx as u64);
            let write_info = info.clone();
            TensorSource { info, write: Box::new(move |w| write_random(&write_info, seed, w)) }
        })
        .collect();
    Ok(GgufWriter::default().write(path, &cfg.metadata(), sources)?)
}

/// Generates one tensor's values row by row and writes them in its type.
fn write_random(info: &TensorInfo, seed: u64, w: &mut dyn Write) -> Result<(), GgufError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let row_len = info.dims[0] as usize;
    let n_rows = (info.n_elements() / info.dims[0]) as usize;
    let is_norm = info.dims.len() == 1;
    // Scale like a trained network's init so activations stay finite through many layers.
    let scale = if info.name == "token_embd.weight" { 1.0 } else { 1.0 / (row_len as f32).sqrt() };
    let io = |source| GgufError::Io { path: info.name.clone().into(), source };
    let mut row = vec![0f32; row_len];
    let mut bytes = Vec::with_capacity(row_len * 4);
    for _ in 0..n_rows {
        for x in row.iter_mut() {
            *x = if is_norm { 1.0 + rng.gen_range(-0.1..0.1) } else { rng.gen_range(-scale..scale) };
        }
        bytes.clear();
        encode_row(&row, info.ty, &mut bytes);
        w.write_all(&bytes).map_err(io)?;
    }
    Ok(())
}

fn encode_row(row: &[f32], ty: TensorType, out: &mut Vec<u8>) {
    match ty {
        TensorType::F16 => out.extend(row.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes())),
        TensorType::Q8_0 => {
            for block in row.chunks(32) {
                let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend(half::f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|x| (x * inv).round() as i8 as u8));
            }
        }
        _ => out.extend(row.iter().flat_map(|x| x.to_le_bytes())),
    }
}
