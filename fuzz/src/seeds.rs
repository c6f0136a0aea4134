//! Valid inputs for every target, made by the real encoders: the runner's starting
//! points besides the corpus on disk. A mutation of a valid input reaches far deeper
//! into a decoder than random bytes do.

use bao_tree::io::outboard::PreOrderMemOutboard;
use bao_tree::io::sync::encode_ranges_validated;
use nak_protocol::announce::{self, peer_id_of_ed25519};
use nak_protocol::frame::FrameCodec;
use nak_protocol::receipt::{self, rows_hash, Receipt};
use nak_protocol::{pb, Activation, ActivationDtype};
use nak_shard_store::gguf::{encode_metadata, GgufFile};
use nak_shard_store::manifest::{tensor_blob_header, BlobRole, MANIFEST_FORMAT};
use nak_shard_store::transfer::{piece_ranges, BLOCK_SIZE};
use nak_shard_store::{write_synthetic, BlobRef, Hash, Manifest, SynthArch, SynthConfig};
use prost::Message;

use crate::targets::{key, stream_blob, stream_range, NOW_MS};

/// The valid inputs of target `name` (none for an unknown name).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    let frame = |f: &pb::InferenceFrame| f.encode_to_vec();
    match name {
        "frames" | "inference_stream" => {
            let codec = FrameCodec::default();
            let stream: Vec<u8> = inference_frames().iter().flat_map(|f| codec.encode(f).unwrap_or_default()).collect();
            vec![stream]
        }
        "inference_frame" => inference_frames().iter().map(frame).collect(),
        "blob_request" => blob_requests().iter().map(|r| r.encode_length_delimited_to_vec()).collect(),
        "blob_response" => blob_responses().iter().map(|r| r.encode_length_delimited_to_vec()).collect(),
        "activation" => activations(),
        "announcement" => vec![announce::sign(&key(), &announcement()).encode_to_vec()],
        "announcement_body" => vec![announcement().encode_to_vec()],
        "receipt" => receipt_chain().iter().map(Receipt::to_bytes).collect(),
        "receipts" => vec![receipt::sign_batch(&receipt_chain(), &key()).encode_to_vec()],
        "fraud_proof" => vec![fraud_proof().encode_to_vec()],
        "fraud_proofs" => vec![pb::FraudProofs { proofs: vec![fraud_proof(), fraud_proof()] }.encode_to_vec()],
        "gguf" => ggufs().into_iter().map(|(bytes, _)| bytes).collect(),
        "metadata" => ggufs().iter().filter_map(|(_, f)| encode_metadata(&f.metadata).ok()).collect(),
        "tensor_blob" => ggufs().iter().map(|(_, f)| tensor_blob_header(&f.tensors)).collect(),
        "manifest" => vec![manifest(3).canonical_bytes(), manifest(1).canonical_bytes()],
        "blob_stream" => blob_answers(),
        _ => Vec::new(),
    }
}

fn announcement() -> pb::ServerAnnouncement {
    pb::ServerAnnouncement {
        peer_id: peer_id_of_ed25519(&key().verifying_key().to_bytes()),
        model_id: vec![7; 32],
        first_layer: 2,
        end_layer: 9,
        block_throughput: 120.0,
        free_sessions: 3,
        version: "0.1.0".into(),
        addrs: vec![b"/ip4/127.0.0.1/tcp/4001".to_vec()],
        timestamp_ms: NOW_MS - 1_000,
        sequence: 4,
        ..Default::default()
    }
}

fn hidden(rows: usize, width: usize) -> Vec<u8> {
    let values: Vec<f32> = (0..rows * width).map(|i| (i as f32 * 0.37).sin()).collect();
    Activation::encode(&values, width as u32, ActivationDtype::F32).map(|a| a.data).unwrap_or_default()
}

