//! Hidden states on the wire.
//!
//! Between two spans travels the residual stream of every input row: `n_rows × width`
//! floats. [`Activation::encode`] turns f32 rows into a dtype's bytes (f32 by default,
//! which keeps a chain bit-identical to one process; f16 and bf16 halve the bytes for
//! slow links); [`Activation::decode`] checks shape and values and returns f32 rows.
//! [`Activation::to_bytes`] / [`Activation::from_bytes`] give a self-describing frame:
//! a 12-byte header (dtype, rows, width) then the payload.

use half::{bf16, f16};

/// Element type of an encoded hidden state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActivationDtype {
    /// 4-byte IEEE float: exact.
    #[default]
    F32,
    /// 2-byte IEEE half float.
    F16,
    /// 2-byte bfloat16.
    Bf16,
}

impl ActivationDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ActivationDtype::F32 => 4,
            ActivationDtype::F16 | ActivationDtype::Bf16 => 2,
        }
    }

    fn tag(self) -> u8 {
        match self {
            ActivationDtype::F32 => 0,
            ActivationDtype::F16 => 1,
            ActivationDtype::Bf16 => 2,
        }
    }

    fn from_tag(tag: u8) -> Option<Self> {
        Some(match tag {
            0 => ActivationDtype::F32,
            1 => ActivationDtype::F16,
            2 => ActivationDtype::Bf16,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ActivationDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ActivationDtype::F32 => "f32",
            ActivationDtype::F16 => "f16",
            ActivationDtype::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for ActivationDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(ActivationDtype::F32),
            "f16" => Ok(ActivationDtype::F16),
            "bf16" => Ok(ActivationDtype::Bf16),
            other => Err(format!("unknown activation dtype `{other}` (f32, f16, bf16)")),
        }
    }
}

/// Errors of activation encoding and decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivationError {
    /// The payload length does not match rows × width × element size.
    #[error("hidden state holds {got} bytes, expected {expected} ({rows} rows × {width} × {dtype})")]
    Length {
        /// Bytes present.
        got: usize,
        /// Bytes expected.
        expected: usize,
        /// Rows claimed.
        rows: u32,
        /// Width claimed.
        width: u32,
        /// Dtype claimed.
        dtype: ActivationDtype,
    },
    /// The width is not the receiving span's hidden size.
    #[error("hidden state width {got} does not match this span's width {expected}")]
    Width {
        /// Width received.
        got: u32,
        /// Width the span needs.
        expected: u32,
    },
    /// A value is NaN or infinite.
    #[error("hidden state contains a non-finite value at row {row}, column {col}")]
    NonFinite {
        /// Row of the first bad value.
        row: u32,
        /// Column of the first bad value.
        col: u32,
    },
    /// A finite value too large for the encoding (f16 holds at most 65504).
    #[error("hidden state value at row {row}, column {col} is out of {dtype}'s range")]
    OutOfRange {
        /// Row of the first such value.
        row: u32,
        /// Column of the first such value.
        col: u32,
        /// The encoding.
        dtype: ActivationDtype,
    },
    /// The frame header is short or names an unknown dtype.
    #[error("malformed hidden-state frame: {0}")]
    Frame(String),
    /// No rows.
    #[error("hidden state has no rows")]
    Empty,
}

/// An encoded hidden state: `n_rows` rows of `width` elements of `dtype`.
#[derive(Debug, Clone, PartialEq)]
pub struct Activation {
    /// Element type of `data`.
    pub dtype: ActivationDtype,
    /// Number of rows (tokens).
    pub n_rows: u32,
    /// Elements per row (the model's hidden size).
    pub width: u32,
    /// Little-endian payload.
    pub data: Vec<u8>,
}

const HEADER_LEN: usize = 12;

