//! GGUF reading and writing.
//!
//! [`GgufFile::open`] parses the header (metadata and tensor table) and keeps the file
//! open; tensor bytes are read on demand, so a multi-gigabyte model is never held in
//! memory. [`GgufWriter`] lays out a new file (header, aligned tensor data) and streams
//! each tensor's bytes in table order. Every length read from a file is checked against
//! the file's size before anything is allocated, so a corrupt file is an error, not an
//! out-of-memory abort.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::tensor_type::TensorType;

const MAGIC: &[u8; 4] = b"GGUF";
/// The GGUF version this module writes (it reads 2 and 3).
pub const VERSION: u32 = 3;
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_DIMS: u32 = 4;

/// Errors of GGUF parsing and writing.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The underlying file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not a valid GGUF file.
    #[error("{path}: not a valid GGUF file: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A metadata key the caller needs is absent or has the wrong type.
    #[error("metadata key `{0}` is missing or has an unexpected type")]
    MissingKey(String),
    /// A tensor the caller needs is absent.
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    /// A writer was given inconsistent input.
    #[error("cannot write GGUF: {0}")]
    Write(String),
}

/// Shorthand for results of this module.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// The type tag of a metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
#[allow(missing_docs)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    fn from_u32(v: u32) -> Option<Self> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// An array: its element type and elements (all of that type).
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value's type tag.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.3.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost first (ggml order).
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: TensorType,
    /// Offset of the data from the start of the data section (reading only; the writer assigns it).
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements, or `None` if it does not fit in a u64 (a malformed shape).
    pub fn checked_n_elements(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, d| n.checked_mul(*d))
    }

    /// Number of elements (of a shape [`TensorInfo::n_bytes`] accepted).
    pub fn n_elements(&self) -> u64 {
        self.checked_n_elements().unwrap_or(u64::MAX)
    }

    /// Size of the tensor's data in bytes, or `None` if the shape does not fit the type's blocks.
    pub fn n_bytes(&self) -> Option<u64> {
        self.ty.n_bytes(self.checked_n_elements()?, self.dims.first().copied().unwrap_or(1))
    }
}

/// A parsed GGUF file: its metadata and tensor table, with the file kept open for tensor reads.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    file: File,
    file_len: u64,
    /// GGUF version of the file.
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor table in file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Alignment of tensor data.
    pub alignment: u64,
}

struct Reader<R> {
    inner: R,
    path: PathBuf,
    remaining: u64,
}

impl<R: Read> Reader<R> {
    fn invalid(&self, reason: impl Into<String>) -> GgufError {
        GgufError::Invalid { path: self.path.clone(), reason: reason.into() }
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>> {
        if n > self.remaining {
            return Err(self.invalid(format!("a length of {n} bytes runs past the end of the file")));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner.read_exact(&mut buf).map_err(|e| GgufError::Io { path: self.path.clone(), source: e })?;
        self.remaining -= n;
        Ok(buf)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let v = self.bytes(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&v);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        let bytes = self.bytes(len)?;
        String::from_utf8(bytes).map_err(|_| self.invalid("a string is not UTF-8"))
    }

    fn tensor_info(&mut self) -> Result<TensorInfo> {
        let name = self.string()?;
        let n_dims = self.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.invalid(format!("tensor `{name}` has {n_dims} dimensions")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64()?);
        }
        let raw = self.u32()?;
        let ty =
            TensorType::from_u32(raw).ok_or_else(|| self.invalid(format!("tensor `{name}` has unknown type {raw}")))?;
        let offset = self.u64()?;
        Ok(TensorInfo { name, dims, ty, offset })
    }

    fn key_value(&mut self) -> Result<(String, Value)> {
        let key = self.string()?;
        let raw = self.u32()?;
        let ty = ValueType::from_u32(raw).ok_or_else(|| self.invalid(format!("value type {raw} of `{key}`")))?;
        let value = self.value(ty, 0)?;
        Ok((key, value))
    }

    fn value(&mut self, ty: ValueType, depth: u32) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>()?[0]),
            ValueType::I8 => Value::I8(self.array::<1>()?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array()?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array()?)),
            ValueType::U32 => Value::U32(self.u32()?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array()?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array()?)),
            ValueType::Bool => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.invalid(format!("bool value {b}"))),
            },
            ValueType::String => Value::String(self.string()?),
            ValueType::U64 => Value::U64(self.u64()?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array()?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array()?)),
            ValueType::Array => {
                if depth > 0 {
                    return Err(self.invalid("nested arrays are not supported"));
                }
                let raw = self.u32()?;
                let elem = ValueType::from_u32(raw).ok_or_else(|| self.invalid(format!("array element type {raw}")))?;
                let n = self.u64()?;
                // Every element takes at least one byte: bound the allocation by what is left.
                if n > self.remaining {
                    return Err(self.invalid(format!("array of {n} elements runs past the end of the file")));
                }
                let mut items = Vec::with_capacity((n as usize).min(MAX_RESERVED));
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

/// What a GGUF header says: everything but the tensor data.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    /// GGUF version of the file.
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor table in file order.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    /// Alignment of tensor data.
    pub alignment: u64,
}

