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

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{poisson99, wilson99, DayPoint, Decision, RepairDelay, Report, SimConfig};
use crate::maint::{markov, policy, Holder, Policy, Uptime};
use crate::placement::{self, Candidate};

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
    /// A node's leases end unless renewed since `token`.
    Expire(u32, u64),
    /// A leftover fragment's lease ends (node, bytes, node epoch).
    Leftover(u32, u64, u32),
    OwnerOn,
    RenewTick,
    Evaluate(u32),
    RepairDone(u32),
    Sample,
    Day,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Frag {
    node: u32,
    index: u32,
    /// The node's epoch when stored (an expiry wipe bumps the epoch).
    epoch: u32,
}

struct Node {
    class: u16,
    subnet: u32,
    natural_up: bool,
    outages: u16,
    departed: bool,
    up: bool,
    since: u64,
    uptime: Uptime,
    gone_at: u64,
    /// When the owners last saw it up (None: never).
    seen: Option<u64>,
    was_gone: bool,
    renewed_at: u64,
    epoch: u32,
    /// The epoch the owners know of (they learn of a wipe when renewing).
    known_epoch: u32,
    leftover: u64,
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

/// The owners' mount schedule as arithmetic on seconds.
#[derive(Clone, Copy)]
struct Schedule {
    period: u64,
    online: u64,
}

impl Schedule {
    fn always(&self) -> bool {
        self.online >= self.period
    }
    fn is_online(&self, t: u64) -> bool {
        self.always() || t % self.period < self.online
    }
    /// Online seconds in `[0, t)`.
    fn cumulative(&self, t: u64) -> u64 {
        if self.always() {
            return t;
        }
        (t / self.period) * self.online + (t % self.period).min(self.online)
    }
    fn online_between(&self, a: u64, b: u64) -> u64 {
        self.cumulative(b).saturating_sub(self.cumulative(a))
    }
    /// The first time at or after `t` by which `secs` online seconds have
    /// passed since `t`.
    fn advance(&self, t: u64, secs: u64) -> u64 {
        if self.always() {
            return t + secs;
        }
        let target = self.cumulative(t) + secs;
        let (periods, rem) = (target / self.online, target % self.online);
        let at = if rem == 0 && periods > 0 {
            (periods - 1) * self.period + self.online
        } else {
            periods * self.period + rem
        };
        at.max(t)
    }
    /// The end of the owners' last online period before `t` (0 if none).
    fn last_online_end(&self, t: u64) -> u64 {
        if self.always() {
            return t;
        }
        let start = t / self.period * self.period;
        if t - start >= self.online {
            start + self.online
        } else {
            start.saturating_sub(self.period - self.online)
        }
    }

