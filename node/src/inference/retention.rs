//! The input rows of sessions served with receipts, kept for audits.
//!
//! A session with receipts records each computed step's input rows here as it signs the
//! step's receipt ([`AuditRetention::record`]), in receipt order. When the session ends
//! its rows stay for the retention window, so that its opener can audit it afterwards
//! ([`AuditRetention::rows`]). All sessions share one byte budget: past it, rows of
//! ended sessions go first (oldest first); a running session that still does not fit
//! stops retaining, and an audit of it is answered "not retained".

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use nak_protocol::pb;

/// A session as its opener names it: the opener's peer id and its session id here.
pub(super) type SessionKey = (PeerId, u64);

struct Retained {
    steps: Vec<pb::StepRows>,
    bytes: u64,
    /// False once the budget made the session stop retaining.
    complete: bool,
    ended: Option<Instant>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<SessionKey, Retained>,
    used: u64,
}

/// Retained input rows, by session, under a byte budget and a time window.
pub(super) struct AuditRetention {
    state: Mutex<State>,
    budget: u64,
    window: Duration,
}

fn size_of(rows: &pb::StepRows) -> u64 {
    (rows.tokens.len() * 4 + rows.hidden.len()) as u64
}

impl AuditRetention {
    pub(super) fn new(budget: u64, window: Duration) -> Arc<Self> {
        Arc::new(Self { state: Mutex::new(State::default()), budget, window })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update below leaves the map and the byte count consistent before it can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the input rows of a session's next receipt.
    pub(super) fn record(&self, key: SessionKey, rows: pb::StepRows) {
        let bytes = size_of(&rows);
        let mut state = self.state();
        self.expire(&mut state);
        while state.used + bytes > self.budget {
            let oldest = state.sessions.iter().filter_map(|(k, r)| r.ended.map(|at| (at, *k))).min().map(|(_, k)| k);
            match oldest {
                Some(k) => drop_session(&mut state, &k),
                None => break,
            }
        }
        let fits = state.used + bytes <= self.budget;
        let entry = state.sessions.entry(key).or_insert_with(|| Retained {
            steps: vec![],
            bytes: 0,
            complete: true,
            ended: None,
        });
        if !entry.complete {
            return;
        }
        if !fits {
            tracing::warn!(session = key.1, "over the audit retention budget: this session's rows are not kept");
            let freed = entry.bytes;
            *entry = Retained { steps: vec![], bytes: 0, complete: false, ended: None };
            state.used -= freed;
            return;
        }
        entry.steps.push(rows);
        entry.bytes += bytes;
        state.used += bytes;
    }

    /// Marks a session ended: its rows stay for the retention window.
    pub(super) fn end(&self, key: SessionKey) {
        if let Some(r) = self.state().sessions.get_mut(&key) {
            r.ended = Some(Instant::now());
        }
    }

    /// The retained rows of a session, in receipt order.
    pub(super) fn rows(&self, key: SessionKey) -> Result<Vec<pb::StepRows>, String> {
        let mut state = self.state();
        self.expire(&mut state);
        match state.sessions.get(&key) {
            Some(r) if r.complete => Ok(r.steps.clone()),
            Some(_) => Err("this server did not retain that session's rows (over its budget)".into()),
            None => Err("no retained rows of that session for you (unknown, or past the retention window)".into()),
        }
    }

    /// Bytes held now.
    pub(super) fn used(&self) -> u64 {
        self.state().used
    }

    fn expire(&self, state: &mut State) {
        let now = Instant::now();
        let expired: Vec<SessionKey> = state
            .sessions
            .iter()
            .filter(|(_, r)| r.ended.is_some_and(|at| now.duration_since(at) > self.window))
            .map(|(k, _)| *k)
            .collect();
        for k in expired {
            drop_session(state, &k);
        }
    }
}

fn drop_session(state: &mut State, key: &SessionKey) {
    if let Some(r) = state.sessions.remove(key) {
        state.used -= r.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> pb::StepRows {
        pb::StepRows { hidden: vec![1; n], ..Default::default() }
    }

    #[test]
    fn ended_sessions_make_room_and_a_running_one_that_does_not_fit_stops_retaining() {
        let r = AuditRetention::new(100, Duration::from_secs(60));
        let (a, b, c) = ((PeerId::random(), 1), (PeerId::random(), 2), (PeerId::random(), 3));
        r.record(a, rows(60));
        r.end(a);
        r.record(b, rows(30));
        assert_eq!(r.used(), 90);
        // c needs room: a (ended) goes, b (running) stays.
        r.record(c, rows(50));
        assert!(r.rows(a).is_err());
        assert_eq!(r.rows(b).unwrap().len(), 1);
        assert_eq!(r.used(), 80);
        // b cannot grow past the budget while c runs: it stops retaining.
        r.record(b, rows(40));
        assert!(r.rows(b).unwrap_err().contains("budget"));
        assert_eq!(r.used(), 50);
        assert_eq!(r.rows(c).unwrap()[0].hidden.len(), 50);
        // Another peer cannot read c's rows.
        assert!(r.rows((PeerId::random(), 3)).is_err());
    }

    #[test]
    fn rows_of_ended_sessions_expire_after_the_window() {
        let r = AuditRetention::new(100, Duration::from_millis(0));
        let a = (PeerId::random(), 1);
        r.record(a, rows(10));
        assert!(r.rows(a).is_ok());
        r.end(a);
        std::thread::sleep(Duration::from_millis(5));
        assert!(r.rows(a).is_err());
        assert_eq!(r.used(), 0);
    }
}
