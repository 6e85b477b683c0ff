//! `drizzle simulate --model`: an event-driven model of many objects on
//! many nodes, without payloads, under simulated time.
//!
//! What is modelled: node sessions (alternating exponential up and down
//! times with the class's availability), permanent departures (the disk is
//! gone; a fresh node replaces it), subnet outages, the owners' mount
//! schedule (they observe uptime, renew, and repair only while online),
//! lease renewal and expiry on the nodes, lazy repair with per-node gone
//! windows through [`crate::maint::policy::plan`] and
//! [`crate::placement::choose_with`], repair bandwidth (one queue per
//! owner), leftovers (dropped fragments that live on until their lease
//! ends) and read availability.
//!
//! What is not: the network itself (transfers take `bytes / repair_rate`),
//! audits (a failed audit is a holder judged failed, like an expired
//! lease), crowded placements, metadata objects.
//!
//! Same seed, same report: one seeded generator, events ordered by time
//! then by the order they were scheduled, no hash-map iteration.
//!
//! This file holds the state and the event loop; `nodes` (population,
//! sessions, leases), `repair` (the owners' side of each object),
//! `schedule` (the mount schedule) and `report` (measurements) extend it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{exp, DayPoint, Decision, Report, SimConfig};
use crate::maint::{Policy, Uptime};

mod nodes;
mod repair;
mod replay;
mod report;
mod schedule;