/// Most entries reserved ahead of reading them: a count is only checked against the bytes
/// left, and each entry decoded takes many times the bytes it was read from, so a count
/// in a multi-gigabyte file could otherwise reserve more memory than the host has.
const MAX_RESERVED: usize = 1024;

impl GgufHeader {
    /// Parses the header of a GGUF file `file_len` bytes long from `inner`, positioned at
    /// its start; `origin` names the file in errors. Every tensor must lie inside the file.
    pub fn parse(inner: impl Read, file_len: u64, origin: &Path) -> Result<Self> {
        let mut r = Reader { inner, path: origin.to_path_buf(), remaining: file_len };
        if &r.array::<4>()? != MAGIC {
            return Err(r.invalid("bad magic"));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.invalid(format!("unsupported version {version}")));
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        if n_tensors > r.remaining / 8 || n_kv > r.remaining / 8 {
            return Err(r.invalid("tensor or key count larger than the file"));
        }

        let mut metadata = Vec::with_capacity((n_kv as usize).min(MAX_RESERVED));
        for _ in 0..n_kv {
            metadata.push(r.key_value()?);
        }

        let mut tensors = Vec::with_capacity((n_tensors as usize).min(MAX_RESERVED));
        for _ in 0..n_tensors {
            tensors.push(r.tensor_info()?);
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, v)) => {
                v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| r.invalid("bad general.alignment"))?
            }
            None => DEFAULT_ALIGNMENT,
        };
        let header_len = file_len - r.remaining;
        let data_offset = align(header_len, alignment);

        for t in &tensors {
            let size = t
                .n_bytes()
                .ok_or_else(|| r.invalid(format!("tensor `{}` has a shape its type cannot hold", t.name)))?;
            let end = data_offset.checked_add(t.offset).and_then(|s| s.checked_add(size));
            if t.offset % alignment != 0 || end.is_none_or(|e| e > file_len) {
                return Err(r.invalid(format!("tensor `{}` lies outside the file or is misaligned", t.name)));
            }
        }
        Ok(GgufHeader { version, metadata, tensors, data_offset, alignment })
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file's header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io { path: path.clone(), source };
        let file = File::open(&path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let header = GgufHeader::parse(BufReader::new(file.try_clone().map_err(io)?), file_len, &path)?;
        let GgufHeader { version, metadata, tensors, data_offset, alignment } = header;
        Ok(GgufFile { path, file, file_len, version, metadata, tensors, data_offset, alignment })
    }

    /// Path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Looks up a metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A metadata string that must be present.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key).and_then(Value::as_str).ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// A metadata unsigned integer that must be present.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    /// The model architecture (`general.architecture`).
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// Looks up a tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Copies one tensor's bytes into `out`, in bounded chunks.
    pub fn copy_tensor_data(&self, info: &TensorInfo, out: &mut dyn Write) -> Result<u64> {
        let size = info.n_bytes().ok_or_else(|| GgufError::MissingTensor(info.name.clone()))?;
        let io = |source| GgufError::Io { path: self.path.clone(), source };
        let mut f = &self.file;
        f.seek(SeekFrom::Start(self.data_offset + info.offset)).map_err(io)?;
        // Large reads: the copy moves whole megabytes per call instead of io::copy's 8 KiB.
        let mut reader = BufReader::with_capacity((size as usize).clamp(1, 1 << 20), f.take(size));
        let copied = std::io::copy(&mut reader, out).map_err(io)?;
        if copied != size {
            return Err(GgufError::Invalid {
                path: self.path.clone(),
                reason: format!("tensor `{}` is truncated", info.name),
            });
        }
        Ok(copied)
    }

    /// Reads one tensor's bytes into memory (for small tensors and tests).
    pub fn read_tensor_data(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.copy_tensor_data(info, &mut buf)?;
        Ok(buf)
    }
}

/// Encodes metadata as GGUF does in its header: a u64 count, then each key, type and value.
pub fn encode_metadata(metadata: &[(String, Value)]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut out, key);
        out.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
        put_value(&mut out, value)?;
    }
    Ok(out)
}

/// Decodes what [`encode_metadata`] wrote; `origin` names the source in errors.
pub fn decode_metadata(bytes: &[u8], origin: &Path) -> Result<Vec<(String, Value)>> {
    let mut r = Reader { inner: bytes, path: origin.to_path_buf(), remaining: bytes.len() as u64 };
    let n = r.u64()?;
    if n > r.remaining / 8 {
        return Err(r.invalid("key count larger than the data"));
    }
    let mut out = Vec::with_capacity((n as usize).min(MAX_RESERVED));
    for _ in 0..n {
        out.push(r.key_value()?);
    }
    if r.remaining != 0 {
        return Err(r.invalid("trailing bytes after the metadata"));
    }
    Ok(out)
}

