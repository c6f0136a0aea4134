//! Thin owners of the raw llama.cpp objects the span engine needs.
//!
//! `llama-cpp-2` covers whole models; spans need what only the patched sys crate has
//! (hidden-state batches, `llama_set_layer_range`, `llama_model_span`), so the engine
//! holds the raw pointers here, each behind a type that frees it on drop. Every
//! `unsafe` block below calls llama.cpp with a pointer this module owns and keeps alive.

use std::ffi::CString;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Once;

use llama_cpp_sys_2 as sys;

use super::EngineError;

static BACKEND: Once = Once::new();

/// Initialises llama.cpp once per process and routes its logs to `tracing`.
pub fn init_backend() {
    BACKEND.call_once(|| {
        llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
        // SAFETY: called once, before any other llama.cpp call of this process.
        unsafe { sys::llama_backend_init() };
    });
}

/// A loaded model (whole or span).
pub struct Model {
    ptr: NonNull<sys::llama_model>,
}

// SAFETY: a llama_model is immutable after loading and llama.cpp allows sharing it across threads.
unsafe impl Send for Model {}
// SAFETY: as above.
unsafe impl Sync for Model {}

/// Where a loaded model sits in the whole model, as llama.cpp read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedSpan {
    /// First layer (whole-model index).
    pub first: u32,
    /// Layers loaded.
    pub n_layer: u32,
    /// Layers of the whole model.
    pub total: u32,
    /// Carries the token embedding.
    pub has_embedding: bool,
    /// Carries the output head.
    pub has_head: bool,
}