    /// The next time the owners are online, from `t`.
    fn next_online(&self, t: u64) -> u64 {
        if self.is_online(t) {
            t
        } else {
            (t / self.period + 1) * self.period
        }
    }
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
    subnets: Vec<Vec<u32>>,
    objects: Vec<Obj>,
    busy_until: Vec<u64>,
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
    let mut day = 0;
    while let Some(Reverse((t, _, ev))) = sim.queue.pop() {
        if t > sim.end {
            break;
        }
        sim.now = t;
        if ev == Ev::Day {
            day += 1;
            progress(day);
        }
        sim.handle(ev);
    }
    Ok(sim.report())
}

fn exp(rng: &mut StdRng, mean: f64) -> u64 {
    let u: f64 = rng.random::<f64>().max(1e-300);
    (-u.ln() * mean).round().max(1.0) as u64
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
            subnets: Vec::new(),
            objects: Vec::new(),
            busy_until: vec![0; OWNERS as usize],
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
        }
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq, ev)));
    }

    fn class(&self, node: u32) -> &super::NodeClass {
        &self.cfg.classes[self.nodes[node as usize].class as usize]
    }

    /// Adds a node of `class` in `subnet`, in its stationary state.
    fn add_node(&mut self, class: u16, subnet: u32) -> u32 {
        let c = self.cfg.classes[class as usize].clone();
        let up = self.rng.random_bool(c.availability.clamp(0.0, 1.0));
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            class,
            subnet,
            natural_up: up,
            outages: 0,
            departed: false,
            up,
            since: self.now,
            uptime: Uptime::default(),
            gone_at: u64::MAX,
            seen: None,
            was_gone: false,
            renewed_at: self.now,
            epoch: 0,
            known_epoch: 0,
            leftover: 0,
            used: 0,
            objects: Vec::new(),
        });
        self.subnets[subnet as usize].push(id);
        self.schedule_flip(id);
        let rate = c.departures_per_month / (30.0 * DAY as f64);
        if rate > 0.0 {
            let t = self.now + exp(&mut self.rng, 1.0 / rate);
            self.at(t, Ev::Depart(id));
        }
        if !up {
            self.went_down(id);
        }
        id
    }

    fn schedule_flip(&mut self, id: u32) {
        let c = self.class(id).clone();
        if c.availability >= 1.0 {
            return;
        }
        let up_mean = c.session_hours * HOUR as f64;
        let mean = if self.nodes[id as usize].natural_up {
            up_mean
        } else {
            up_mean * (1.0 - c.availability) / c.availability
        };
        let t = self.now + exp(&mut self.rng, mean);
        self.at(t, Ev::Flip(id));
    }

    fn populate(&mut self) {
        let total: f64 = self.cfg.classes.iter().map(|c| c.share).sum();
        let subnet_size = self.cfg.outages.subnet_size.max(1);
        let subnets = self.cfg.nodes.div_ceil(subnet_size);
        self.subnets = vec![Vec::new(); subnets as usize];
        let mut acc = 0.0;
        let mut class = 0usize;
        for i in 0..self.cfg.nodes {
            // Classes in proportion to their shares.
            while class + 1 < self.cfg.classes.len()
                && (i as f64 + 0.5) / self.cfg.nodes as f64
                    > (acc + self.cfg.classes[class].share) / total
            {
                acc += self.cfg.classes[class].share;
                class += 1;
            }
            self.add_node(class as u16, i / subnet_size);
        }
        let o = self.cfg.outages.clone();
        if o.per_month > 0.0 && o.hours > 0.0 {
            for s in 0..subnets {
                let t = exp(&mut self.rng, 30.0 * DAY as f64 / o.per_month);
                self.at(t, Ev::OutageStart(s));
            }
        }
        // Every object is uploaded at the start onto nodes that are up.
        let up: Vec<u32> = (0..self.nodes.len() as u32)
            .filter(|i| self.nodes[*i as usize].up)
            .collect();
        for o in 0..self.cfg.objects {
            let chosen = self.pick(&up, &[], self.cfg.n as usize).unwrap_or_default();
            let frags: Vec<Frag> = chosen
                .iter()
                .enumerate()
                .map(|(i, node)| Frag {
                    node: *node,
                    index: i as u32,
                    epoch: 0,
                })
                .collect();
            for f in &frags {
                let n = &mut self.nodes[f.node as usize];
                n.objects.push(o);
                n.used += self.frag_len;
            }
            self.objects.push(Obj {
                next_index: frags.len() as u32,
                frags,
                lost: false,
                queued: false,
                below_since: None,
            });
        }
        for id in 0..self.nodes.len() as u32 {
            self.at(self.lease, Ev::Expire(id, 0));
        }
        self.at(0, Ev::OwnerOn);
        self.at(0, Ev::RenewTick);
        self.at(0, Ev::Sample);
        self.at(DAY, Ev::Day);
        // Objects that start below the threshold (too few nodes up).
        for o in 0..self.objects.len() as u32 {
            if (self.objects[o as usize].frags.len() as u32) < self.policy.r {
                self.at(0, Ev::Evaluate(o));
            }
        }
    }

    /// Picks `count` distinct nodes from a random sample of `pool`, none
    /// in `exclude`, through the daemon's placement code.
    fn pick(&mut self, pool: &[u32], exclude: &[u32], count: usize) -> Option<Vec<u32>> {
        if pool.is_empty() {
            return None;
        }
        let mut cands: Vec<Candidate<u32>> = Vec::new();
        let want = count * 4 + 16;
        for _ in 0..want * 4 {
            if cands.len() >= want {
                break;
            }
            let p = pool[self.rng.random_range(0..pool.len())];
            if !exclude.contains(&p) && !cands.iter().any(|c| c.peer == p) {
                let n = &self.nodes[p as usize];
                cands.push(Candidate {
                    peer: p,
                    available: Some(self.capacity.saturating_sub(n.used)),
                    rtt: None,
                    strikes: 0,
                    availability: Some(n.uptime.availability()),
                });
            }
        }
        if cands.len() < count {
            return None;
        }
        placement::choose_with(&cands, count, self.frag_len, &mut self.rng)
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Flip(id) => {
                if self.nodes[id as usize].departed {
                    return;
                }
                let n = &mut self.nodes[id as usize];
                n.natural_up = !n.natural_up;
                self.refresh(id);
                self.schedule_flip(id);
            }
            Ev::Depart(id) => self.depart(id),
            Ev::OutageStart(s) => {
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
            Ev::OutageEnd(s) => {
                for id in self.subnets[s as usize].clone() {
                    let n = &mut self.nodes[id as usize];
                    n.outages = n.outages.saturating_sub(1);
                    self.refresh(id);
                }
            }
            Ev::Gone(id, token) => {
                let n = &self.nodes[id as usize];
                if n.up || n.gone_at != token {
                    return;
                }
                self.nodes[id as usize].was_gone = true;
                for o in self.objects_of(id) {
                    self.evaluate(o);
                }
            }
            Ev::Expire(id, token) => self.expire(id, token),
            Ev::Leftover(id, bytes, epoch) => {
                let n = &mut self.nodes[id as usize];
                if !n.departed && n.epoch == epoch {
                    n.leftover = n.leftover.saturating_sub(bytes);
                    self.add_leftover(-(bytes as i64));
                }
            }
            Ev::OwnerOn => {
                for id in 0..self.nodes.len() as u32 {
                    let n = &self.nodes[id as usize];
                    if n.up && !n.departed && self.now >= n.renewed_at + MOUNT_RENEW_AGE {
                        self.renew(id);
                    }
                }
                if !self.sched.always() {
                    self.at(self.now + self.sched.period, Ev::OwnerOn);
                }
            }
            Ev::RenewTick => {
                if self.sched.is_online(self.now) {
                    for id in 0..self.nodes.len() as u32 {
                        let n = &self.nodes[id as usize];
                        if n.up && !n.departed && self.now >= n.renewed_at + self.lease / 3 {
                            self.renew(id);
                        }
                    }
                }
                let step = (self.lease / 3).clamp(1, DAY);
                self.at(self.now + step, Ev::RenewTick);
            }
            Ev::Evaluate(o) => self.evaluate(o),
            Ev::RepairDone(o) => self.repair_done(o),
            Ev::Sample => {
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
            Ev::Day => {
                self.day_point();
                self.at(self.now + DAY, Ev::Day);
            }
        }
    }

    /// Applies a node's effective state (natural, outages, departure).
    fn refresh(&mut self, id: u32) {
        let n = &self.nodes[id as usize];
        let up = n.natural_up && n.outages == 0 && !n.departed;
        if up == n.up {
            return;
        }
        let watched = self.sched.online_between(n.since, self.now);
        let n = &mut self.nodes[id as usize];
        n.uptime.watched(n.up, watched);
        n.up = up;
        n.since = self.now;
        if up {
            n.uptime.watched(true, 0);
            n.gone_at = u64::MAX;
            if std::mem::take(&mut n.was_gone) {
                // Its fragments count again: the owners see it at their
                // next pass.
                let t = self.sched.next_online(self.now);
                for o in self.objects_of(id) {
                    self.at(t, Ev::Evaluate(o));
                }
            }
            let n = &self.nodes[id as usize];
            if self.sched.is_online(self.now) && self.now >= n.renewed_at + self.lease / 3 {
                self.renew(id);
            }
        } else {
            self.went_down(id);
        }
    }

    /// Schedules the time the owners judge a node that just went down
    /// gone (as [`Uptime::is_gone`] does): its gone window of watched time,
    /// or the window's maximum of wall-clock time since the owners last saw
    /// it, whichever comes first; then the dial grace.
    fn went_down(&mut self, id: u32) {
        let n = &self.nodes[id as usize];
        let w = n.uptime.gone_window(&self.policy.window);
        // Last seen: now if the owners are watching, else at the end of
        // their last online period if the node was up then.
        let seen = if self.sched.is_online(self.now) {
            Some(self.now)
        } else {
            let end = self.sched.last_online_end(self.now);
            (end > n.since).then_some(end).or(n.seen)
        };
        let by_watch = self.sched.advance(self.now, w + 1);
        let by_wall = seen.map_or(u64::MAX, |s| s + self.policy.window.max + 1);
        let t = by_watch.min(by_wall).max(self.now) + self.grace;
        self.nodes[id as usize].seen = seen;
        self.nodes[id as usize].gone_at = t;
        self.at(t, Ev::Gone(id, t));
    }

    fn depart(&mut self, id: u32) {
        if self.nodes[id as usize].departed {
            return;
        }
        self.departures += 1;
        self.nodes[id as usize].departed = true;
        self.refresh(id);
        let left = std::mem::take(&mut self.nodes[id as usize].leftover);
        self.add_leftover(-(left as i64));
        for o in self.objects_of(id) {
            self.check_loss(o);
        }
        let (class, subnet) = (
            self.nodes[id as usize].class,
            self.nodes[id as usize].subnet,
        );
        self.add_node(class, subnet);
    }

    /// The node's leases ran out unless renewed since `token`: our
    /// fragments there are deleted.
    fn expire(&mut self, id: u32, token: u64) {
        let n = &self.nodes[id as usize];
        if n.departed || n.renewed_at != token {
            return;
        }
        let epoch = n.epoch;
        let objs = self.objects_of(id);
        let mut count = 0;
        for &o in &objs {
            count += self.objects[o as usize]
                .frags
                .iter()
                .filter(|f| f.node == id && f.epoch == epoch)
                .count() as u64;
        }
        self.expiries += count;
        self.wipes += (count > 0) as u64;
        let n = &mut self.nodes[id as usize];
        n.epoch += 1;
        n.used = 0;
        let left = std::mem::take(&mut n.leftover);
        self.add_leftover(-(left as i64));
        for o in objs {
            self.check_loss(o);
        }
    }

    fn renew(&mut self, id: u32) {
        let n = &mut self.nodes[id as usize];
        n.renewed_at = self.now;
        let learned = n.known_epoch != n.epoch;
        n.known_epoch = n.epoch;
        self.at(self.now + self.lease, Ev::Expire(id, self.now));
        if learned {
            // The renewal said those fragments are gone.
            for o in self.objects_of(id) {
                self.evaluate(o);
            }
        }
    }

    /// The objects with a fragment on `id` (pruning stale entries).
    fn objects_of(&mut self, id: u32) -> Vec<u32> {
        let mut list = std::mem::take(&mut self.nodes[id as usize].objects);
        list.sort_unstable();
        list.dedup();
        let objects = &self.objects;
        list.retain(|o| {
            let obj = &objects[*o as usize];
            !obj.lost && obj.frags.iter().any(|f| f.node == id)
        });
        self.nodes[id as usize].objects = list.clone();
        list
    }

    fn alive(&self, f: &Frag) -> bool {
        let n = &self.nodes[f.node as usize];
        !n.departed && n.epoch == f.epoch
    }

    /// How the owners see a fragment's holder now.
    fn holder(&self, f: &Frag) -> Holder {
        let n = &self.nodes[f.node as usize];
        if n.known_epoch != f.epoch {
            Holder::Failed
        } else if n.up {
            Holder::Up
        } else if self.now >= n.gone_at {
            Holder::Gone
        } else {
            Holder::Away
        }
    }

    fn readable(&self, o: u32) -> bool {
        let obj = &self.objects[o as usize];
        obj.frags
            .iter()
            .filter(|f| self.alive(f) && self.nodes[f.node as usize].up)
            .count()
            >= self.cfg.k as usize
    }

    fn check_loss(&mut self, o: u32) {
        let alive = self.objects[o as usize]
            .frags
            .iter()
            .filter(|f| self.alive(f))
            .count() as u32;
        let obj = &mut self.objects[o as usize];
        if obj.lost {
            return;
        }
        if alive < self.cfg.k {
            obj.lost = true;
            self.lost += 1;
            self.object_secs += self.now as f64;
        } else if alive < self.policy.r && obj.below_since.is_none() {
            obj.below_since = Some(self.now);
        }
    }

    fn plan(&self, o: u32) -> policy::Plan {
        let states: Vec<(u32, Holder)> = self.objects[o as usize]
            .frags
            .iter()
            .map(|f| (f.index, self.holder(f)))
            .collect();
        policy::plan(&states, &self.policy)
    }

    /// The owners' repair pass for one object.
    fn evaluate(&mut self, o: u32) {
        let obj = &self.objects[o as usize];
        if obj.lost || obj.queued || !self.sched.is_online(self.now) {
            if !obj.lost && !obj.queued {
                let t = self.sched.next_online(self.now);
                self.at(t, Ev::Evaluate(o));
            }
            return;
        }
        let plan = self.plan(o);
        if plan.rebuild > 0 {
            self.objects[o as usize].queued = true;
            let done = match self.cfg.repair_delay {
                RepairDelay::Transfer => {
                    let owner = (o % OWNERS) as usize;
                    let bytes = self.cfg.object_bytes + plan.rebuild as u64 * self.frag_len;
                    let secs = bytes.div_ceil(self.cfg.repair_rate);
                    let start = self.busy_until[owner].max(self.now);
                    let done = self.sched.advance(start, secs);
                    self.busy_until[owner] = done;
                    done
                }
                RepairDelay::Exponential { mean_hours } => {
                    self.now + exp(&mut self.rng, mean_hours * HOUR as f64)
                }
            };
            self.at(done, Ev::RepairDone(o));
        } else if !plan.drop.is_empty() {
            self.apply(o, &plan, Vec::new());
        }
    }

    fn repair_done(&mut self, o: u32) {
        self.objects[o as usize].queued = false;
        if self.objects[o as usize].lost {
            return;
        }
        let plan = self.plan(o);
        if plan.rebuild == 0 {
            if !plan.drop.is_empty() {
                self.apply(o, &plan, Vec::new());
            }
            return;
        }
        // The repairer needs k fragments from holders that are up.
        if !self.readable(o) {
            let t = self.sched.advance(self.now, RETRY);
            self.at(t, Ev::Evaluate(o));
            return;
        }
        let exclude: Vec<u32> = self.objects[o as usize]
            .frags
            .iter()
            .map(|f| f.node)
            .collect();
        let pool = self.up_sample(plan.rebuild as usize * 8 + 16);
        let Some(targets) = self.pick(&pool, &exclude, plan.rebuild as usize) else {
            let t = self.sched.advance(self.now, RETRY);
            self.at(t, Ev::Evaluate(o));
            return;
        };
        let bytes = self.cfg.k as u64 * self.frag_len + plan.rebuild as u64 * self.frag_len;
        self.repair_bytes += bytes;
        self.day_repair_bytes += bytes;
        self.repairs += 1;
        self.rebuilt += plan.rebuild as u64;
        self.apply(o, &plan, targets);
    }

    /// A random sample of nodes that are up.
    fn up_sample(&mut self, want: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(want);
        for _ in 0..want * 20 {
            if out.len() >= want {
                break;
            }
            let id = self.rng.random_range(0..self.nodes.len()) as u32;
            let n = &self.nodes[id as usize];
            if n.up && !n.departed && !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }

    /// Drops and releases what `plan` says and adds fresh fragments on
    /// `targets`.
    fn apply(&mut self, o: u32, plan: &policy::Plan, targets: Vec<u32>) {
        let old = self.objects[o as usize].frags.clone();
        for &i in &plan.drop {
            let f = old[i];
            if !self.alive(&f) {
                continue;
            }
            let n = &self.nodes[f.node as usize];
            if plan.release.contains(&i) && n.up {
                continue; // cancelled at once
            }
            // Unrenewed from now on: it lives until the node's lease ends.
            let (until, epoch) = (n.renewed_at + self.lease, n.epoch);
            self.nodes[f.node as usize].leftover += self.frag_len;
            self.add_leftover(self.frag_len as i64);
            self.at(
                until.max(self.now),
                Ev::Leftover(f.node, self.frag_len, epoch),
            );
        }
        let obj = &mut self.objects[o as usize];
        for &i in &plan.drop {
            let n = &mut self.nodes[old[i].node as usize];
            n.used = n.used.saturating_sub(self.frag_len);
        }
        let mut frags: Vec<Frag> = old
            .iter()
            .enumerate()
            .filter(|(i, _)| !plan.drop.contains(i))
            .map(|(_, f)| *f)
            .collect();
        for node in &targets {
            frags.push(Frag {
                node: *node,
                index: obj.next_index,
                epoch: self.nodes[*node as usize].epoch,
            });
            obj.next_index += 1;
            self.nodes[*node as usize].objects.push(o);
            self.nodes[*node as usize].used += self.frag_len;
        }
        self.objects[o as usize].frags = frags;
        if self.cfg.record_decisions {
            self.decisions.push(Decision {
                time: self.now,
                object: o,
                rebuilt: targets.len() as u32,
                dropped: plan.drop.len() as u32,
            });
        }
        // Back at or above r fragments that truly survive: the repair
        // latency counts from when the object fell below.
        let alive = self.objects[o as usize]
            .frags
            .iter()
            .filter(|f| self.alive(f))
            .count() as u32;
        if alive >= self.policy.r {
            if let Some(since) = self.objects[o as usize].below_since.take() {
                self.latency_sum += (self.now - since) as f64;
                self.latency_count += 1;
            }
        }
    }

    fn add_leftover(&mut self, delta: i64) {
        self.leftover_area += self.leftover as f64 * (self.now - self.leftover_since) as f64;
        self.leftover_since = self.now;
        self.leftover = (self.leftover as i64 + delta).max(0) as u64;
        self.leftover_peak = self.leftover_peak.max(self.leftover);
    }

    fn day_point(&mut self) {
        let (mut alive, mut up, mut seen) = (0u64, 0u64, 0u64);
        for _ in 0..DAY_SAMPLE.min(self.objects.len()) {
            let o = self.rng.random_range(0..self.objects.len());
            if self.objects[o].lost {
                continue;
            }
            seen += 1;
            for f in &self.objects[o].frags {
                if self.alive(f) {
                    alive += 1;
                    up += self.nodes[f.node as usize].up as u64;
                }
            }
        }
        self.series.push(DayPoint {
            day: (self.now / DAY) as u32,
            fragments_alive: alive as f64 / seen.max(1) as f64,
            fragments_up: up as f64 / seen.max(1) as f64,
            repair_bytes: std::mem::take(&mut self.day_repair_bytes),
            leftover_bytes: self.leftover,
            lost_objects: self.lost,
        });
    }

    fn report(mut self) -> Report {
        self.now = self.end;
        self.add_leftover(0);
        let end = self.end as f64;
        let survivors = self.objects.iter().filter(|o| !o.lost).count() as f64;
        let object_secs = self.object_secs + survivors * end;
        let object_years = object_secs / (365.0 * DAY as f64);
        // Holders lost per node-day: departures, and lease wipes of nodes
        // that held our fragments.
        let node_days = self.cfg.nodes as f64 * end / DAY as f64;
        let departure_rate = (self.departures + self.wipes) as f64 / node_days.max(1e-9);
        let latency_days = if self.latency_count > 0 {
            self.latency_sum / self.latency_count as f64 / DAY as f64
        } else {
            self.policy.window.unknown as f64 / DAY as f64
        };
        let markov_loss = markov::loss_probability(
            self.cfg.k,
            self.cfg.n,
            self.policy.r,
            departure_rate,
            1.0 / latency_days.max(1e-6),
            365.0,
        );
        let years = end / (365.0 * DAY as f64);
        let user_bytes = self.cfg.objects as f64 * self.cfg.object_bytes as f64;
        let objects = self.cfg.objects as u64;
        let [lo, hi] = poisson99(self.lost);
        Report {
            mode: "model".into(),
            object_years,
            lost_objects: self.lost,
            lost_fraction: self.lost as f64 / objects.max(1) as f64,
            lost_fraction_ci99: wilson99(self.lost, objects),
            loss_per_object_year: self.lost as f64 / object_years.max(1e-12),
            loss_per_object_year_ci99: [lo / object_years.max(1e-12), hi / object_years.max(1e-12)],
            markov_loss_per_year: markov_loss,
            departure_rate_per_day: departure_rate,
            mean_repair_latency_hours: latency_days * 24.0,
            read_availability: self.read_hits as f64 / self.read_samples.max(1) as f64,
            availability_samples: self.read_samples,
            repairs: self.repairs,
            fragments_rebuilt: self.rebuilt,
            repair_bytes: self.repair_bytes,
            repair_bytes_per_node_per_year: self.repair_bytes as f64
                / self.cfg.nodes as f64
                / years.max(1e-12),
            repair_per_user_byte_year: self.repair_bytes as f64 / user_bytes / years.max(1e-12),
            leftover_bytes_peak: self.leftover_peak,
            leftover_bytes_mean: self.leftover_area / end.max(1.0),
            lease_expiries: self.expiries,
            node_departures: self.departures,
            series: self.series,
            decisions: self.decisions,
            config: self.cfg,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_counts_online_time() {
        let s = Schedule {
            period: 24 * HOUR,
            online: 8 * HOUR,
        };
        assert_eq!(s.online_between(0, DAY), 8 * HOUR);
        assert_eq!(s.online_between(7 * HOUR, 25 * HOUR), 2 * HOUR);
        // From 7:00, 3 online hours end at 2:00 the next day.
        assert_eq!(s.advance(7 * HOUR, 3 * HOUR), DAY + 2 * HOUR);
        assert_eq!(s.advance(10 * HOUR, 0), 10 * HOUR);
        assert_eq!(s.next_online(10 * HOUR), DAY);
        assert!(s.is_online(DAY + 1));
        assert_eq!(s.last_online_end(10 * HOUR), 8 * HOUR);
        assert_eq!(s.last_online_end(DAY + HOUR), 8 * HOUR);
    }
}
