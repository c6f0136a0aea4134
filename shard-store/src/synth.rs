//! Synthetic GGUFs with random weights, of any shape, for every architecture that can be
//! split into spans ([`SynthArch`]).
//!
//! Used by fast tests, simulations and large-shape benchmarks: the file is a real model
//! of its architecture as far as llama.cpp is concerned (SentencePiece-style vocabulary
//! with byte fallback, so any text tokenizes), with the parts that set the architecture
//! apart (QKV biases, q/k norms, experts with top-k routing, post-norms with a sliding
//! window and a global-layer pattern, fused QKV); only its weights are noise. Tensor data
//! is generated row by row while it is written, so a model of many gigabytes needs only
//! a few megabytes of memory. The same config gives the same bytes.

use std::io::Write;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::gguf::{GgufError, GgufWriter, TensorInfo, TensorSource, Value, ValueType};
use crate::tensor_type::TensorType;

/// The architecture of a synthetic model: which llama.cpp graph runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SynthArch {
    /// Llama (SmolLM2, Mistral, Llama 3): the plain pre-norm transformer.
    #[default]
    Llama,
    /// Qwen2: biases on the Q, K and V projections.
    Qwen2,
    /// Qwen3: RMS norms on each query and key head.
    Qwen3,
    /// Qwen3-MoE: Qwen3 attention with a mixture of experts (top-k routing) as the FFN.
    Qwen3Moe,
    /// Gemma 3: q/k norms, post-attention and post-FFN norms, a sliding window on all
    /// layers but every sixth (global, with its own RoPE base), scaled embeddings.
    Gemma3,
    /// Phi-3: one fused QKV projection and a fused gate-and-up FFN projection.
    Phi3,
    /// Mistral 3 (Ministral, Mistral Small 3.x): the llama layout under a graph of its own.
    Mistral3,
}

impl SynthArch {
    /// Every architecture.
    pub const ALL: [SynthArch; 7] = [
        SynthArch::Llama,
        SynthArch::Qwen2,
        SynthArch::Qwen3,
        SynthArch::Qwen3Moe,
        SynthArch::Gemma3,
        SynthArch::Phi3,
        SynthArch::Mistral3,
    ];

    /// The GGUF `general.architecture` name.
    pub fn name(self) -> &'static str {
        match self {
            SynthArch::Llama => "llama",
            SynthArch::Qwen2 => "qwen2",
            SynthArch::Qwen3 => "qwen3",
            SynthArch::Qwen3Moe => "qwen3moe",
            SynthArch::Gemma3 => "gemma3",
            SynthArch::Phi3 => "phi3",
            SynthArch::Mistral3 => "mistral3",
        }
    }
}

impl std::str::FromStr for SynthArch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SynthArch::ALL.into_iter().find(|a| a.name() == s.to_ascii_lowercase()).ok_or_else(|| {
            let names: Vec<&str> = SynthArch::ALL.iter().map(|a| a.name()).collect();
            format!("unknown architecture `{s}` (expected one of {})", names.join(", "))
        })
    }
}