pub use replay::replay;
use replay::Replay;
use schedule::Schedule;

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;
/// Owners of the simulated objects (each with its own repair queue; they
/// share the mount schedule).
const OWNERS: u32 = 1000;
/// At a mount, leases renewed longer ago than this are renewed (as the
/// daemon does).
const MOUNT_RENEW_AGE: u64 = 600;
/// A repair that cannot fetch k fragments is retried this much later.
const RETRY: u64 = HOUR;
/// Objects sampled per day for the plotted means.
const DAY_SAMPLE: usize = 2000;
/// Objects sampled per availability sample.
const READ_SAMPLE: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Flip(u32),
    Depart(u32),
    OutageStart(u32),
    OutageEnd(u32),
    /// A node's gone time (valid if it still is the node's `gone_at`).
    Gone(u32, u64),
    /// A node's leases end unless renewed meanwhile (at most one queued
    /// per node: a renewal moves the end, and the event then comes again).
    Expire(u32),
    /// Leftover fragments' leases end on a node (node, node epoch).
    Leftover(u32, u32),
    OwnerOn,
    RenewTick,
    Evaluate(u32),
    /// The owners' pass over every object marked since the last one.
    Drain,
    RepairDone(u32),
    Sample,
    Day,
    /// The replayed trace's event at this index.
    Trace(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Frag {
    node: u32,
    index: u32,
    /// The node's epoch when stored (an expiry wipe bumps the epoch).
    epoch: u32,
}

/// What the owners' checks read of a node, for every fragment of every
/// object they look at: kept apart from the rest of [`Node`] (a few
/// hundred kilobytes for the whole population, which stay in the cache).
#[derive(Clone, Copy, Debug)]
struct Status {
    up: bool,
    departed: bool,
    /// When the owners judge it gone (`u64::MAX` while up).
    gone_at: u64,
    epoch: u32,
    /// The epoch the owners know of (they learn of a wipe when renewing).
    known_epoch: u32,
}

impl Status {
    /// Up and still part of the population: can be renewed, read from
    /// and placed on.
    fn reachable(&self) -> bool {
        self.up && !self.departed
    }
}

struct Node {
    /// Its place in the population (a departed node's successor takes
    /// it): what traces and decisions name.
    slot: u32,
    class: u16,
    subnet: u32,
    natural_up: bool,
    outages: u16,
    since: u64,
    uptime: Uptime,
    /// When the owners last saw it up (None: never).
    seen: Option<u64>,
    was_gone: bool,
    renewed_at: u64,
    leftover: u64,
    /// The leftovers by when their lease ends (in order): every fragment
    /// dropped between two renewals ends at once, so one event each.
    left: std::collections::VecDeque<(u64, u64)>,
    /// Whether an `Expire` event is queued.
    expire_queued: bool,
    /// Bytes of our fragments placed here.
    used: u64,
    /// Objects with a fragment here (stale entries are skipped and pruned).
    objects: Vec<u32>,
}

struct Obj {
    frags: Vec<Frag>,
    next_index: u32,
    lost: bool,
    queued: bool,
    /// Since when fewer than r fragments truly survive.
    below_since: Option<u64>,
}

struct Sim {
    cfg: SimConfig,
    policy: Policy,
    rng: StdRng,
    now: u64,
    end: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    nodes: Vec<Node>,
    /// Each node's [`Status`] (same index as `nodes`).
    status: Vec<Status>,
    subnets: Vec<Vec<u32>>,
    objects: Vec<Obj>,
    busy_until: Vec<u64>,
    /// Objects to look at in the owners' next pass (each once, however
    /// many of its holders changed meanwhile), and whether it is queued.
    dirty: Vec<u32>,
    is_dirty: Vec<bool>,
    drain_queued: bool,
    sched: Schedule,
    lease: u64,
    frag_len: u64,
    /// What each node donates.
    capacity: u64,
    grace: u64,
    // Measurements.
    lost: u64,
    object_secs: f64,
    departures: u64,
    expiries: u64,
    /// Lease wipes of nodes that held fragments.
    wipes: u64,
    repairs: u64,
    rebuilt: u64,
    repair_bytes: u64,
    day_repair_bytes: u64,
    latency_sum: f64,
    latency_count: u64,
    read_hits: u64,
    read_samples: u64,
    leftover: u64,
    leftover_peak: u64,
    leftover_area: f64,
    leftover_since: u64,
    series: Vec<DayPoint>,
    decisions: Vec<Decision>,
    /// A repair that cannot fetch k fragments or place its fresh ones is
    /// retried this much later.
    retry: u64,
    /// Set when replaying a trace.
    replay: Option<Replay>,
}

/// Runs the model and reports.
pub fn run(cfg: &SimConfig) -> Result<Report, String> {
    run_with_progress(cfg, |_| {})
}

/// [`run`], calling `progress` with the simulated day as it goes.
pub fn run_with_progress(cfg: &SimConfig, mut progress: impl FnMut(u32)) -> Result<Report, String> {
    cfg.validate()?;
    let mut sim = Sim::new(cfg.clone());
    sim.populate();
    Ok(sim.run(&mut progress))
}

impl Sim {
    /// The event loop, to the end of the run.
    fn run(mut self, progress: &mut impl FnMut(u32)) -> Report {
        let mut day = 0;
        while let Some(Reverse((t, _, ev))) = self.queue.pop() {
            if t > self.end {
                break;
            }
            self.now = t;
            if ev == Ev::Day {
                day += 1;
                progress(day);
            }
            self.handle(ev);
        }
        self.report()
    }
}

impl Sim {
    fn new(cfg: SimConfig) -> Sim {
        let layout_len = crate::coder::Layout::new(cfg.object_bytes as usize, cfg.k)
            .map(|l| l.fragment_len() as u64)
            .unwrap_or(cfg.object_bytes / cfg.k as u64);
        let sched = Schedule {
            period: ((cfg.owner.period_hours * HOUR as f64) as u64).max(1),
            online: ((cfg.owner.online_hours * HOUR as f64) as u64).max(1),
        };
        let policy = cfg.policy();
        Sim {
            rng: StdRng::seed_from_u64(cfg.seed),
            now: 0,
            end: (cfg.days * DAY as f64) as u64,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            status: Vec::new(),
            subnets: Vec::new(),
            objects: Vec::new(),
            busy_until: vec![0; OWNERS as usize],
            dirty: Vec::new(),
            is_dirty: Vec::new(),
            drain_queued: false,
            sched,
            lease: (cfg.lease_days * DAY as f64) as u64,
            frag_len: layout_len,
            capacity: (cfg.space_factor * cfg.objects as f64 * cfg.n as f64 * layout_len as f64
                / cfg.nodes.max(1) as f64) as u64,
            // The daemon dials a holder past its window before condemning it.
            grace: 60u64.min(policy.window.min.max(1)),
            policy,
            cfg,
            lost: 0,
            object_secs: 0.0,
            departures: 0,
            expiries: 0,
            wipes: 0,
            repairs: 0,
            rebuilt: 0,
            repair_bytes: 0,
            day_repair_bytes: 0,
            latency_sum: 0.0,
            latency_count: 0,
            read_hits: 0,
            read_samples: 0,
            leftover: 0,
            leftover_peak: 0,
            leftover_area: 0.0,
            leftover_since: 0,
            series: Vec::new(),
            decisions: Vec::new(),
            retry: RETRY,
            replay: None,
        }
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Flip(id) => {
                if self.status[id as usize].departed {
                    return;
                }
                let n = &mut self.nodes[id as usize];
                n.natural_up = !n.natural_up;
                self.refresh(id);
                self.schedule_flip(id);
            }
            Ev::Depart(id) => self.depart(id),
            Ev::OutageStart(s) => self.outage_start(s),
            Ev::OutageEnd(s) => self.outage_end(s),
            Ev::Gone(id, token) => {
                let s = &self.status[id as usize];
                if s.up || s.gone_at != token {
                    return;
                }
                self.nodes[id as usize].was_gone = true;
                for o in self.objects_of(id) {
                    self.touch(o);
                }
            }
            Ev::Expire(id) => self.expire(id),
            Ev::Leftover(id, epoch) => {
                let s = self.status[id as usize];
                if s.departed || s.epoch != epoch {
                    return;
                }
                let n = &mut self.nodes[id as usize];
                let mut ended = 0;
                while n.left.front().is_some_and(|(until, _)| *until <= self.now) {
                    ended += n.left.pop_front().map_or(0, |(_, b)| b);
                }
                n.leftover = n.leftover.saturating_sub(ended);
                self.add_leftover(-(ended as i64));
            }
            Ev::OwnerOn => self.owner_on(),
            Ev::RenewTick => self.renew_tick(),
            Ev::Evaluate(o) => self.evaluate(o),
            Ev::Drain => self.drain(),
            Ev::RepairDone(o) => self.repair_done(o),
            Ev::Sample => self.sample(),
            Ev::Day => {
                self.day_point();
                self.at(self.now + DAY, Ev::Day);
            }
            Ev::Trace(i) => self.trace_event(i),
        }
    }

    /// A subnet goes dark: its nodes are down until the outage ends; the next
    /// outage is scheduled.
    fn outage_start(&mut self, s: u32) {
        let o = self.cfg.outages.clone();
        for id in self.subnets[s as usize].clone() {
            self.nodes[id as usize].outages += 1;
            self.refresh(id);
        }
        let t = self.now + (o.hours * HOUR as f64) as u64;
        self.at(t, Ev::OutageEnd(s));
        let next = self.now + exp(&mut self.rng, 30.0 * DAY as f64 / o.per_month);
        self.at(next, Ev::OutageStart(s));
    }

    /// A subnet's outage ends.
    fn outage_end(&mut self, s: u32) {
        for id in self.subnets[s as usize].clone() {
            let n = &mut self.nodes[id as usize];
            n.outages = n.outages.saturating_sub(1);
            self.refresh(id);
        }
    }

    /// The owners mount: every holder renewed long enough ago is renewed.
    fn owner_on(&mut self) {
        for id in 0..self.nodes.len() as u32 {
            let (n, s) = (&self.nodes[id as usize], &self.status[id as usize]);
            if s.reachable() && self.now >= n.renewed_at + MOUNT_RENEW_AGE {
                self.renew(id);
            }
        }
        if !self.sched.always() {
            self.at(self.now + self.sched.period, Ev::OwnerOn);
        }
    }

    /// While mounted, holders renewed a third of a lease ago are renewed.
    fn renew_tick(&mut self) {
        if self.sched.is_online(self.now) {
            for id in 0..self.nodes.len() as u32 {
                let (n, s) = (&self.nodes[id as usize], &self.status[id as usize]);
                if s.reachable() && self.now >= n.renewed_at + self.lease / 3 {
                    self.renew(id);
                }
            }
        }
        let step = (self.lease / 3).clamp(1, DAY);
        self.at(self.now + step, Ev::RenewTick);
    }

    /// While mounted, a sample of reads: is each object readable now?
    fn sample(&mut self) {
        if self.sched.is_online(self.now) {
            for _ in 0..READ_SAMPLE {
                let o = self.rng.random_range(0..self.objects.len());
                let ok = !self.objects[o].lost && self.readable(o as u32);
                self.read_hits += ok as u64;
                self.read_samples += 1;
            }
        }
        let step = ((self.cfg.sample_hours * HOUR as f64) as u64).max(60);
        self.at(self.now + step, Ev::Sample);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The owners' pass checks large batches on every core: the answers
    /// are the ones the check gives object by object, some settled and
    /// some not.
    #[test]
    fn the_parallel_settled_check_gives_each_object_its_own_answer() {
        let cfg = SimConfig {
            nodes: 200,
            objects: 4000,
            ..SimConfig::default()
        };
        let mut sim = Sim::new(cfg);
        sim.populate();
        // One node in eight judged gone: objects with too many fragments
        // there need work, the others do not.
        for s in sim.status.iter_mut().step_by(8) {
            s.up = false;
            s.gone_at = 0;
        }
        let all: Vec<u32> = (0..sim.objects.len() as u32).collect();
        assert!(all.len() >= 4 * repair::PARALLEL_BATCH);
        let each: Vec<bool> = all.iter().map(|o| sim.settled(*o)).collect();
        let batch = sim.settled_each(&all);
        assert_eq!(batch, each);
        assert!(each.contains(&true) && each.contains(&false));
    }
}
