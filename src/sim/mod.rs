//! The churn simulator: months of peers coming and going, in seconds,
//! driven by the same decision code the daemon uses
//! ([`crate::maint::policy`] for when to repair and what to drop,
//! [`crate::maint::history`] for when a holder is gone,
//! [`crate::placement`] for where fresh fragments go).
//!
//! `--model` ([`model`]) tracks up to millions of objects on thousands of
//! simulated nodes without payloads: an event queue of node sessions,
//! departures, subnet outages, the owner's mount schedule, lease renewals
//! and expiries, and repairs limited by the owner's bandwidth. Its output is
//! a [`Report`] (JSON) and a plot ([`plot`]); [`crate::maint::markov`] is the closed form
//! it is checked against.
//!
//! `--real` ([`real`]) runs the same inputs on a few real nodes in one
//! process, with real bytes and the daemon's own maintenance code, under
//! a simulated clock, and checks at the end what the model cannot: every
//! object read back byte for byte, every placed fragment in its holder's
//! store.

pub mod model;
pub mod plot;
pub mod real;

use serde::{Deserialize, Serialize};

use crate::maint::GoneWindow;

/// A kind of node in the simulated network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeClass {
    pub name: String,
    /// Fraction of the nodes in this class.
    pub share: f64,
    /// Fraction of the time a node is up (1 means never down).
    pub availability: f64,
    /// Mean length of an up session, hours (down sessions follow from the
    /// availability).
    pub session_hours: f64,
    /// Permanent departures per node per month (the node and its disk are
    /// gone; a new node of the class takes its place).
    pub departures_per_month: f64,
}

/// Correlated outages: nodes are grouped into subnets that go down
/// together (a home router, an ISP). `per_month = 0` turns them off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outages {
    pub subnet_size: u32,
    /// Outages per subnet per month.
    pub per_month: f64,
    pub hours: f64,
}

/// When the owner's vault is mounted (it renews, audits and repairs only
/// then): `online_hours` at the start of every `period_hours`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerSchedule {
    pub period_hours: f64,
    pub online_hours: f64,
}

/// How long a repair takes once decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RepairDelay {
    /// Fetching k fragments and uploading the fresh ones at the owner's
    /// `repair_rate`, one repair after another, while the owner is online
    /// (what the daemon does).
    Transfer,
    /// Exponentially distributed with this mean, in hours (matches the
    /// Markov model exactly; used to check the simulator against it).
    Exponential { mean_hours: f64 },
}

/// Everything a simulation run depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    pub seed: u64,
    pub days: f64,
    pub nodes: u32,
    pub objects: u32,
    pub k: u32,
    pub n: u32,
    /// Repair threshold (default: two thirds of the way from k to n).
    pub r: Option<u32>,
    pub window: GoneWindow,
    /// Counting fragments kept beyond n before releasing the surplus
    /// (default: the daemon's, n - k).
    pub keep_extra: Option<u32>,
    pub lease_days: f64,
    /// Sealed object size (one chunk).
    pub object_bytes: u64,
    /// Owner's repair bandwidth, bytes per second.
    pub repair_rate: u64,
    /// Space the nodes donate, in all, as a multiple of what every
    /// object's n fragments take (spread evenly over the nodes).
    pub space_factor: f64,
    pub repair_delay: RepairDelay,
    pub owner: OwnerSchedule,
    pub classes: Vec<NodeClass>,
    pub outages: Outages,
    /// Read availability is sampled this often while the owner is online.
    pub sample_hours: f64,
    /// Keep every repair decision in the report (for trace comparisons).
    pub record_decisions: bool,
}

impl Default for SimConfig {
    /// The realistic mix of the issue: a few always-on nodes at 98%, most
    /// at 20-80%, 5% of nodes leaving for good each month, subnet outages,
    /// the owner online 8 hours a day, the vault's defaults (10 of 16,
    /// repair at 13, 30-day leases).
    fn default() -> Self {
        let class = |name: &str, share, availability, session_hours| NodeClass {
            name: name.into(),
            share,
            availability,
            session_hours,
            departures_per_month: 0.05,
        };
        SimConfig {
            seed: 1,
            days: 365.0,
            nodes: 10_000,
            objects: 1_000_000,
            k: 10,
            n: 16,
            r: None,
            window: GoneWindow::DEFAULT,
            keep_extra: None,
            lease_days: 30.0,
            object_bytes: 4 << 20,
            repair_rate: 4 << 20,
            space_factor: 2.0,
            repair_delay: RepairDelay::Transfer,
            owner: OwnerSchedule {
                period_hours: 24.0,
                online_hours: 8.0,
            },
            classes: vec![
                class("always-on", 0.15, 0.98, 240.0),
                class("desktop", 0.45, 0.6, 10.0),
                class("laptop", 0.40, 0.3, 3.0),
            ],
            outages: Outages {
                subnet_size: 50,
                per_month: 0.5,
                hours: 6.0,
            },
            sample_hours: 1.0,
            record_decisions: false,
        }
    }
}