/// Encodes a tensor table as GGUF does: a u64 count, then name, dims, type and offset of each.
pub fn encode_tensor_table(tensors: &[TensorInfo]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    for t in tensors {
        put_tensor_info(&mut out, t, t.offset);
    }
    out
}

/// Decodes what [`encode_tensor_table`] wrote, checking that every shape fits its type.
pub fn decode_tensor_table(bytes: &[u8], origin: &Path) -> Result<Vec<TensorInfo>> {
    let mut r = Reader { inner: bytes, path: origin.to_path_buf(), remaining: bytes.len() as u64 };
    let n = r.u64()?;
    if n > r.remaining / 8 {
        return Err(r.invalid("tensor count larger than the data"));
    }
    let mut out = Vec::with_capacity((n as usize).min(MAX_RESERVED));
    for _ in 0..n {
        let t = r.tensor_info()?;
        if t.n_bytes().is_none() {
            return Err(r.invalid(format!("tensor `{}` has a shape its type cannot hold", t.name)));
        }
        out.push(t);
    }
    if r.remaining != 0 {
        return Err(r.invalid("trailing bytes after the tensor table"));
    }
    Ok(out)
}

fn put_tensor_info(out: &mut Vec<u8>, t: &TensorInfo, offset: u64) {
    put_string(out, &t.name);
    out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
    for d in &t.dims {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&(t.ty as u32).to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
}

/// Rounds `n` up to a multiple of `alignment` (a power of two).
pub fn align(n: u64, alignment: u64) -> u64 {
    n.div_ceil(alignment) * alignment
}

/// Writes exactly a tensor's bytes into the sink it is given.
pub type TensorBytes<'a> = Box<dyn FnMut(&mut dyn Write) -> Result<()> + 'a>;

/// A tensor to be written: its table entry (offset ignored) and where its bytes come from.
pub struct TensorSource<'a> {
    /// Name, shape and type.
    pub info: TensorInfo,
    /// Writes exactly `info.n_bytes()` bytes of tensor data.
    pub write: TensorBytes<'a>,
}

/// Writes a GGUF file: metadata, tensor table, then each tensor's data, aligned.
pub struct GgufWriter {
    alignment: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self { alignment: DEFAULT_ALIGNMENT }
    }
}

impl GgufWriter {
    /// A writer that aligns tensor data to `alignment` bytes (a power of two).
    pub fn with_alignment(alignment: u64) -> Self {
        Self { alignment }
    }

    /// Writes `metadata` and `tensors` to `path` (replacing it), streaming the tensor data.
    /// The layout depends only on the inputs, so equal inputs give equal bytes.
    pub fn write(&self, path: &Path, metadata: &[(String, Value)], tensors: Vec<TensorSource<'_>>) -> Result<u64> {
        let io = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::create(path).map_err(io)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let written = self.write_to(&mut w, metadata, tensors).map_err(|e| match e {
            GgufError::Io { source, .. } => io(source),
            other => other,
        })?;
        w.flush().map_err(io)?;
        w.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
        Ok(written)
    }

    /// Writes the file to any writer; returns the number of bytes written.
    pub fn write_to(
        &self,
        w: &mut dyn Write,
        metadata: &[(String, Value)],
        mut tensors: Vec<TensorSource<'_>>,
    ) -> Result<u64> {
        let mut out = CountingWriter { inner: w, count: 0 };
        let io = |source| GgufError::Io { path: PathBuf::from("<gguf writer>"), source };

        let mut header = Vec::new();
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&encode_metadata(metadata)?);
        let mut offset = 0u64;
        let mut sizes = Vec::with_capacity(tensors.len());
        for t in &tensors {
            let size = t.info.n_bytes().ok_or_else(|| {
                GgufError::Write(format!("tensor `{}` has a shape its type cannot hold", t.info.name))
            })?;
            put_tensor_info(&mut header, &t.info, offset);
            sizes.push(size);
            offset = align(offset + size, self.alignment);
        }
        let padded = align(header.len() as u64, self.alignment) as usize;
        header.resize(padded, 0);
        out.write_all(&header).map_err(io)?;

        for (t, size) in tensors.iter_mut().zip(sizes) {
            let start = out.count;
            (t.write)(&mut out)?;
            if out.count - start != size {
                return Err(GgufError::Write(format!(
                    "tensor `{}`: wrote {} bytes, expected {size}",
                    t.info.name,
                    out.count - start
                )));
            }
            let pad = align(size, self.alignment) - size;
            out.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        }
        Ok(out.count)
    }
}

struct CountingWriter<'a> {
    inner: &'a mut dyn Write,
    count: u64,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Array(elem, items) => {
            if *elem == ValueType::Array {
                return Err(GgufError::Write("nested arrays are not supported".into()));
            }
            out.extend_from_slice(&(*elem as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                if item.value_type() != *elem {
                    return Err(GgufError::Write("array elements of mixed types".into()));
                }
                put_value(out, item)?;
            }
        }
    }
    Ok(())
}
