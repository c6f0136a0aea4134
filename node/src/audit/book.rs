//! What a node knows about proven liars: the fraud proofs it verified and its banlist,
//! both kept in its data directory so they survive restarts.
//!
//! A proof that passed [`verify_proof`] (the model-free checks, then a replay that gives
//! another output than the accused signed) is written under
//! [`crate::net::proofs_dir`], where the network serves it to peers that ask, and its
//! accused goes on the banlist (`banned.json`). A proof that fails is counted against
//! the peer that sent it ([`ProofBook::blame`]) and bans nobody. A proof this node
//! cannot check (another execution class, a span it cannot get) changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libp2p::PeerId;
use nak_protocol::pb;
use nak_protocol::proof::{self, CheckedProof};
use prost::Message;
use serde::{Deserialize, Serialize};

use super::replay::{first_mismatch, LocalSpans};
use super::AuditError;
use crate::inference::exec_class;
use crate::net::proofs_dir;

/// What checking a proof concluded.
#[derive(Debug)]
pub enum Verdict {
    /// The accused signed an output its span does not compute from the rows it signed.
    Proven(CheckedProof),
    /// The proof is forged or wrong; it counts against whoever sent it.
    Rejected(String),
    /// This node cannot tell (another execution class or model, the span unavailable).
    Unchecked(String),
}

/// Checks `proof` without trusting its reporter: [`proof::check`], then a replay of its
/// rows on `spans` in this node's execution class.
pub async fn verify_proof(proof: &pb::FraudProof, spans: &mut LocalSpans) -> Verdict {
    let checked = match proof::check(proof) {
        Ok(c) => c,
        Err(e) => return Verdict::Rejected(e.to_string()),
    };
    let r = *checked.accused_receipt();
    if r.model_id != spans.manifest().model_id().0 {
        return Verdict::Unchecked("a proof about another model".into());
    }
    if r.exec_class != exec_class() {
        return Verdict::Unchecked("the accused ran in another execution class: results may differ honestly".into());
    }
    match spans.replay(&checked.receipts, &proof.inputs).await {
        Ok(replayed) if first_mismatch(&checked.receipts, &replayed).is_some() => Verdict::Proven(checked),
        Ok(_) => Verdict::Rejected("replaying the rows gives the outputs the accused signed".into()),
        // An honest hop refuses rows that do not run (NaN, wrong width) instead of signing them.
        Err(AuditError::Engine(e)) => Verdict::Rejected(format!("the rows do not run: {e}")),
        Err(e) => Verdict::Unchecked(e.to_string()),
    }
}

/// A banned peer, as the banlist file records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ban {
    /// The proof's id (hex).
    pub proof: String,
    /// The model (hex id).
    pub model: String,
    /// The accused's layers.
    pub layers: (u32, u32),
    /// The step it lied about.
    pub step: u64,
}

/// A node's verified proofs and banlist.
pub struct ProofBook {
    root: PathBuf,
    banned: Mutex<BTreeMap<String, Ban>>,
    blamed: Mutex<HashMap<PeerId, u32>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ProofBook {
    /// The book kept in data directory `root`.
    pub fn open(root: &Path) -> Result<Self, AuditError> {
        let banned = match std::fs::read(root.join("banned.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| AuditError::Refused(format!("{}: {e}", root.join("banned.json").display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e.into()),
        };
        Ok(Self { root: root.to_path_buf(), banned: Mutex::new(banned), blamed: Mutex::new(HashMap::new()) })
    }

    fn bans(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Ban>> {
        // Inserts are single operations; a panic elsewhere cannot leave the map half-changed.
        self.banned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `peer` is banned.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.bans().contains_key(&peer.to_string())
    }

    /// Every banned peer, with its ban.
    pub fn banned(&self) -> Vec<(PeerId, Ban)> {
        self.bans().iter().filter_map(|(p, b)| Some((p.parse().ok()?, b.clone()))).collect()
    }

    /// Whether this node holds a verified proof with this id about `model`.
    pub fn knows(&self, model: &[u8; 32], id: &[u8; 32]) -> bool {
        self.proof_path(model, id).exists()
    }

    fn proof_path(&self, model: &[u8; 32], id: &[u8; 32]) -> PathBuf {
        proofs_dir(&self.root, model).join(format!("{}.proof", hex(id)))
    }

    /// Keeps a verified proof and bans its accused; returns the accused.
    pub fn convict(&self, proof: &pb::FraudProof, checked: &CheckedProof) -> Result<PeerId, AuditError> {
        let accused = PeerId::from_bytes(&checked.accused).map_err(|e| AuditError::Refused(e.to_string()))?;
        let r = checked.accused_receipt();
        let path = self.proof_path(&r.model_id, &checked.id);
        write_atomically(&path, &proof.encode_to_vec())?;
        let ban = Ban {
            proof: hex(&checked.id),
            model: hex(&r.model_id),
            layers: (r.first_layer, r.end_layer),
            step: r.step,
        };
        let mut bans = self.bans();
        bans.entry(accused.to_string()).or_insert(ban);
        let json = serde_json::to_vec_pretty(&*bans).map_err(|e| AuditError::Refused(e.to_string()))?;
        write_atomically(&self.root.join("banned.json"), &json)?;
        Ok(accused)
    }

    /// Counts a wrong or forged proof against the peer that sent it; returns its count.
    pub fn blame(&self, peer: PeerId) -> u32 {
        let mut blamed = self.blamed.lock().unwrap_or_else(|p| p.into_inner());
        let n = blamed.entry(peer).or_insert(0);
        *n += 1;
        *n
    }

    /// Wrong or forged proofs `peer` has sent.
    pub fn blamed(&self, peer: &PeerId) -> u32 {
        self.blamed.lock().unwrap_or_else(|p| p.into_inner()).get(peer).copied().unwrap_or(0)
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