impl std::fmt::Display for SynthArch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Shape and options of a synthetic model. `Default` is a tiny 4-layer llama model.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Architecture. Default llama.
    pub arch: SynthArch,
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
    /// Qwen3-MoE: experts per layer. Default 8.
    pub n_expert: u32,
    /// Qwen3-MoE: experts each token is routed to. Default 2.
    pub n_expert_used: u32,
    /// Gemma 3: the sliding window, in positions. Default 8.
    pub sliding_window: u32,
    /// Gemma 3: the width of a head (`key_length`) when it is not `n_embd / n_head`, as
    /// in Gemma-3-27B, whose attention scale then depends on the model type. Default none.
    pub head_dim: Option<u32>,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            arch: SynthArch::Llama,
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
            n_expert: 8,
            n_expert_used: 2,
            sliding_window: 8,
            head_dim: None,
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
        if self.arch == SynthArch::Qwen3Moe && (self.n_expert_used == 0 || self.n_expert_used > self.n_expert) {
            return bad("n_expert_used must be between 1 and n_expert");
        }
        if self.arch == SynthArch::Gemma3 && self.sliding_window == 0 {
            return bad("the sliding window must be positive");
        }
        if self.head_dim.is_some_and(|d| self.arch != SynthArch::Gemma3 || d == 0 || !d.is_multiple_of(2)) {
            return bad("a head width of its own is for gemma3 only, and must be even");
        }
        Ok(())
    }

    fn head_dim(&self) -> u32 {
        self.head_dim.unwrap_or(self.n_embd / self.n_head)
    }

    /// Size in bytes of the weights this config produces.
    pub fn weight_bytes(&self) -> u64 {
        self.tensor_table().iter().filter_map(TensorInfo::n_bytes).sum()
    }

    fn tensor_table(&self) -> Vec<TensorInfo> {
        use SynthArch::*;
        let (e, f, v) = (self.n_embd as u64, self.n_ff as u64, self.n_vocab as u64);
        let (hd, kv) = (self.head_dim() as u64, (self.head_dim() * self.n_head_kv) as u64);
        let q = hd * self.n_head as u64;
        let (w, f32) = (self.weight_type, TensorType::F32);
        let t = |name: String, dims: Vec<u64>, ty| TensorInfo { name, dims, ty, offset: 0 };
        let mut out = vec![t("token_embd.weight".into(), vec![e, v], w)];
        for i in 0..self.n_layer {
            let b = |n: &str| format!("blk.{i}.{n}");
            out.push(t(b("attn_norm.weight"), vec![e], f32));
            if self.arch == Phi3 {
                out.push(t(b("attn_qkv.weight"), vec![e, e + 2 * kv], w));
            } else {
                out.push(t(b("attn_q.weight"), vec![e, q], w));
                out.push(t(b("attn_k.weight"), vec![e, kv], w));
                out.push(t(b("attn_v.weight"), vec![e, kv], w));
            }
            if self.arch == Qwen2 {
                out.push(t(b("attn_q.bias"), vec![q], f32));
                out.push(t(b("attn_k.bias"), vec![kv], f32));
                out.push(t(b("attn_v.bias"), vec![kv], f32));
            }
            if matches!(self.arch, Qwen3 | Qwen3Moe | Gemma3) {
                out.push(t(b("attn_q_norm.weight"), vec![hd], f32));
                out.push(t(b("attn_k_norm.weight"), vec![hd], f32));
            }
            out.push(t(b("attn_output.weight"), vec![q, e], w));
            if self.arch == Gemma3 {
                out.push(t(b("post_attention_norm.weight"), vec![e], f32));
            }
            out.push(t(b("ffn_norm.weight"), vec![e], f32));
            match self.arch {
                Qwen3Moe => {
                    let x = self.n_expert as u64;
                    out.push(t(b("ffn_gate_inp.weight"), vec![e, x], f32));
                    out.push(t(b("ffn_gate_exps.weight"), vec![e, f, x], w));
                    out.push(t(b("ffn_down_exps.weight"), vec![f, e, x], w));
                    out.push(t(b("ffn_up_exps.weight"), vec![e, f, x], w));
                }
                Phi3 => {
                    out.push(t(b("ffn_down.weight"), vec![f, e], w));
                    out.push(t(b("ffn_up.weight"), vec![e, 2 * f], w));
                }
                Llama | Qwen2 | Qwen3 | Gemma3 | Mistral3 => {
                    out.push(t(b("ffn_gate.weight"), vec![e, f], w));
                    out.push(t(b("ffn_down.weight"), vec![f, e], w));
                    out.push(t(b("ffn_up.weight"), vec![e, f], w));
                }
            }
            if self.arch == Gemma3 {
                out.push(t(b("post_ffw_norm.weight"), vec![e], f32));
            }
        }
        out.push(t("output_norm.weight".into(), vec![e], TensorType::F32));
        if !self.tied_embedding {
            out.push(t("output.weight".into(), vec![e, v], w));
        }
        out
    }

    fn metadata(&self) -> Vec<(String, Value)> {
        let s = |v: &str| Value::String(v.to_string());
        let arch = self.arch.name();
        let k = |key: &str| format!("{arch}.{key}");
        // llama.cpp gives a model whose name contains "phi3" the special tokens of Phi-3's
        // own vocabulary, which this one does not have.
        let name = if self.arch == SynthArch::Phi3 { "phi" } else { arch };
        // Gemma 3's global layers use a RoPE base of their own; a pattern applied to the
        // wrong layers then changes every token.
        let rope_base = if self.arch == SynthArch::Gemma3 { 1e6 } else { 10000.0 };
        let mut m = vec![
            ("general.architecture".to_string(), s(arch)),
            ("general.name".to_string(), s(&format!("synthetic-{name}-{}L-{}d", self.n_layer, self.n_embd))),
            (k("context_length"), Value::U32(self.n_ctx_train)),
            (k("embedding_length"), Value::U32(self.n_embd)),
            (k("block_count"), Value::U32(self.n_layer)),
            (k("feed_forward_length"), Value::U32(self.n_ff)),
            (k("attention.head_count"), Value::U32(self.n_head)),
            (k("attention.head_count_kv"), Value::U32(self.n_head_kv)),
            (k("rope.dimension_count"), Value::U32(self.head_dim())),
            (k("rope.freq_base"), Value::F32(rope_base)),
            (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
            (k("vocab_size"), Value::U32(self.n_vocab)),
        ];
        match self.arch {
            SynthArch::Qwen3Moe => {
                m.push((k("expert_count"), Value::U32(self.n_expert)));
                m.push((k("expert_used_count"), Value::U32(self.n_expert_used)));
                m.push((k("expert_feed_forward_length"), Value::U32(self.n_ff)));
            }
            SynthArch::Gemma3 => {
                m.push((k("attention.sliding_window"), Value::U32(self.sliding_window)));
                m.push((k("rope.freq_base_swa"), Value::F32(10000.0)));
                m.push((k("attention.key_length"), Value::U32(self.head_dim())));
                m.push((k("attention.value_length"), Value::U32(self.head_dim())));
            }
            _ => {}
        }
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
    let is_norm = info.dims.len() == 1 && !info.name.ends_with(".bias");
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
