//! Targets for what `nak-shard-store` reads from a user's file or a peer: GGUF headers
//! and the span plans made from them, metadata and tensor tables inside blobs,
//! manifests, and verified blob streams.
//!
//! A GGUF header that parses must describe tensors inside the file, and a span planned
//! from it must keep exactly its layers; a manifest and a blob's tables round-trip; a
//! blob stream that verifies delivers nothing but the blob's own bytes.

use std::path::Path;
use std::sync::OnceLock;

use nak_shard_store::gguf::{decode_metadata, decode_tensor_table, encode_metadata, encode_tensor_table, GgufHeader};
use nak_shard_store::manifest::{parse_tensor_table, tensor_blob_table_len, TENSOR_BLOB_PREFIX};
use nak_shard_store::span::check_splittable;
use nak_shard_store::transfer::verify_piece;
use nak_shard_store::{plan_span, Hash, Manifest, SpanPosition};

use super::{refused, Outcome};

/// A GGUF file's header (the input is the whole file), then the span plans it allows.
pub fn gguf(data: &[u8]) -> Outcome {
    let header = GgufHeader::parse(data, data.len() as u64, Path::new("<fuzz>")).map_err(refused)?;
    for t in &header.tensors {
        let end = header.data_offset + t.offset + t.n_bytes().expect("a parsed tensor has a size");
        assert!(end <= data.len() as u64, "tensor `{}` ends past the file", t.name);
    }
    let position = SpanPosition::of_metadata(&header.metadata).map_err(refused)?;
    assert!(position.first as u64 + position.n_layer as u64 <= position.total as u64);
    let n = position.n_layer;
    for range in [0..n, 0..n / 2, n / 2..n, 1..n] {
        let Ok(plan) = plan_span(&header.metadata, &header.tensors, range.clone()) else { continue };
        assert_eq!(plan.position.layers(), range, "a plan for other layers than asked");
        assert!(check_splittable(&header.metadata, range.clone()).is_ok());
        let blocks = plan.tensors.iter().filter_map(|(t, _)| block_of(&t.name));
        assert!(blocks.into_iter().all(|b| b < range.end - range.start), "a planned span keeps a layer outside it");
    }
    Ok(())
}

fn block_of(name: &str) -> Option<u32> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Metadata as a meta blob carries it: a decoded list encodes back to the same bytes.
pub fn metadata(data: &[u8]) -> Outcome {
    let m = decode_metadata(data, Path::new("<fuzz>")).map_err(refused)?;
    let again = encode_metadata(&m).map_err(|e| format!("decoded metadata does not encode: {e}"))?;
    assert_eq!(again, data, "metadata does not round-trip");
    Ok(())
}

/// A tensor blob's prefix and table, as assembly reads them from a fetched blob.
pub fn tensor_blob(data: &[u8]) -> Outcome {
    let len = tensor_blob_table_len(data).map_err(refused)?;
    let table = data.get(TENSOR_BLOB_PREFIX..).ok_or("no table")?;
    if len != table.len() as u64 {
        return Err("the table's length is not the rest of the input".into());
    }
    let tensors = parse_tensor_table(table).map_err(refused)?;
    assert_eq!(encode_tensor_table(&tensors), table, "a tensor table does not round-trip");
    let again = decode_tensor_table(table, Path::new("<fuzz>")).expect("a parsed table parses again");
    assert_eq!(again, tensors);
    Ok(())
}

/// A manifest as a peer hands it over: accepted only with a consistent blob list, and
/// its canonical bytes name the same model however the JSON was laid out.
pub fn manifest(data: &[u8]) -> Outcome {
    let m = Manifest::from_canonical(data).map_err(refused)?;
    let canonical = m.canonical_bytes();
    let again = Manifest::from_canonical(&canonical).expect("canonical bytes of a manifest parse");
    assert_eq!(again, m);
    assert_eq!(again.model_id(), m.model_id());
    assert_eq!(again.blobs.iter().filter(|b| b.layer.is_some()).count(), m.n_layer as usize);
    Ok(())
}

/// The blob the stream target's answers are for: 40 KiB (three 16 KiB chunk groups, the
/// last partial), the same in every run, made once.
pub fn stream_blob() -> &'static [u8] {
    &stream_blob_and_hash().0
}

fn stream_blob_and_hash() -> &'static (Vec<u8>, Hash) {
    static BLOB: OnceLock<(Vec<u8>, Hash)> = OnceLock::new();
    BLOB.get_or_init(|| {
        let blob: Vec<u8> = (0..40 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let hash = Hash::of(&blob);
        (blob, hash)
    })
}

/// Bytes `[start, end)` a stream answer is asked for, picked by the input's first two
/// bytes: whole 16 KiB chunk groups, as the fetcher asks for them.
pub fn stream_range(data: &[u8], size: u64) -> (u64, u64) {
    const GROUP: u64 = 16 * 1024;
    let pick = |i: usize| u64::from(data.get(i).copied().unwrap_or(0) % 3);
    let start = pick(0) * GROUP;
    (start, (start + (pick(1) + 1) * GROUP).min(size))
}

/// A provider's answer for a piece of [`stream_blob`] (after the two range bytes): if it
/// verifies, every byte handed on is the blob's own, and the whole piece was covered.
pub fn blob_stream(data: &[u8]) -> Outcome {
    let (blob, hash) = stream_blob_and_hash();
    let size = blob.len() as u64;
    let (start, end) = stream_range(data, size);
    let mut written = 0u64;
    let answer = data.get(2..).unwrap_or_default();
    verify_piece(hash, size, start..end, answer, |offset, bytes| {
        let at = offset as usize;
        assert_eq!(Some(bytes), blob.get(at..at + bytes.len()), "unverified bytes at {offset} were handed on");
        written += bytes.len() as u64;
        Ok(())
    })
    .map_err(refused)?;
    assert_eq!(written, end - start, "a verified answer did not cover its piece");
    Ok(())
}