impl Activation {
    /// Encodes f32 rows; rejects non-finite values so a broken span is caught where it broke.
    pub fn encode(values: &[f32], width: u32, dtype: ActivationDtype) -> Result<Self, ActivationError> {
        if width == 0 || values.is_empty() {
            return Err(ActivationError::Empty);
        }
        if !values.len().is_multiple_of(width as usize) {
            return Err(ActivationError::Length {
                got: values.len() * 4,
                expected: values.len().next_multiple_of(width as usize) * 4,
                rows: (values.len() / width as usize) as u32,
                width,
                dtype: ActivationDtype::F32,
            });
        }
        check_finite(values, width)?;
        let mut data = Vec::with_capacity(values.len() * dtype.size());
        // A value that rounds to infinity in a narrower encoding is refused here, where it
        // was made, rather than by the hop that decodes it.
        let out_of_range = |i: usize| ActivationError::OutOfRange {
            row: (i / width as usize) as u32,
            col: (i % width as usize) as u32,
            dtype,
        };
        match dtype {
            ActivationDtype::F32 => data.extend(values.iter().flat_map(|v| v.to_le_bytes())),
            ActivationDtype::F16 => {
                for (i, v) in values.iter().enumerate() {
                    let h = f16::from_f32(*v);
                    data.extend(h.is_finite().then_some(h).ok_or_else(|| out_of_range(i))?.to_le_bytes());
                }
            }
            ActivationDtype::Bf16 => {
                for (i, v) in values.iter().enumerate() {
                    let h = bf16::from_f32(*v);
                    data.extend(h.is_finite().then_some(h).ok_or_else(|| out_of_range(i))?.to_le_bytes());
                }
            }
        }
        Ok(Activation { dtype, n_rows: (values.len() / width as usize) as u32, width, data })
    }