fn activations() -> Vec<Vec<u8>> {
    let values: Vec<f32> = (0..24).map(|i| (i as f32 * 0.91).cos() * 3.0).collect();
    [ActivationDtype::F32, ActivationDtype::F16, ActivationDtype::Bf16]
        .into_iter()
        .filter_map(|dtype| Activation::encode(&values, 8, dtype).ok())
        .map(|a| a.to_bytes())
        .collect()
}

/// Three steps of one hop's session on layers 3..6: a 2-row prompt, then a token each.
fn receipt_chain() -> Vec<Receipt> {
    let mut prev = [0; 32];
    (0..3u32)
        .map(|i| {
            let rows = if i == 0 { 2 } else { 1 };
            let r = Receipt {
                model_id: [1; 32],
                first_layer: 3,
                end_layer: 6,
                exec_class: [2; 32],
                session_id: 9,
                step: u64::from(i),
                generation: 1,
                position: if i == 0 { 0 } else { i + 1 },
                rows,
                input_hash: rows_hash(&hidden(rows as usize, 4)),
                output_hash: [i as u8; 32],
                prev,
            };
            prev = r.hash();
            r
        })
        .collect()
}

fn fraud_proof() -> pb::FraudProof {
    let chain = receipt_chain();
    let inputs = chain.iter().map(|r| pb::StepRows { hidden: hidden(r.rows as usize, 4), ..Default::default() });
    pb::FraudProof {
        accused: peer_id_of_ed25519(&key().verifying_key().to_bytes()),
        batches: vec![receipt::sign_batch(&chain[..1], &key()), receipt::sign_batch(&chain[1..], &key())],
        inputs: inputs.collect(),
        reporter: vec![1, 2, 3],
    }
}

fn inference_frames() -> Vec<pb::InferenceFrame> {
    use pb::inference_frame::Kind;
    let hop = pb::Hop { peer_id: vec![0, 36, 8, 1], addrs: vec![b"/ip4/10.0.0.2/tcp/1".to_vec()], session_id: 5 };
    let kinds = vec![
        Kind::Hello(pb::Hello {}),
        Kind::Open(pb::OpenSession {
            session_id: 5,
            model_id: vec![7; 32],
            first_layer: 3,
            end_layer: 6,
            max_context: 2048,
            sampling: Some(pb::Sampling { temperature: 0.7, seed: 3, top_k: 40, top_p: 0.9, ..Default::default() }),
            push_to: Some(hop.clone()),
            accept_from: vec![9; 38],
            top_logits: 5,
            stop_tokens: vec![2, 32000],
            receipts: true,
            ..Default::default()
        }),
        Kind::Opened(pb::Opened { session_id: 5, max_context: 2048 }),
        Kind::Step(pb::Step {
            session_id: 5,
            step: 1,
            tokens: vec![1, 415, 2936],
            generation: 1,
            more: true,
            row_tokens: vec![1, 415, 2936],
            ..Default::default()
        }),
        Kind::Step(pb::Step {
            session_id: 5,
            step: 2,
            hidden: hidden(2, 8),
            generation: 1,
            position: 3,
            ..Default::default()
        }),
        Kind::Result(pb::StepResult {
            session_id: 5,
            step: 2,
            token: 415,
            has_token: true,
            generation: 1,
            top: vec![pb::TokenLogprob { token: 415, logprob: -0.1, logit: 12.5 }],
            position: 4,
            fed: vec![415],
            ..Default::default()
        }),
        Kind::Retarget(pb::Retarget { session_id: 5, push_to: Some(hop), accept_from: vec![1; 38], replay: 1 }),
        Kind::Retargeted(pb::Retargeted { session_id: 5, position: 4 }),
        Kind::Receipts(pb::Receipts { session_id: 5, batch: Some(receipt::sign_batch(&receipt_chain(), &key())) }),
        Kind::Audit(pb::AuditRequest { session_id: 5 }),
        Kind::AuditRows(pb::AuditRows {
            session_id: 5,
            first: 0,
            steps: vec![pb::StepRows { tokens: vec![1, 2], ..Default::default() }],
            last: true,
        }),
        Kind::Error(pb::ErrorFrame { session_id: 5, message: "unknown session".into(), code: 1, peer: vec![3; 38] }),
        Kind::Close(pb::CloseSession { session_id: 5 }),
    ];
    kinds.into_iter().map(|kind| pb::InferenceFrame { kind: Some(kind) }).collect()
}