impl Model {
    /// Loads a GGUF, offloading `gpu_layers` layers to an accelerator if one is built in.
    pub fn load(path: &Path, gpu_layers: u32) -> Result<Self, EngineError> {
        init_backend();
        let c_path = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| EngineError::Load(format!("{}: path contains NUL", path.display())))?;
        // SAFETY: default params are plain data.
        let mut params = unsafe { sys::llama_model_default_params() };
        params.n_gpu_layers = i32::try_from(gpu_layers).unwrap_or(i32::MAX);
        // SAFETY: c_path is a valid C string for the duration of the call.
        let raw = unsafe { sys::llama_model_load_from_file(c_path.as_ptr(), params) };
        NonNull::new(raw).map(|ptr| Model { ptr }).ok_or_else(|| {
            EngineError::Load(format!("llama.cpp could not load {} (see the log for why)", path.display()))
        })
    }

    /// Loads only the tokenizer and metadata of a GGUF (tensors are not read): what a
    /// client needs to tokenize, detokenize and apply the chat template.
    pub fn load_vocab(path: &Path) -> Result<Self, EngineError> {
        init_backend();
        let c_path = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| EngineError::Load(format!("{}: path contains NUL", path.display())))?;
        // SAFETY: default params are plain data.
        let mut params = unsafe { sys::llama_model_default_params() };
        params.vocab_only = true;
        // SAFETY: c_path is a valid C string for the duration of the call.
        let raw = unsafe { sys::llama_model_load_from_file(c_path.as_ptr(), params) };
        NonNull::new(raw)
            .map(|ptr| Model { ptr })
            .ok_or_else(|| EngineError::Load(format!("llama.cpp could not read the tokenizer of {}", path.display())))
    }

    /// The model's chat template, if its metadata has one.
    pub fn chat_template(&self) -> Option<String> {
        // SAFETY: valid model pointer; a null name asks for the default template.
        let ptr = unsafe { sys::llama_model_chat_template(self.as_ptr(), std::ptr::null()) };
        // SAFETY: a non-null result is a NUL-terminated string owned by the model.
        (!ptr.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(ptr) }.to_string_lossy().into_owned())
    }

    /// A string value of the model's GGUF metadata.
    fn meta_str(&self, key: &str) -> Option<String> {
        let key = CString::new(key).ok()?;
        let mut buf = vec![0u8; 256];
        // SAFETY: valid model pointer; key and buf outlive the call, which writes at most
        // buf.len() bytes, NUL included.
        let n =
            unsafe { sys::llama_model_meta_val_str(self.as_ptr(), key.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        let n = usize::try_from(n).ok()?.min(buf.len() - 1);
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// The template chat messages are rendered with: the model's own, else (as llama.cpp's
    /// tools fall back to ChatML) the built-in one of its family, Gemma's for Gemma models.
    fn template_or_fallback(&self) -> String {
        self.chat_template().unwrap_or_else(|| {
            let gemma = self.meta_str("general.architecture").is_some_and(|a| a.starts_with("gemma"));
            (if gemma { "gemma" } else { "chatml" }).to_string()
        })
    }

    /// Renders `(role, content)` messages with the model's chat template (llama.cpp's
    /// built-in renderers; see [`Model::template_or_fallback`] for a model without one),
    /// ending with the assistant's turn opener when `add_assistant`.
    pub fn apply_chat_template(&self, messages: &[(&str, &str)], add_assistant: bool) -> Result<String, EngineError> {
        let template = self.template_or_fallback();
        let c = |s: &str| CString::new(s).map_err(|_| EngineError::Input("a chat message contains NUL".into()));
        let tmpl = c(&template)?;
        let owned: Vec<(CString, CString)> =
            messages.iter().map(|(r, t)| Ok((c(r)?, c(t)?))).collect::<Result<_, EngineError>>()?;
        let msgs: Vec<sys::llama_chat_message> =
            owned.iter().map(|(r, t)| sys::llama_chat_message { role: r.as_ptr(), content: t.as_ptr() }).collect();
        let mut buf = vec![0u8; 2 * messages.iter().map(|m| m.0.len() + m.1.len()).sum::<usize>() + 256];
        for _ in 0..2 {
            // SAFETY: tmpl, msgs (and the strings they point to) and buf outlive the call.
            let n = unsafe {
                sys::llama_chat_apply_template(
                    tmpl.as_ptr(),
                    msgs.as_ptr(),
                    msgs.len(),
                    add_assistant,
                    buf.as_mut_ptr().cast(),
                    i32::try_from(buf.len()).unwrap_or(i32::MAX),
                )
            };
            if n < 0 {
                return Err(EngineError::Input("llama.cpp does not know this model's chat template".into()));
            }
            if n as usize <= buf.len() {
                buf.truncate(n as usize);
                return String::from_utf8(buf)
                    .map_err(|_| EngineError::Input("chat template output is not UTF-8".into()));
            }
            buf.resize(n as usize, 0);
        }
        Err(EngineError::Input("chat template failed".into()))
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::llama_model {
        self.ptr.as_ptr()
    }

    /// Hidden size.
    pub fn n_embd(&self) -> u32 {
        // SAFETY: valid model pointer.
        unsafe { sys::llama_model_n_embd(self.as_ptr()) as u32 }
    }

    /// The span this model is.
    pub fn span(&self) -> LoadedSpan {
        let (mut first, mut total, mut has_embedding, mut has_head) = (0i32, 0i32, false, false);
        // SAFETY: valid model pointer; out-pointers are to locals.
        let n_layer = unsafe {
            sys::llama_model_span(self.as_ptr(), &mut first, &mut total, &mut has_embedding, &mut has_head);
            sys::llama_model_n_layer(self.as_ptr())
        };
        LoadedSpan { first: first as u32, n_layer: n_layer as u32, total: total as u32, has_embedding, has_head }
    }

    fn vocab(&self) -> *const sys::llama_vocab {
        // SAFETY: valid model pointer; the vocab lives as long as the model.
        unsafe { sys::llama_model_get_vocab(self.as_ptr()) }
    }

    /// Vocabulary size (0 for a middle span, which carries no tokenizer).
    pub fn n_vocab(&self) -> u32 {
        // SAFETY: valid vocab pointer.
        unsafe { sys::llama_vocab_n_tokens(self.vocab()).max(0) as u32 }
    }

    /// Tokenizes as llama.cpp's tools do (`add_special`, `parse_special`).
    pub fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<i32>, EngineError> {
        if self.n_vocab() == 0 {
            return Err(EngineError::NoVocab);
        }
        let len = i32::try_from(text.len()).map_err(|_| EngineError::Input("prompt too long".into()))?;
        let mut out = vec![0i32; text.len() + 8];
        for _ in 0..2 {
            // SAFETY: text/out are valid for the lengths passed.
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab(),
                    text.as_ptr().cast(),
                    len,
                    out.as_mut_ptr(),
                    out.len() as i32,
                    add_special,
                    true,
                )
            };
            if n >= 0 {
                out.truncate(n as usize);
                return Ok(out);
            }
            out.resize((-n) as usize, 0);
        }
        Err(EngineError::Input("tokenizer failed".into()))
    }

    /// The text of one token (special tokens rendered as text).
    pub fn token_piece(&self, token: i32) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        for _ in 0..2 {
            // SAFETY: buf is valid for its length.
            let n = unsafe {
                sys::llama_token_to_piece(self.vocab(), token, buf.as_mut_ptr().cast(), buf.len() as i32, 0, true)
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
        Vec::new()
    }

    /// BLAKE3 of the vocabulary: its size and every token's text. Two models with the
    /// same digest number their tokens alike, so one's tokens mean the same in the other
    /// (what a draft model must share with the model it drafts for).
    pub fn vocab_digest(&self) -> [u8; 32] {
        let n = self.n_vocab();
        let mut hasher = blake3::Hasher::new();
        hasher.update(&n.to_le_bytes());
        for token in 0..n as i32 {
            let piece = self.token_piece(token);
            hasher.update(&(piece.len() as u32).to_le_bytes());
            hasher.update(&piece);
        }
        *hasher.finalize().as_bytes()
    }

    /// Whether `token` ends generation.
    pub fn is_eog(&self, token: i32) -> bool {
        // SAFETY: valid vocab pointer.
        self.n_vocab() > 0 && unsafe { sys::llama_vocab_is_eog(self.vocab(), token) }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: we own the model; contexts borrowing it are dropped first (see SpanEngine field order).
        unsafe { sys::llama_model_free(self.as_ptr()) }
    }
}

/// Settings of a llama.cpp context.
#[derive(Debug, Clone, Copy)]
pub struct ContextParams {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub n_seq_max: u32,
    pub n_threads: i32,
    /// How long idle compute threads poll for the next decode before sleeping
    /// (ggml's polling level, 0–100).
    pub poll: u32,
}

/// The CPU threads a context computes with, owned here so that we choose how they wait.
///
/// Without one, ggml spins up threads for every decode, or (OpenMP builds) leaves them
/// spinning for milliseconds after it; either way a server steals the cores that the
/// next hop on the same machine needs. A pool whose `poll` is 0 sleeps as soon as a
/// decode ends and is woken by the next one.
struct ThreadPool {
    ptr: NonNull<sys::ggml_threadpool>,
}

impl ThreadPool {
    fn new(n_threads: i32, poll: u32) -> Result<Self, EngineError> {
        // SAFETY: plain-data defaults for n_threads threads.
        let mut params = unsafe { sys::ggml_threadpool_params_default(n_threads.max(1)) };
        params.poll = poll.min(100);
        // SAFETY: params is a valid, initialised struct for the duration of the call.
        let raw = unsafe { sys::ggml_threadpool_new(&mut params) };
        NonNull::new(raw)
            .map(|ptr| ThreadPool { ptr })
            .ok_or_else(|| EngineError::Load("ggml could not start its compute threads".into()))
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        // SAFETY: we own the pool; the context that used it has been freed (Context field order).
        unsafe { sys::ggml_threadpool_free(self.ptr.as_ptr()) }
    }
}

/// A llama.cpp context (KV cache and compute state) over a [`Model`]. Field order
/// matters: the context is freed before its thread pool.
pub struct Context {
    ptr: NonNull<sys::llama_context>,
    _threads: ThreadPool,
}

// SAFETY: a context is used from one thread at a time (the engine takes &mut self).
unsafe impl Send for Context {}

impl Context {
    /// Creates a context; `model` must outlive it.
    pub fn new(model: &Model, p: ContextParams) -> Result<Self, EngineError> {
        // SAFETY: default params are plain data.
        let mut params = unsafe { sys::llama_context_default_params() };
        params.n_ctx = p.n_ctx;
        params.n_batch = p.n_batch;
        params.n_ubatch = p.n_ubatch;
        params.n_seq_max = p.n_seq_max;
        params.n_threads = p.n_threads;
        params.n_threads_batch = p.n_threads;
        params.no_perf = true;
        let threads = ThreadPool::new(p.n_threads, p.poll)?;
        // SAFETY: valid model pointer.
        let raw = unsafe { sys::llama_init_from_model(model.as_ptr(), params) };
        let ptr = NonNull::new(raw).ok_or_else(|| EngineError::Load("llama.cpp could not create a context".into()))?;
        // SAFETY: both pointers are valid; the pool outlives the context (field order).
        unsafe { sys::llama_attach_threadpool(ptr.as_ptr(), threads.ptr.as_ptr(), threads.ptr.as_ptr()) };
        Ok(Context { ptr, _threads: threads })
    }

    fn as_ptr(&self) -> *mut sys::llama_context {
        self.ptr.as_ptr()
    }

    /// Runs layers `[begin, end)` (span-local) in the next decodes; `emit_hidden` turns on
    /// hidden-state output (llama.cpp's embeddings) instead of logits.
    pub fn set_layers(&mut self, begin: u32, end: u32, emit_hidden: bool) -> Result<(), EngineError> {
        // SAFETY: valid context pointer.
        let ok = unsafe { sys::llama_set_layer_range(self.as_ptr(), begin as i32, end as i32) };
        if !ok {
            return Err(EngineError::Input(format!("layer range {begin}..{end} is outside the span")));
        }
        // SAFETY: valid context pointer.
        unsafe { sys::llama_set_embeddings(self.as_ptr(), emit_hidden) };
        Ok(())
    }

    /// Decodes a batch.
    pub fn decode(&mut self, batch: &Batch) -> Result<(), EngineError> {
        // SAFETY: the batch was built by `Batch` and is fully initialised up to n_tokens.
        let rc = unsafe { sys::llama_decode(self.as_ptr(), batch.raw) };
        match rc {
            0 => Ok(()),
            1 => Err(EngineError::CacheFull),
            rc => Err(EngineError::Decode(rc)),
        }
    }

    /// Hidden state of batch row `i` after a hidden-state decode.
    pub fn hidden_row(&self, i: i32, width: usize) -> Result<&[f32], EngineError> {
        // SAFETY: valid context; llama.cpp returns null for rows without output.
        let p = unsafe { sys::llama_get_embeddings_ith(self.as_ptr(), i) };
        if p.is_null() {
            return Err(EngineError::NoOutput("hidden state"));
        }
        // SAFETY: llama.cpp guarantees n_embd floats at p until the next decode; &self borrows the context.
        Ok(unsafe { std::slice::from_raw_parts(p, width) })
    }

    /// Logits of batch row `i` after a logits decode, to be changed in place (penalties).
    pub fn logits_row_mut(&mut self, i: i32, n_vocab: usize) -> Result<&mut [f32], EngineError> {
        // SAFETY: valid context; null for rows without output.
        let p = unsafe { sys::llama_get_logits_ith(self.as_ptr(), i) };
        if p.is_null() {
            return Err(EngineError::NoOutput("logits"));
        }
        // SAFETY: n_vocab floats at p, owned by the context until the next decode; &mut self
        // keeps anything else from reading or writing them meanwhile.
        Ok(unsafe { std::slice::from_raw_parts_mut(p, n_vocab) })
    }

    /// Drops a sequence's cache from position `from` on (`from = 0` drops it all).
    pub fn remove_from(&mut self, seq: i32, from: u32) {
        // SAFETY: valid context; the memory object lives as long as it.
        unsafe {
            let mem = sys::llama_get_memory(self.as_ptr());
            sys::llama_memory_seq_rm(mem, seq, from as i32, -1);
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: we own the context.
        unsafe { sys::llama_free(self.as_ptr()) }
    }
}

/// A llama.cpp batch of token ids or of hidden-state rows.
pub struct Batch {
    raw: sys::llama_batch,
    capacity: usize,
    width: usize,
}

impl Batch {
    /// A batch for up to `capacity` rows: token ids when `width == 0`, else hidden rows of `width`.
    pub fn new(capacity: usize, width: usize) -> Self {
        // SAFETY: llama_batch_init allocates the arrays for `capacity` rows (one sequence id each).
        let raw = unsafe { sys::llama_batch_init(capacity as i32, width as i32, 1) };
        Batch { raw, capacity, width }
    }

    /// Rows the batch can hold.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of rows added.
    pub(crate) fn len(&self) -> usize {
        self.raw.n_tokens as usize
    }

    fn push_common(&mut self, pos: u32, seq: i32, output: bool) -> usize {
        let i = self.len();
        assert!(i < self.capacity, "batch capacity is checked by the engine");
        // SAFETY: i < capacity; the arrays were allocated for `capacity` rows.
        unsafe {
            *self.raw.pos.add(i) = pos as i32;
            *self.raw.n_seq_id.add(i) = 1;
            *(*self.raw.seq_id.add(i)) = seq;
            *self.raw.logits.add(i) = i8::from(output);
        }
        self.raw.n_tokens += 1;
        i
    }

    /// Adds a token row.
    pub fn push_token(&mut self, token: i32, pos: u32, seq: i32, output: bool) {
        debug_assert_eq!(self.width, 0);
        let i = self.push_common(pos, seq, output);
        // SAFETY: token array allocated for capacity rows when width == 0.
        unsafe { *self.raw.token.add(i) = token };
    }

    /// Adds a hidden-state row of `width` floats.
    pub fn push_hidden(&mut self, row: &[f32], pos: u32, seq: i32, output: bool) {
        debug_assert_eq!(row.len(), self.width);
        let i = self.push_common(pos, seq, output);
        // SAFETY: embd array holds capacity * width floats.
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), self.raw.embd.add(i * self.width), self.width) };
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // SAFETY: allocated by llama_batch_init.
        unsafe { sys::llama_batch_free(self.raw) }
    }
}