impl SimConfig {
    /// The defaults of `--real`: the realistic mix on 16 real nodes, 32
    /// objects of 512 KiB at 4 of 8, for 30 days.
    pub fn real_default() -> SimConfig {
        SimConfig {
            days: 30.0,
            nodes: 16,
            objects: 32,
            k: 4,
            n: 8,
            object_bytes: 512 << 10,
            ..SimConfig::default()
        }
    }

    /// Checks the parameters; the error names the bad one.
    pub fn validate(&self) -> Result<(), String> {
        crate::config::validate_kn(self.k, self.n)?;
        self.policy().validate()?;
        if self.classes.is_empty() {
            return Err("at least one node class is needed".into());
        }
        for c in &self.classes {
            if !(c.availability > 0.0 && c.availability <= 1.0) {
                return Err(format!("class {}: availability must be in (0, 1]", c.name));
            }
            if c.session_hours <= 0.0 || c.share < 0.0 || c.departures_per_month < 0.0 {
                return Err(format!(
                    "class {}: session, share and departures must be positive",
                    c.name
                ));
            }
        }
        if self.classes.iter().map(|c| c.share).sum::<f64>() <= 0.0 {
            return Err("the class shares sum to zero".into());
        }
        if (self.nodes as u64) < self.n as u64 * 2 {
            return Err(format!(
                "at least {} nodes are needed for n = {}",
                self.n * 2,
                self.n
            ));
        }
        if self.outages.subnet_size == 0 || self.outages.per_month < 0.0 || self.outages.hours < 0.0
        {
            return Err(
                "outages: subnet_size must be positive, per_month and hours not negative".into(),
            );
        }
        if self.days <= 0.0 || self.lease_days <= 0.0 || self.sample_hours <= 0.0 {
            return Err("days, lease_days and sample_hours must be positive".into());
        }
        if self.owner.online_hours <= 0.0 || self.owner.period_hours <= 0.0 {
            return Err("the owner must be online some of the time".into());
        }
        if self.space_factor < 1.0 {
            return Err("space_factor below 1 cannot hold every fragment".into());
        }
        if self.repair_rate == 0 || self.object_bytes == 0 {
            return Err("repair_rate and object_bytes must be positive".into());
        }
        Ok(())
    }

    pub fn policy(&self) -> crate::maint::Policy {
        let mut p = crate::maint::Policy::new(self.k, self.n);
        if let Some(r) = self.r {
            p.r = r;
        }
        p.window = self.window;
        if let Some(x) = self.keep_extra {
            p.keep_extra = x;
        }
        p
    }
}

/// One repair decision (kept when `record_decisions` is set).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Seconds since the start of the run.
    pub time: u64,
    pub object: u32,
    pub rebuilt: u32,
    pub dropped: u32,
    /// The node slots the fresh fragments went to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<u32>,
}

/// A change of one node slot in a [`Trace`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Up,
    Down,
    /// The node leaves for good with its disk; a fresh node (new
    /// identity, empty store, up) takes its slot.
    Depart,
}

/// One event of a [`Trace`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Seconds since the start of the run.
    pub time: u64,
    pub node: u32,
    pub change: Change,
}

/// What happened to the nodes of a run, for replaying it: `--real` records
/// one (with `record_decisions`), and the model replays it
/// ([`model::replay`]) to compare the repair decisions both made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    /// Node slots (every node starts up).
    pub nodes: u32,
    /// Each object's first placement, as (node slot, fragment index).
    pub placements: Vec<Vec<(u32, u32)>>,
    /// Node changes, in time order.
    pub events: Vec<TraceEvent>,
}

/// How two runs' repair decisions compare ([`compare_decisions`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionMatch {
    /// Decisions both made: same object, same fragments rebuilt and
    /// dropped, within the time tolerance.
    pub matched: u64,
    /// Made only by the first run, or only by the second.
    pub only_first: Vec<Decision>,
    pub only_second: Vec<Decision>,
    /// The largest time difference among matched decisions, seconds.
    pub max_skew: u64,
}

impl DecisionMatch {
    pub fn same(&self) -> bool {
        self.only_first.is_empty() && self.only_second.is_empty()
    }
}

/// Pairs the decisions of two runs object by object, in time order:
/// each decision of `a` matches the earliest unmatched one of `b` on the
/// same object with the same counts within `tolerance` seconds.
pub fn compare_decisions(a: &[Decision], b: &[Decision], tolerance: u64) -> DecisionMatch {
    let mut out = DecisionMatch::default();
    let mut used = vec![false; b.len()];
    let mut by_object: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (i, e) in b.iter().enumerate() {
        by_object.entry(e.object).or_default().push(i);
    }
    for d in a {
        let candidates = by_object.get(&d.object).map_or(&[][..], |v| &v[..]);
        let found = candidates.iter().copied().find(|&i| {
            let e = &b[i];
            !used[i]
                && e.rebuilt == d.rebuilt
                && e.dropped == d.dropped
                && e.time.abs_diff(d.time) <= tolerance
        });
        match found {
            Some(i) => {
                used[i] = true;
                out.matched += 1;
                out.max_skew = out.max_skew.max(b[i].time.abs_diff(d.time));
            }
            None => out.only_first.push(d.clone()),
        }
    }
    out.only_second = b
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(d, _)| d.clone())
        .collect();
    out
}