    /// Decodes into f32 rows, checking the width against `expected_width` and every value.
    pub fn decode(&self, expected_width: u32) -> Result<Vec<f32>, ActivationError> {
        if self.width != expected_width {
            return Err(ActivationError::Width { got: self.width, expected: expected_width });
        }
        if self.n_rows == 0 {
            return Err(ActivationError::Empty);
        }
        self.check_length()?;
        let values: Vec<f32> = match self.dtype {
            ActivationDtype::F32 => {
                self.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            ActivationDtype::F16 => {
                self.data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            ActivationDtype::Bf16 => {
                self.data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
        };
        check_finite(&values, self.width)?;
        Ok(values)
    }

    /// Bytes of one row.
    fn row_len(&self) -> usize {
        self.width as usize * self.dtype.size()
    }

    /// Checks that the payload holds exactly `n_rows` rows (decoding checks values too).
    fn check_length(&self) -> Result<(), ActivationError> {
        // Rows × width × element size can pass 2^64 with the header's two u32s.
        let expected = (self.n_rows as usize).saturating_mul(self.row_len());
        if self.data.len() != expected {
            return Err(ActivationError::Length {
                got: self.data.len(),
                expected,
                rows: self.n_rows,
                width: self.width,
                dtype: self.dtype,
            });
        }
        Ok(())
    }

    /// Rows `rows` of this hidden state, without decoding it.
    pub fn slice_rows(&self, rows: std::ops::Range<u32>) -> Result<Self, ActivationError> {
        self.check_length()?;
        if rows.is_empty() || rows.end > self.n_rows {
            return Err(ActivationError::Frame(format!("rows {}..{} of {}", rows.start, rows.end, self.n_rows)));
        }
        let len = self.row_len();
        let data = self.data[rows.start as usize * len..rows.end as usize * len].to_vec();
        Ok(Activation { dtype: self.dtype, n_rows: rows.end - rows.start, width: self.width, data })
    }

    /// The rows of several hidden states, in order; they must share dtype and width.
    pub fn concat<'a>(parts: impl IntoIterator<Item = &'a Activation>) -> Result<Self, ActivationError> {
        let mut out: Option<Activation> = None;
        for part in parts {
            part.check_length()?;
            match &mut out {
                None => out = Some(part.clone()),
                Some(o) if o.dtype == part.dtype && o.width == part.width => {
                    o.data.extend_from_slice(&part.data);
                    o.n_rows += part.n_rows;
                }
                Some(o) => {
                    return Err(ActivationError::Frame(format!(
                        "cannot join {} × {} rows to {} × {}",
                        part.dtype, part.width, o.dtype, o.width
                    )))
                }
            }
        }
        out.ok_or(ActivationError::Empty)
    }

    /// The self-describing frame: header (dtype, 3 zero bytes, rows u32, width u32) + payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.data.len());
        out.extend_from_slice(&[self.dtype.tag(), 0, 0, 0]);
        out.extend_from_slice(&self.n_rows.to_le_bytes());
        out.extend_from_slice(&self.width.to_le_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// Parses a frame made by [`Activation::to_bytes`] (the payload is checked by `decode`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ActivationError> {
        if bytes.len() < HEADER_LEN {
            return Err(ActivationError::Frame(format!("{} bytes is shorter than the header", bytes.len())));
        }
        let dtype = ActivationDtype::from_tag(bytes[0])
            .ok_or_else(|| ActivationError::Frame(format!("unknown dtype tag {}", bytes[0])))?;
        // Reserved: zero now, so that a later meaning cannot be mistaken for this one.
        if bytes[1..4] != [0, 0, 0] {
            return Err(ActivationError::Frame("reserved header bytes are not zero".into()));
        }
        let n_rows = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let width = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        Ok(Activation { dtype, n_rows, width, data: bytes[HEADER_LEN..].to_vec() })
    }
}

fn check_finite(values: &[f32], width: u32) -> Result<(), ActivationError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => {
            Err(ActivationError::NonFinite { row: (i / width as usize) as u32, col: (i % width as usize) as u32 })
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trip_is_exact() {
        let v: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
        let a = Activation::encode(&v, 8, ActivationDtype::F32).unwrap();
        let back = Activation::from_bytes(&a.to_bytes()).unwrap().decode(8).unwrap();
        assert_eq!(v, back);
        assert_eq!(a.n_rows, 3);
    }

    #[test]
    fn half_precision_round_trips_within_tolerance() {
        let v: Vec<f32> = (0..16).map(|i| i as f32 / 7.0 - 1.0).collect();
        for dtype in [ActivationDtype::F16, ActivationDtype::Bf16] {
            let a = Activation::encode(&v, 4, dtype).unwrap();
            assert_eq!(a.data.len(), 32);
            let back = a.decode(4).unwrap();
            for (x, y) in v.iter().zip(back) {
                assert!((x - y).abs() < 1e-2, "{dtype:?}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn rows_slice_and_join_back_into_the_same_state() {
        let v: Vec<f32> = (0..20).map(|i| i as f32).collect();
        for dtype in [ActivationDtype::F32, ActivationDtype::F16] {
            let a = Activation::encode(&v, 4, dtype).unwrap();
            let head = a.slice_rows(0..2).unwrap();
            let tail = a.slice_rows(2..5).unwrap();
            assert_eq!(tail.decode(4).unwrap(), a.decode(4).unwrap()[8..]);
            assert_eq!(Activation::concat([&head, &tail]).unwrap(), a);
            assert!(a.slice_rows(3..6).is_err() && a.slice_rows(2..2).is_err());
        }
        let wide = Activation::encode(&[1.0; 8], 8, ActivationDtype::F32).unwrap();
        let narrow = Activation::encode(&[1.0; 8], 4, ActivationDtype::F32).unwrap();
        assert!(Activation::concat([&wide, &narrow]).is_err());
        assert_eq!(Activation::concat(std::iter::empty()), Err(ActivationError::Empty));
    }

    #[test]
    fn rejects_wrong_width_length_and_nan() {
        let a = Activation::encode(&[1.0; 8], 4, ActivationDtype::F32).unwrap();
        assert_eq!(a.decode(8), Err(ActivationError::Width { got: 4, expected: 8 }));
        let mut short = a.clone();
        short.data.pop();
        assert!(matches!(short.decode(4), Err(ActivationError::Length { .. })));
        assert_eq!(
            Activation::encode(&[1.0, f32::NAN, 0.0, 0.0], 2, ActivationDtype::F32),
            Err(ActivationError::NonFinite { row: 0, col: 1 })
        );
        let mut poisoned = a.clone();
        poisoned.data[4..8].copy_from_slice(&f32::INFINITY.to_le_bytes());
        assert_eq!(poisoned.decode(4), Err(ActivationError::NonFinite { row: 0, col: 1 }));
        assert_eq!(
            Activation::encode(&[1.0, 2.0, 7e4, 0.0], 2, ActivationDtype::F16),
            Err(ActivationError::OutOfRange { row: 1, col: 0, dtype: ActivationDtype::F16 })
        );
        assert!(Activation::encode(&[65504.0, -65504.0], 2, ActivationDtype::F16).is_ok());
        assert!(matches!(
            Activation::encode(&[f32::MAX; 2], 2, ActivationDtype::Bf16),
            Err(ActivationError::OutOfRange { .. })
        ));
        assert!(matches!(Activation::from_bytes(&[9; 12]), Err(ActivationError::Frame(_))));
        assert!(matches!(Activation::from_bytes(&[0; 5]), Err(ActivationError::Frame(_))));
    }
}
