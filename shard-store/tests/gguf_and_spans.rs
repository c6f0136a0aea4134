//! GGUF round trips, corrupt files, span planning and synthetic models.

use nak_shard_store::gguf::{GgufError, TensorSource, ValueType};
use nak_shard_store::span::{self, SpanError, SpanPosition};
use nak_shard_store::{write_synthetic, GgufFile, GgufWriter, SynthConfig, TensorInfo, TensorType, Value};

fn tiny_synth(dir: &std::path::Path, cfg: SynthConfig) -> std::path::PathBuf {
    let path = dir.join("m.gguf");
    write_synthetic(&cfg, &path).unwrap();
    path
}

#[test]
fn write_then_read_round_trips_metadata_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rt.gguf");
    let meta = vec![
        ("general.architecture".to_string(), Value::String("llama".into())),
        ("a.u8".to_string(), Value::U8(7)),
        ("a.i64".to_string(), Value::I64(-5)),
        ("a.f64".to_string(), Value::F64(1.5)),
        ("a.bool".to_string(), Value::Bool(true)),
        ("a.arr".to_string(), Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(-2)])),
        (
            "a.strs".to_string(),
            Value::Array(ValueType::String, vec![Value::String("x".into()), Value::String("yz".into())]),
        ),
    ];
    let data_a: Vec<u8> = (0..3 * 4 * 4).map(|i| i as u8).collect();
    let data_b: Vec<u8> = vec![9; 34 * 2];
    let tensors = vec![
        TensorSource {
            info: TensorInfo { name: "a".into(), dims: vec![3, 4], ty: TensorType::F32, offset: 0 },
            write: Box::new(|w| w.write_all(&data_a).map_err(|e| GgufError::Write(e.to_string()))),
        },
        TensorSource {
            info: TensorInfo { name: "b".into(), dims: vec![64], ty: TensorType::Q8_0, offset: 0 },
            write: Box::new(|w| w.write_all(&data_b).map_err(|e| GgufError::Write(e.to_string()))),
        },
    ];
    GgufWriter::default().write(&path, &meta, tensors).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.metadata, meta);
    assert_eq!(f.tensors.len(), 2);
    assert_eq!(f.tensors[1].offset % 32, 0);
    assert_eq!(f.read_tensor_data(&f.tensors[0]).unwrap(), data_a);
    assert_eq!(f.read_tensor_data(f.tensor("b").unwrap()).unwrap(), data_b);
}

#[test]
fn a_writer_that_lies_about_sizes_fails() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = vec![TensorSource {
        info: TensorInfo { name: "a".into(), dims: vec![4], ty: TensorType::F32, offset: 0 },
        write: Box::new(|w| w.write_all(&[0; 3]).map_err(|e| GgufError::Write(e.to_string()))),
    }];
    assert!(matches!(GgufWriter::default().write(&dir.path().join("x"), &[], tensors), Err(GgufError::Write(_))));
}

#[test]
fn corrupt_files_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(tiny_synth(dir.path(), SynthConfig::default())).unwrap();
    let path = dir.path().join("bad.gguf");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("bad magic", [b"GGUX".as_slice(), &good[4..]].concat()),
        ("truncated header", good[..40].to_vec()),
        ("truncated data", good[..good.len() - 100].to_vec()),
        ("huge counts", [b"GGUF\x03\x00\x00\x00".as_slice(), &[0xff; 16]].concat()),
        ("version 9", [b"GGUF\x09\x00\x00\x00".as_slice(), &good[8..]].concat()),
    ];
    for (what, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(GgufFile::open(&path), Err(GgufError::Invalid { .. })), "{what} was accepted");
    }
    // Flip bytes all over the header: every outcome is Ok or an error, never a panic.
    for i in (0..2000).step_by(7) {
        let mut bytes = good.clone();
        bytes[i] ^= 0xA5;
        std::fs::write(&path, &bytes).unwrap();
        let _ = GgufFile::open(&path);
    }
}

