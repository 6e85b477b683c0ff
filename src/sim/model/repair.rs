//! The owners' side of an object: which holders count, loss and read
//! checks, lazy repair decided by [`crate::maint::policy::plan`] and
//! carried out through the owner's bandwidth-limited queue, leftovers.

use super::super::{Decision, RepairDelay};
use crate::maint::{policy, Holder};

use super::{exp, Ev, Frag, Sim, HOUR, OWNERS};

/// Batches of marked objects at least this large are checked in parallel.
pub(super) const PARALLEL_BATCH: usize = 512;

impl Sim {
    /// The objects with a fragment on `id`, perhaps with a few stale or
    /// repeated entries (callers look at each object's own fragments);
    /// pruned when it grows past twice what the node holds.
    pub(super) fn objects_of(&mut self, id: u32) -> Vec<u32> {
        let n = &self.nodes[id as usize];
        let live = (n.used / self.frag_len.max(1)) as usize;
        if n.objects.len() > 2 * live + 64 {
            return self.pruned_objects_of(id);
        }
        n.objects.clone()
    }

    /// The objects with a fragment on `id`, each once (pruning stale
    /// entries).
    pub(super) fn pruned_objects_of(&mut self, id: u32) -> Vec<u32> {
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

    /// How the owners see a fragment's holder now.
    fn holder(&self, f: &Frag) -> Holder {
        let s = &self.status[f.node as usize];
        if s.known_epoch != f.epoch {
            Holder::Failed
        } else if s.up {
            Holder::Up
        } else if self.now >= s.gone_at {
            Holder::Gone
        } else {
            Holder::Away
        }
    }

    pub(super) fn readable(&self, o: u32) -> bool {
        let obj = &self.objects[o as usize];
        obj.frags
            .iter()
            .filter(|f| self.alive(f) && self.status[f.node as usize].up)
            .count()
            >= self.cfg.k as usize
    }

    pub(super) fn check_loss(&mut self, o: u32) {
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

    /// Marks an object for the owners' next pass (now if they are
    /// online, else when they next are).
    pub(super) fn touch(&mut self, o: u32) {
        if !std::mem::replace(&mut self.is_dirty[o as usize], true) {
            self.dirty.push(o);
        }
        if !self.drain_queued {
            self.drain_queued = true;
            let t = self.pass_time(self.now);
            self.at(t, Ev::Drain);
        }
    }

    /// The owners' pass over the marked objects, in the order of their
    /// ids (as the daemon goes through its placements; in memory order,
    /// which keeps a pass over many objects out of the cache misses that
    /// bound the model's speed).
    ///
    /// Most marked objects need nothing (their plan is empty), and telling
    /// which is most of the model's work: that check runs first for the
    /// whole batch, on every core (it reads only the objects' holders,
    /// which no evaluation changes), and only the others are evaluated, in
    /// order. The result is the same as evaluating each in turn.
    pub(super) fn drain(&mut self) {
        self.drain_queued = false;
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        let settled = if self.sched.is_online(self.now) {
            self.settled_each(&dirty)
        } else {
            Vec::new()
        };
        for (i, o) in dirty.into_iter().enumerate() {
            self.is_dirty[o as usize] = false;
            if settled.get(i) != Some(&true) {
                self.evaluate(o);
            }
        }
    }

    /// [`settled`](Self::settled) for each of `objects`: split over the
    /// cores in halves of at least `PARALLEL_BATCH / 2` (a smaller batch
    /// stays on this thread).
    pub(super) fn settled_each(&self, objects: &[u32]) -> Vec<bool> {
        use rayon::prelude::*;
        objects
            .par_iter()
            .with_min_len(PARALLEL_BATCH / 2)
            .map(|o| self.settled(*o))
            .collect()
    }

    /// Whether the plan for `o` would be empty (most passes over most
    /// objects), without building it.
    pub(super) fn settled(&self, o: u32) -> bool {
        let mut t = policy::Tally::default();
        for f in &self.objects[o as usize].frags {
            t.add(self.holder(f));
        }
        t.settled(&self.policy)
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
    pub(super) fn evaluate(&mut self, o: u32) {
        let obj = &self.objects[o as usize];
        if obj.lost || obj.queued {
            return;
        }
        if !self.sched.is_online(self.now) {
            self.touch(o);
            return;
        }
        if self.settled(o) {
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

    pub(super) fn repair_done(&mut self, o: u32) {
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
            let t = self.sched.advance(self.now, self.retry);
            self.at(t, Ev::Evaluate(o));
            return;
        }
        let exclude: Vec<u32> = self.objects[o as usize]
            .frags
            .iter()
            .map(|f| f.node)
            .collect();
        let replayed = self.replayed_targets(o, plan.rebuild, &exclude);
        let targets = match replayed {
            Some(t) => Some(t),
            None => {
                let pool = self.up_sample(plan.rebuild as usize * 8 + 16);
                self.pick(&pool, &exclude, plan.rebuild as usize)
            }
        };
        let Some(targets) = targets else {
            let t = self.sched.advance(self.now, self.retry);
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

    /// Drops and releases what `plan` says and adds fresh fragments on
    /// `targets`.
    fn apply(&mut self, o: u32, plan: &policy::Plan, targets: Vec<u32>) {
        let old = self.objects[o as usize].frags.clone();
        for &i in &plan.drop {
            let f = old[i];
            if !self.alive(&f) {
                continue;
            }
            let (n, s) = (&self.nodes[f.node as usize], &self.status[f.node as usize]);
            if plan.release.contains(&i) && s.up {
                continue; // cancelled at once
            }
            // Unrenewed from now on: it lives until the node's lease ends.
            let (until, epoch) = ((n.renewed_at + self.lease).max(self.now), s.epoch);
            let len = self.frag_len;
            let n = &mut self.nodes[f.node as usize];
            n.leftover += len;
            match n.left.back_mut() {
                Some((u, bytes)) if *u == until => *bytes += len,
                _ => {
                    n.left.push_back((until, len));
                    self.at(until, Ev::Leftover(f.node, epoch));
                }
            }
            self.add_leftover(len as i64);
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
                epoch: self.status[*node as usize].epoch,
            });
            obj.next_index += 1;
            self.nodes[*node as usize].objects.push(o);
            self.nodes[*node as usize].used += self.frag_len;
        }
        self.objects[o as usize].frags = frags;
        if self.cfg.record_decisions {
            let targets = targets
                .iter()
                .map(|t| self.nodes[*t as usize].slot)
                .collect();
            self.decisions.push(Decision {
                time: self.now,
                object: o,
                rebuilt: plan.rebuild,
                dropped: plan.drop.len() as u32,
                targets,
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

    pub(super) fn add_leftover(&mut self, delta: i64) {
        self.leftover_area += self.leftover as f64 * (self.now - self.leftover_since) as f64;
        self.leftover_since = self.now;
        self.leftover = (self.leftover as i64 + delta).max(0) as u64;
        self.leftover_peak = self.leftover_peak.max(self.leftover);
    }
}