/// One day of the run, for the plot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DayPoint {
    pub day: u32,
    /// Mean surviving fragments per tracked object.
    pub fragments_alive: f64,
    /// Mean fragments per object on holders that are up.
    pub fragments_up: f64,
    pub repair_bytes: u64,
    pub leftover_bytes: u64,
    pub lost_objects: u64,
}

/// What a run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub mode: String,
    pub config: SimConfig,
    pub object_years: f64,
    pub lost_objects: u64,
    /// Fraction of objects lost within the run, with a 99% interval.
    pub lost_fraction: f64,
    pub lost_fraction_ci99: [f64; 2],
    /// Losses per object-year, with a 99% interval.
    pub loss_per_object_year: f64,
    pub loss_per_object_year_ci99: [f64; 2],
    /// The Markov model's yearly loss for the measured departure rate and
    /// mean time to repair (what the run cannot measure when losses are
    /// rarer than one in its object-years).
    pub markov_loss_per_year: f64,
    pub departure_rate_per_day: f64,
    pub mean_repair_latency_hours: f64,
    /// Fraction of samples (random objects at random times while the owner
    /// was online) with at least k fragments on holders that were up.
    pub read_availability: f64,
    pub availability_samples: u64,
    pub repairs: u64,
    pub fragments_rebuilt: u64,
    pub repair_bytes: u64,
    pub repair_bytes_per_node_per_year: f64,
    /// Repair traffic per byte the owner stored, per year.
    pub repair_per_user_byte_year: f64,
    pub leftover_bytes_peak: u64,
    pub leftover_bytes_mean: f64,
    /// Fragments destroyed because their lease ran out.
    pub lease_expiries: u64,
    pub node_departures: u64,
    pub series: Vec<DayPoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<Decision>,
    /// The node changes of a `--real` run with `record_decisions`, to
    /// replay through the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Trace>,
    /// Replaying a trace: the recorded decisions (first) against the
    /// model's (second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<DecisionMatch>,
    /// What only `--real` checks, with real bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real: Option<RealChecks>,
}

/// The end-of-run checks of `--real`: every node back up, every object
/// read and compared, every placed fragment looked for in its holder's
/// store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealChecks {
    /// Objects read back byte for byte.
    pub objects_read_back: u64,
    /// Objects that could not be read, or read wrong.
    pub objects_lost: u64,
    /// Fragments the placements name on nodes still in the network.
    pub placed_fragments: u64,
    /// Of those, fragments their holder does not have.
    pub placed_fragments_missing: u64,
    /// Fragments placements still name on nodes that departed (spares
    /// that nobody counts, or not yet dropped).
    pub placed_on_departed: u64,
    /// Fragments on nodes that no placement names (leases not yet run
    /// out or cancelled).
    pub leftover_fragments: u64,
    /// Fragment bytes the vault's peers acknowledged storing, and the
    /// bytes the nodes stored: equal unless a transfer was lost.
    #[serde(default)]
    pub bytes_sent: u64,
    #[serde(default)]
    pub bytes_received: u64,
}

/// An exponentially distributed number of seconds with this mean (at
/// least 1).
pub(crate) fn exp(rng: &mut rand::rngs::StdRng, mean: f64) -> u64 {
    use rand::Rng;
    let u: f64 = rng.random::<f64>().max(1e-300);
    (-u.ln() * mean).round().max(1.0) as u64
}

/// A 99% interval for a proportion (Wilson score).
pub fn wilson99(hits: u64, trials: u64) -> [f64; 2] {
    if trials == 0 {
        return [0.0, 1.0];
    }
    let z = 2.5758f64;
    let n = trials as f64;
    let p = hits as f64 / n;
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / (1.0 + z * z / n);
    [(centre - half).max(0.0), (centre + half).min(1.0)]
}

/// A two-sided 99% interval for a Poisson count (Wilson-Hilferty: within
/// 1% of the exact chi-square bounds; about `[0, 5.3]` for no events).
pub fn poisson99(count: u64) -> [f64; 2] {
    let z = 2.5758f64;
    let x = count as f64;
    let lower = if count == 0 {
        0.0
    } else {
        x * (1.0 - 1.0 / (9.0 * x) - z / (3.0 * x.sqrt())).powi(3)
    };
    let y = x + 1.0;
    let upper = y * (1.0 - 1.0 / (9.0 * y) + z / (3.0 * y.sqrt())).powi(3);
    [lower.max(0.0), upper]
}