#[test]
fn span_plan_slices_layers_arrays_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let src = GgufFile::open(tiny_synth(dir.path(), SynthConfig { n_layer: 5, ..SynthConfig::default() })).unwrap();
    let mut meta = src.metadata.clone();
    meta.push(("llama.attention.head_count_kv".into(), Value::Array(ValueType::U32, (0..5).map(Value::U32).collect())));
    meta.retain(|(k, v)| k != "llama.attention.head_count_kv" || matches!(v, Value::Array(..)));

    let plan = span::plan_span(&meta, &src.tensors, 1..3).unwrap();
    let get = |k: &str| plan.metadata.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(get("llama.block_count"), Some(Value::U32(2)));
    assert_eq!(
        get("llama.attention.head_count_kv"),
        Some(Value::Array(ValueType::U32, vec![Value::U32(1), Value::U32(2)]))
    );
    assert_eq!(get(span::KEY_FIRST_LAYER), Some(Value::U32(1)));
    assert_eq!(get(span::KEY_HAS_HEAD), Some(Value::Bool(false)));
    assert_eq!(get("tokenizer.ggml.model"), Some(Value::String("none".into())));
    assert!(get("tokenizer.ggml.tokens").is_none());
    let names: Vec<&str> = plan.tensors.iter().map(|(t, _)| t.name.as_str()).collect();
    assert!(names.iter().all(|n| n.starts_with("blk.0.") || n.starts_with("blk.1.")), "{names:?}");
    assert!(plan.tensors.iter().any(|(t, from)| t.name == "blk.0.attn_q.weight" && from == "blk.1.attn_q.weight"));

    let first = span::plan_span(&meta, &src.tensors, 0..1).unwrap();
    assert!(first.tensors.iter().any(|(t, _)| t.name == "token_embd.weight"));
    assert!(!first.tensors.iter().any(|(t, _)| t.name.starts_with("output")));
    let last = span::plan_span(&meta, &src.tensors, 4..5).unwrap();
    assert!(last.tensors.iter().any(|(t, _)| t.name == "output.weight"));
    assert!(!last.tensors.iter().any(|(t, _)| t.name == "token_embd.weight"), "untied head needs no embedding");
    assert!(get("tokenizer.ggml.tokens").is_none());
    assert!(last.metadata.iter().any(|(k, _)| k == "tokenizer.ggml.tokens"));

    for (a, b) in [(0, 0), (3, 2), (0, 6)] {
        assert!(matches!(span::plan_span(&meta, &src.tensors, a..b), Err(SpanError::BadRange { .. })));
    }
}

#[test]
fn tied_last_span_keeps_the_embedding_and_spans_cannot_be_resliced() {
    let dir = tempfile::tempdir().unwrap();
    let src =
        GgufFile::open(tiny_synth(dir.path(), SynthConfig { tied_embedding: true, ..SynthConfig::default() })).unwrap();
    let plan = span::plan_span(&src.metadata, &src.tensors, 2..4).unwrap();
    assert!(plan.tensors.iter().any(|(t, _)| t.name == "token_embd.weight"));

    let out = dir.path().join("s.gguf");
    span::write_span(&src, 2..4, &out).unwrap();
    let s = GgufFile::open(&out).unwrap();
    assert_eq!(
        SpanPosition::of(&s).unwrap(),
        SpanPosition { first: 2, n_layer: 2, total: 4, has_embedding: false, has_head: true }
    );
    assert!(matches!(
        span::write_span(&s, 0..1, &dir.path().join("t.gguf")),
        Err(SpanError::AlreadySpan { first: 2, .. })
    ));
}

#[test]
fn slicing_is_deterministic_and_synthesis_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig { weight_type: TensorType::Q8_0, ..SynthConfig::default() };
    let a = dir.path().join("a.gguf");
    let b = dir.path().join("b.gguf");
    write_synthetic(&cfg, &a).unwrap();
    write_synthetic(&cfg, &b).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let src = GgufFile::open(&a).unwrap();
    span::write_span(&src, 1..3, &dir.path().join("x.gguf")).unwrap();
    span::write_span(&src, 1..3, &dir.path().join("y.gguf")).unwrap();
    assert_eq!(std::fs::read(dir.path().join("x.gguf")).unwrap(), std::fs::read(dir.path().join("y.gguf")).unwrap());
    assert!(write_synthetic(&SynthConfig { n_head: 3, ..cfg.clone() }, &b).is_err());
    assert_eq!(span::parse_layer_range("3:7"), Some(3..7));
    assert_eq!(span::parse_layer_range("7:3"), None);
}
