//! Replaying a recorded [`Trace`] through the model: the nodes come, go
//! and leave exactly when the trace says (no sessions, departures or
//! outages of the model's own), the objects start on the trace's
//! placements, and the owners' passes fall on the recording's five-minute
//! steps. Where a recorded repair of the same object is due, the fresh
//! fragments go where that run put them, so the two runs stay comparable
//! after their first repair; everything else (which holders count, when
//! a holder is gone, what to rebuild and drop) the model decides itself,
//! and [`crate::sim::compare_decisions`] says whether it decided the same.

use std::collections::VecDeque;

use super::super::{Change, Decision, RepairDelay, Report, SimConfig, Trace, TraceEvent};
use super::{Ev, Frag, Obj, Sim};

/// The step of a `--real` run: its vault acts every five minutes.
pub const STEP: u64 = 300;
/// A recorded repair's targets are reused only this close in time; and
/// decisions this close count as the same.
pub const TOLERANCE: u64 = 3600;
const REUSE_WITHIN: u64 = TOLERANCE;

pub(super) struct Replay {
    events: Vec<TraceEvent>,
    /// The recorded run's repairs of each object, oldest first.
    recorded: Vec<VecDeque<Decision>>,
    /// The node in each slot now.
    pub(super) slots: Vec<u32>,
}

/// Replays `trace` under `cfg`'s policy, owner schedule, leases and sizes
/// (its population, churn and repair delay are the trace's), reusing the
/// targets of `recorded` decisions; the report holds the model's
/// decisions and how they compare with `recorded`.
pub fn replay(cfg: &SimConfig, trace: &Trace, recorded: &[Decision]) -> Result<Report, String> {
    let mut cfg = cfg.clone();
    cfg.nodes = trace.nodes;
    cfg.objects = trace.placements.len() as u32;
    cfg.outages.per_month = 0.0;
    // The recording repairs within the step it decides in.
    cfg.repair_delay = RepairDelay::Exponential { mean_hours: 0.0 };
    cfg.record_decisions = true;
    cfg.validate()?;
    check(trace, &cfg)?;
    let mut recorded_by_object = vec![VecDeque::new(); trace.placements.len()];
    for d in recorded {
        if let Some(q) = recorded_by_object.get_mut(d.object as usize) {
            q.push_back(d.clone());
        }
    }
    let mut sim = Sim::new(cfg);
    sim.replay = Some(Replay {
        events: trace.events.clone(),
        recorded: recorded_by_object,
        slots: vec![0; trace.nodes as usize],
    });
    // A holder past its window is condemned at the step after its dial.
    sim.grace = STEP;
    sim.retry = STEP;
    sim.populate_replay(trace);
    let mut report = sim.run(&mut |_| {});
    report.replay = Some(super::super::compare_decisions(
        recorded,
        &report.decisions,
        TOLERANCE,
    ));
    Ok(report)
}

/// The trace must fit itself: slots in range, events in time order.
fn check(trace: &Trace, cfg: &SimConfig) -> Result<(), String> {
    let bad_slot = |s: u32| s >= trace.nodes;
    if trace.placements.is_empty() {
        return Err("the trace has no objects".into());
    }
    for (i, p) in trace.placements.iter().enumerate() {
        if p.iter().any(|(s, _)| bad_slot(*s)) {
            return Err(format!("trace object {i} names a node slot out of range"));
        }
        if p.len() < cfg.k as usize {
            return Err(format!(
                "trace object {i} starts with fewer than k fragments"
            ));
        }
    }
    if trace.events.iter().any(|e| bad_slot(e.node)) {
        return Err("a trace event names a node slot out of range".into());
    }
    if trace.events.windows(2).any(|w| w[0].time > w[1].time) {
        return Err("the trace's events are not in time order".into());
    }
    Ok(())
}

