//! Decisions (from the servers' decision logs) joined with their outcomes (from the optimizer's
//! own outcome log). Both logs are the source of truth: the ledger is rebuilt from them — from
//! its last [`Checkpoint`] and the logs' tails — at start, so a crash loses nothing that was
//! acknowledged. Both record types are `nudge_records`'s: the servers write exactly what is
//! read here.
use crate::reward::Reward;
use nudge_records::{read_all, Cursor, DecisionRecord, LogError, OutcomeRecord, OutcomeTotals};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

/// One decision with what is known of its outcomes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    decision: DecisionRecord,
    /// Totals of its in-window outcomes (`None`: none yet, which the reward file may value
    /// differently from zeros).
    totals: Option<OutcomeTotals>,
    /// Event ids of its outcomes, late ones included: they leave with it.
    events: Vec<String>,
}

/// Outcomes whose decision is not (yet) in the ledger.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Pending {
    totals: Option<OutcomeTotals>,
    events: Vec<String>,
}

/// Decisions by id, each with the totals of its outcomes so far — bounded.
///
/// A decision is *open* until its reward window closes; then it is *closed* and kept, with
/// its totals, as a training example. Only the newest `keep_closed` closed decisions are kept:
/// older ones leave with their outcomes' event ids (an outcome reported for one of them is
/// refused as unknown, long after its window). So memory is bounded by the decisions of one
/// window plus `keep_closed`, however long the optimizer runs; [`Checkpoint`] holds exactly
/// this state, so a restart reads it and the logs' tails, not the whole history.
pub struct Ledger {
    open: HashMap<String, Entry>,
    closed: VecDeque<Entry>,
    /// Sequence number of `closed[0]`; `closed_index` maps ids to sequence numbers.
    first_seq: u64,
    closed_index: HashMap<String, u64>,
    pending: HashMap<String, Pending>,
    event_ids: HashSet<String>,
    keep_closed: usize,
    /// Outcomes that arrived after their decision's reward window.
    pub late_outcomes: u64,
    /// Outcomes recorded (late included).
    pub outcomes_recorded: u64,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::keeping(usize::MAX)
    }
}

/// A decision whose reward window has closed, with its reward.
#[derive(Debug, Clone)]
pub struct Example {
    /// The logged decision.
    pub decision: DecisionRecord,
    /// The reward file's value of its outcomes.
    pub reward: f64,
}

/// The ledger as a file, and how far into each log it had read: a restart loads it and reads
/// only what the logs gained since (`format` 1, JSON).
#[derive(Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    format: u32,
    /// Closed decisions (oldest first), then open ones.
    entries: Vec<Entry>,
    open_from: usize,
    pending: Vec<(String, Pending)>,
    late_outcomes: u64,
    outcomes_recorded: u64,
    /// Log directory → how far it was read.
    pub cursors: BTreeMap<PathBuf, Cursor>,
}

/// The checkpoint format this code writes and reads.
pub const CHECKPOINT_FORMAT: u32 = 1;