fn blob_requests() -> Vec<pb::BlobRequest> {
    use pb::blob_request::Kind;
    let range = pb::BlobRangeRequest {
        hash: vec![5; 32],
        size: 40_960,
        ranges: vec![pb::ChunkRange { start: 0, end: 16 }, pb::ChunkRange { start: 32, end: 40 }],
    };
    [Kind::Range(range), Kind::Manifest(vec![7; 32]), Kind::Proofs(vec![7; 32]), Kind::Announcement(vec![7; 32])]
        .into_iter()
        .map(|kind| pb::BlobRequest { kind: Some(kind) })
        .collect()
}

fn blob_responses() -> Vec<pb::BlobResponse> {
    use pb::blob_response::Result as R;
    let answer = blob_answers().into_iter().next().unwrap_or_default();
    [
        R::Encoded(answer),
        R::Manifest(manifest(2).canonical_bytes()),
        R::NotFound(pb::NotFound {}),
        R::Error("busy".into()),
        R::Proofs(pb::FraudProofs { proofs: vec![fraud_proof()] }.encode_to_vec()),
        R::Announcement(announce::sign(&key(), &announcement()).encode_to_vec()),
    ]
    .into_iter()
    .map(|r| pb::BlobResponse { result: Some(r) })
    .collect()
}

/// Small synthetic models (their file bytes and parsed header), of two architectures.
fn ggufs() -> Vec<(Vec<u8>, GgufFile)> {
    let Ok(dir) = tempfile::tempdir() else { return Vec::new() };
    [SynthArch::Llama, SynthArch::Gemma3]
        .into_iter()
        .filter_map(|arch| {
            let cfg = SynthConfig {
                arch,
                n_layer: 7,
                n_embd: 8,
                n_head: 2,
                n_head_kv: 1,
                n_ff: 16,
                n_vocab: 300,
                tied_embedding: arch == SynthArch::Gemma3,
                ..SynthConfig::default()
            };
            let path = dir.path().join(format!("{arch:?}.gguf"));
            write_synthetic(&cfg, &path).ok()?;
            Some((std::fs::read(&path).ok()?, GgufFile::open(&path).ok()?))
        })
        .collect()
}

fn manifest(n_layer: u32) -> Manifest {
    let blob = |role: BlobRole, layer: Option<u32>, size: u64| {
        let hash = Hash::of(format!("{role:?} {layer:?}").as_bytes());
        BlobRef { role, layer, size, hash }
    };
    let mut blobs = vec![blob(BlobRole::Meta, None, 900), blob(BlobRole::Embd, None, 4096)];
    blobs.extend((0..n_layer).map(|i| blob(BlobRole::Block, Some(i), 8192)));
    blobs.push(blob(BlobRole::Head, None, 4096));
    Manifest {
        format: MANIFEST_FORMAT,
        name: "seed".into(),
        architecture: "llama".into(),
        n_layer,
        tied_embedding: false,
        blobs,
    }
}

/// Answers for pieces of the stream target's blob: two range bytes, then the encoding.
fn blob_answers() -> Vec<Vec<u8>> {
    let blob = stream_blob();
    let outboard = PreOrderMemOutboard::create(blob, BLOCK_SIZE);
    [[0u8, 0], [0, 2], [1, 0], [2, 0], [1, 1]]
        .into_iter()
        .filter_map(|pick| {
            let (start, end) = stream_range(&pick, blob.len() as u64);
            let mut out = pick.to_vec();
            encode_ranges_validated(blob, &outboard, &piece_ranges(start, end), &mut out).ok()?;
            Some(out)
        })
        .collect()
}