impl Sim {
    /// The population, objects and first events of a replay.
    fn populate_replay(&mut self, trace: &Trace) {
        self.subnets = vec![Vec::new()];
        for slot in 0..trace.nodes {
            self.add_node(0, 0, slot);
        }
        for (o, placement) in trace.placements.iter().enumerate() {
            let frags: Vec<Frag> = placement
                .iter()
                .map(|&(slot, index)| Frag {
                    node: slot,
                    index,
                    epoch: 0,
                })
                .collect();
            for f in &frags {
                let n = &mut self.nodes[f.node as usize];
                n.objects.push(o as u32);
                n.used += self.frag_len;
            }
            self.is_dirty.push(false);
            self.objects.push(Obj {
                next_index: frags.iter().map(|f| f.index + 1).max().unwrap_or(0),
                frags,
                lost: false,
                queued: false,
                below_since: None,
            });
        }
        for (i, e) in trace.events.iter().enumerate() {
            self.at(e.time, Ev::Trace(i as u32));
        }
        self.first_events();
    }

    /// The trace's event `i`.
    pub(super) fn trace_event(&mut self, i: u32) {
        let Some(r) = &self.replay else { return };
        let e = r.events[i as usize];
        let id = r.slots[e.node as usize];
        match e.change {
            Change::Up | Change::Down => {
                self.nodes[id as usize].natural_up = e.change == Change::Up;
                self.refresh(id);
            }
            Change::Depart => self.depart(id),
        }
    }

    /// When the owners' next pass after `t` runs: at once, or replaying,
    /// at the next step of the recording that is online.
    pub(super) fn pass_time(&self, t: u64) -> u64 {
        if self.replay.is_none() {
            return self.sched.next_online(t);
        }
        let mut t = t.div_ceil(STEP) * STEP;
        loop {
            let next = self.sched.next_online(t);
            if next == t {
                return t;
            }
            t = next.div_ceil(STEP) * STEP;
        }
    }

    /// Where the recording put the `count` fresh fragments of object `o`
    /// when it repaired it about now (as nodes now in those slots), if it
    /// did and they can take them.
    pub(super) fn replayed_targets(
        &mut self,
        o: u32,
        count: u32,
        exclude: &[u32],
    ) -> Option<Vec<u32>> {
        let now = self.now;
        let r = self.replay.as_mut()?;
        let q = &mut r.recorded[o as usize];
        // Recorded repairs long past were not made here.
        while q.front().is_some_and(|d| d.time + REUSE_WITHIN < now) {
            q.pop_front();
        }
        let d = q.front()?;
        if d.time > now + REUSE_WITHIN || d.rebuilt != count || d.targets.len() != count as usize {
            return None;
        }
        let ids: Vec<u32> = d
            .targets
            .iter()
            .filter_map(|s| r.slots.get(*s as usize).copied())
            .collect();
        q.pop_front();
        let ok = ids.len() == count as usize
            && ids
                .iter()
                .all(|id| self.status[*id as usize].reachable() && !exclude.contains(id));
        ok.then_some(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trace that does not fit itself is refused with the reason.
    #[test]
    fn a_malformed_trace_is_refused() {
        let cfg = SimConfig {
            k: 2,
            n: 4,
            ..SimConfig::real_default()
        };
        let good = Trace {
            nodes: 8,
            placements: vec![vec![(0, 0), (1, 1), (2, 2), (3, 3)]],
            events: vec![TraceEvent {
                time: 600,
                node: 1,
                change: Change::Down,
            }],
        };
        let r = replay(&cfg, &good, &[]).unwrap();
        assert_eq!(r.config.nodes, 8);
        assert!(r.replay.unwrap().same());
        let mut bad = good.clone();
        bad.placements[0][1].0 = u32::MAX;
        assert!(replay(&cfg, &bad, &[])
            .unwrap_err()
            .contains("out of range"));
        let mut bad = good.clone();
        bad.events.insert(
            0,
            TraceEvent {
                time: 900,
                ..bad.events[0]
            },
        );
        assert!(replay(&cfg, &bad, &[]).unwrap_err().contains("time order"));
        let mut bad = good.clone();
        bad.events[0].node = 8;
        assert!(replay(&cfg, &bad, &[])
            .unwrap_err()
            .contains("out of range"));
        let bad = Trace {
            placements: vec![vec![(0, 0)]],
            ..good
        };
        assert!(replay(&cfg, &bad, &[])
            .unwrap_err()
            .contains("fewer than k"));
    }
}