impl Checkpoint {
    /// Reads a checkpoint; `None` if there is none.
    pub fn load(path: &Path) -> Result<Option<Checkpoint>, LogError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LogError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let c: Checkpoint = serde_json::from_slice(&bytes)?;
        if c.format != CHECKPOINT_FORMAT {
            return Err(LogError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other(format!(
                    "checkpoint format {} (this optimizer reads {CHECKPOINT_FORMAT})",
                    c.format
                )),
            });
        }
        Ok(Some(c))
    }

    /// Writes it atomically (a crash leaves the old checkpoint or the new one).
    pub fn save(&self, path: &Path) -> Result<(), LogError> {
        let io = |source| LogError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        serde_json::to_writer(std::io::BufWriter::new(&mut f), self)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

impl Ledger {
    /// An empty ledger that keeps at most `keep_closed` closed decisions.
    pub fn keeping(keep_closed: usize) -> Self {
        Self {
            open: HashMap::new(),
            closed: VecDeque::new(),
            first_seq: 0,
            closed_index: HashMap::new(),
            pending: HashMap::new(),
            event_ids: HashSet::new(),
            keep_closed,
            late_outcomes: 0,
            outcomes_recorded: 0,
        }
    }

    /// The ledger of every decision and outcome record in `dirs` (each may hold either kind),
    /// and how many lines were not valid records (each logged with its file and line).
    pub fn read(dirs: &[PathBuf]) -> Result<(Ledger, u64), LogError> {
        let mut ledger = Ledger::default();
        let mut malformed = 0;
        for dir in dirs {
            let (decisions, bad) = read_all::<DecisionRecord>(dir)?;
            malformed += bad;
            decisions.into_iter().for_each(|d| ledger.add_decision(d));
            let (outcomes, bad) = read_all::<OutcomeRecord>(dir)?;
            malformed += bad;
            outcomes.iter().for_each(|o| ledger.add_outcome(o));
        }
        Ok((ledger, malformed))
    }

    /// Adds a decision (already checked by the reader); one already here is ignored.
    pub fn add_decision(&mut self, d: DecisionRecord) {
        if self.decision(&d.decision_id).is_some() {
            return;
        }
        let p = self.pending.remove(&d.decision_id).unwrap_or_default();
        self.open.insert(
            d.decision_id.clone(),
            Entry {
                decision: d,
                totals: p.totals,
                events: p.events,
            },
        );
    }

    fn entry_mut(&mut self, id: &str) -> Option<&mut Entry> {
        if let Some(e) = self.open.get_mut(id) {
            return Some(e);
        }
        let seq = *self.closed_index.get(id)?;
        self.closed.get_mut((seq - self.first_seq) as usize)
    }

    /// The decision with this id, if logged.
    pub fn decision(&self, id: &str) -> Option<&DecisionRecord> {
        if let Some(e) = self.open.get(id) {
            return Some(&e.decision);
        }
        let seq = *self.closed_index.get(id)?;
        self.closed.get((seq - self.first_seq) as usize).map(|e| &e.decision)
    }

    /// How many decisions are kept (open and closed).
    pub fn decisions(&self) -> usize {
        self.open.len() + self.closed.len()
    }

    /// How many closed decisions are kept as training examples.
    pub fn closed(&self) -> usize {
        self.closed.len()
    }

    /// Reserves an event id; false if it was seen before.
    pub fn claim_event(&mut self, event_id: &str) -> bool {
        self.event_ids.insert(event_id.to_string())
    }

    /// True if an outcome with this event id is recorded (or claimed).
    pub fn has_event(&self, event_id: &str) -> bool {
        self.event_ids.contains(event_id)
    }

    /// Frees an event id whose outcome could not be made durable (the reporter retries).
    pub fn release_event(&mut self, event_id: &str) {
        self.event_ids.remove(event_id);
    }

    /// Applies a durable outcome record (its event id already claimed, or replayed at start).
    pub fn add_outcome(&mut self, o: &OutcomeRecord) {
        self.event_ids.insert(o.event_id.clone());
        self.outcomes_recorded += 1;
        if o.late {
            self.late_outcomes += 1;
        }
        let (totals, events) = match self.entry_mut(&o.decision_id) {
            Some(e) => (&mut e.totals, &mut e.events),
            None => {
                let p = self.pending.entry(o.decision_id.clone()).or_default();
                (&mut p.totals, &mut p.events)
            }
        };
        events.push(o.event_id.clone());
        if !o.late {
            totals.get_or_insert_with(OutcomeTotals::default).add(o);
        }
    }

    /// Closes the decisions whose window ended by `now_ms` and lets the oldest closed ones go
    /// beyond `keep_closed`, with their event ids.
    pub fn compact(&mut self, window_ms: u64, now_ms: u64) {
        let ids: Vec<String> = self
            .open
            .iter()
            .filter(|(_, e)| e.decision.time_ms.saturating_add(window_ms) <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        // Moved, not copied: these are the bulk of the ledger.
        let mut closing: Vec<Entry> = ids.iter().filter_map(|id| self.open.remove(id)).collect();
        closing.sort_by(|a, b| {
            (a.decision.time_ms, &a.decision.decision_id).cmp(&(b.decision.time_ms, &b.decision.decision_id))
        });
        for e in closing {
            let seq = self.first_seq + self.closed.len() as u64;
            self.closed_index.insert(e.decision.decision_id.clone(), seq);
            self.closed.push_back(e);
        }
        while self.closed.len() > self.keep_closed {
            if let Some(e) = self.closed.pop_front() {
                self.closed_index.remove(&e.decision.decision_id);
                for ev in &e.events {
                    self.event_ids.remove(ev);
                }
                self.first_seq += 1;
            }
        }
    }

    /// Drops outcomes whose decision never arrived (it left the ledger before they were read
    /// back at start, or was never logged): called once start-up has read every log.
    pub fn drop_orphans(&mut self) -> usize {
        let n = self.pending.len();
        for (_, p) in self.pending.drain() {
            for ev in &p.events {
                self.event_ids.remove(ev);
            }
        }
        n
    }

    /// Decisions whose reward window closed by `now_ms` (the newest `keep_closed`), oldest
    /// first, with their rewards.
    pub fn examples(&mut self, reward: &Reward, now_ms: u64) -> Vec<Example> {
        self.compact(reward.window_ms, now_ms);
        let mut v: Vec<Example> = self
            .closed
            .iter()
            .map(|e| Example {
                decision: e.decision.clone(),
                reward: reward.value(e.totals.as_ref()),
            })
            .collect();
        v.sort_by(|a, b| {
            (a.decision.time_ms, &a.decision.decision_id).cmp(&(b.decision.time_ms, &b.decision.decision_id))
        });
        v
    }

    /// The ledger's state, with how far each log was read.
    pub fn checkpoint(&self, cursors: BTreeMap<PathBuf, Cursor>) -> Checkpoint {
        let mut entries: Vec<Entry> = self.closed.iter().cloned().collect();
        let open_from = entries.len();
        entries.extend(self.open.values().cloned());
        Checkpoint {
            format: CHECKPOINT_FORMAT,
            entries,
            open_from,
            pending: self.pending.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            late_outcomes: self.late_outcomes,
            outcomes_recorded: self.outcomes_recorded,
            cursors,
        }
    }

    /// The ledger a checkpoint holds, keeping at most `keep_closed` closed decisions.
    pub fn from_checkpoint(c: Checkpoint, keep_closed: usize) -> (Ledger, BTreeMap<PathBuf, Cursor>) {
        let mut l = Ledger::keeping(keep_closed);
        for (i, e) in c.entries.into_iter().enumerate() {
            l.event_ids.extend(e.events.iter().cloned());
            if i < c.open_from {
                let seq = l.first_seq + l.closed.len() as u64;
                l.closed_index.insert(e.decision.decision_id.clone(), seq);
                l.closed.push_back(e);
            } else {
                l.open.insert(e.decision.decision_id.clone(), e);
            }
        }
        for (k, p) in c.pending {
            l.event_ids.extend(p.events.iter().cloned());
            l.pending.insert(k, p);
        }
        l.late_outcomes = c.late_outcomes;
        l.outcomes_recorded = c.outcomes_recorded;
        l.compact(u64::MAX, 0);
        (l, c.cursors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nudge_records::{OutcomeKind, DECISION_SCHEMA, OUTCOME_SCHEMA};

    fn decision(id: &str, time_ms: u64) -> DecisionRecord {
        DecisionRecord {
            schema: DECISION_SCHEMA,
            decision_id: id.into(),
            time_ms,
            conversation_id: "c".into(),
            customer: String::new(),
            channel: String::new(),
            policy_version: "v1".into(),
            model_version: String::new(),
            context: Default::default(),
            candidates: vec![],
            offer_id: String::new(),
            option: 0,
            propensity: 1.0,
            probabilities: vec![1.0],
            scores: vec![],
            how: "greedy".into(),
        }
    }

    fn outcome(event: &str, decision: &str, kind: OutcomeKind, margin: f64, late: bool) -> OutcomeRecord {
        OutcomeRecord {
            schema: OUTCOME_SCHEMA,
            event_id: event.into(),
            decision_id: decision.into(),
            kind,
            revenue: 2.0 * margin,
            margin,
            time_ms: 0,
            received_ms: 0,
            late,
        }
    }

    #[test]
    fn joins_outcomes_with_closed_decisions_in_time_order() {
        let reward = Reward::from_toml(
            "r.toml",
            "reward = \"conversion * margin - complaint\"\nwindow_seconds = 10",
        )
        .unwrap();
        let mut l = Ledger::default();
        l.add_decision(decision("b", 2_000));
        l.add_decision(decision("a", 1_000));
        l.add_decision(decision("open", 50_000));
        assert!(l.claim_event("e1"));
        assert!(!l.claim_event("e1"), "an event id counts once");
        l.add_outcome(&outcome("e1", "a", OutcomeKind::Convert, 5.0, false));
        l.add_outcome(&outcome("e2", "a", OutcomeKind::Complaint, 0.0, false));
        l.add_outcome(&outcome("e3", "b", OutcomeKind::Convert, 7.0, true));
        let ex = l.examples(&reward, 20_000);
        let got: Vec<(&str, f64)> = ex.iter().map(|e| (e.decision.decision_id.as_str(), e.reward)).collect();
        // `open`'s window has not closed; `b`'s conversion came late and is not trained on.
        assert_eq!(got, vec![("a", 4.0), ("b", 0.0)]);
        assert_eq!((l.outcomes_recorded, l.late_outcomes), (3, 1));
        l.release_event("e1");
        assert!(l.claim_event("e1"));
    }

    #[test]
    fn memory_is_bounded_and_a_checkpoint_restores_exactly_what_training_needs() {
        let reward = Reward::from_toml("r.toml", "reward = \"conversion\"\nwindow_seconds = 1").unwrap();
        let mut l = Ledger::keeping(100);
        for i in 0..1_000u64 {
            l.add_decision(decision(&format!("d{i}"), i * 10));
            l.add_outcome(&outcome(
                &format!("e{i}"),
                &format!("d{i}"),
                OutcomeKind::Convert,
                1.0,
                false,
            ));
            if i % 50 == 0 {
                l.compact(reward.window_ms, i * 10);
            }
        }
        // At t = 10,000, decisions up to t = 9,000 have closed (d0..=d900); the newest 100 of
        // those are kept (d801..=d900) and d901..=d999 are open.
        let ex = l.examples(&reward, 10_000);
        assert_eq!(ex.len(), 100);
        assert_eq!(ex[0].decision.decision_id, "d801");
        assert_eq!(l.decisions(), 199);
        // Event ids left with their decisions; those kept still deduplicate.
        assert!(!l.has_event("e10") && l.has_event("e850") && l.has_event("e999"));
        assert!(l.decision("d10").is_none() && l.decision("d850").is_some());
        // A duplicate decision (a redelivery) is not counted twice.
        l.add_decision(decision("d850", 8_500));
        assert_eq!(l.decisions(), 199);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ledger.checkpoint.json");
        let cursors: BTreeMap<PathBuf, Cursor> = [(PathBuf::from("logs/outcomes"), Cursor::default())].into();
        l.checkpoint(cursors.clone()).save(&p).unwrap();
        let (mut back, c) = Ledger::from_checkpoint(Checkpoint::load(&p).unwrap().unwrap(), 100);
        assert_eq!(c, cursors);
        assert_eq!((back.decisions(), back.outcomes_recorded), (199, 1_000));
        let again = back.examples(&reward, 10_000);
        let ids = |v: &[Example]| {
            v.iter()
                .map(|e| (e.decision.decision_id.clone(), e.reward))
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&again), ids(&ex));
        assert!(back.has_event("e999") && !back.has_event("e10"));
        // Later, everything closes and the ledger keeps only the newest 100.
        assert_eq!(back.examples(&reward, 1_000_000).len(), 100);
        assert_eq!(back.decisions(), 100);
    }
}
