//! The simulated nodes: the population (classes, subnets, space), their
//! sessions and departures, when the owners judge them gone, lease
//! renewal and expiry on the nodes, and picking nodes for new fragments.

use rand::Rng;

use crate::maint::Uptime;

use crate::placement::{self, Candidate};

use super::{exp, Ev, Frag, Node, Obj, Sim, Status, DAY, HOUR};

impl Sim {
    fn class(&self, node: u32) -> &crate::sim::NodeClass {
        &self.cfg.classes[self.nodes[node as usize].class as usize]
    }

    /// Adds a node of `class` in `subnet` at `slot`, in its stationary
    /// state (replaying a trace: up, its changes come from the trace).
    pub(super) fn add_node(&mut self, class: u16, subnet: u32, slot: u32) -> u32 {
        let c = self.cfg.classes[class as usize].clone();
        let replay = self.replay.is_some();
        let up = replay || self.rng.random_bool(c.availability.clamp(0.0, 1.0));
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            slot,
            class,
            subnet,
            natural_up: up,
            outages: 0,
            since: self.now,
            uptime: Uptime::default(),
            seen: None,
            was_gone: false,
            renewed_at: self.now,
            leftover: 0,
            left: Default::default(),
            expire_queued: false,
            used: 0,
            objects: Vec::new(),
        });
        self.status.push(Status {
            up,
            departed: false,
            gone_at: u64::MAX,
            epoch: 0,
            known_epoch: 0,
        });
        self.subnets[subnet as usize].push(id);
        if let Some(r) = &mut self.replay {
            r.slots[slot as usize] = id;
            return id;
        }
        self.schedule_flip(id);
        let rate = c.departures_per_month / (30.0 * DAY as f64);
        if rate > 0.0 {
            let t = self.now + exp(&mut self.rng, 1.0 / rate);
            self.at(t, Ev::Depart(id));
        }
        if !up {
            self.went_down(id, self.now);
        }
        id
    }

    pub(super) fn schedule_flip(&mut self, id: u32) {
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

    pub(super) fn populate(&mut self) {
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
            self.add_node(class as u16, i / subnet_size, i);
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
            .filter(|i| self.status[*i as usize].up)
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
            self.is_dirty.push(false);
            self.objects.push(Obj {
                next_index: frags.len() as u32,
                frags,
                lost: false,
                queued: false,
                below_since: None,
            });
        }
        self.first_events();
    }

    /// The events every run starts with: each node's lease end, the
    /// owners' schedule, the samples, and a pass over objects that start
    /// below the threshold.
    pub(super) fn first_events(&mut self) {
        for id in 0..self.nodes.len() as u32 {
            self.nodes[id as usize].expire_queued = true;
            self.at(self.lease, Ev::Expire(id));
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
    pub(super) fn pick(&mut self, pool: &[u32], exclude: &[u32], count: usize) -> Option<Vec<u32>> {
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
                    // The model's nodes fail independently.
                    domain: None,
                });
            }
        }
        if cands.len() < count {
            return None;
        }
        let any = placement::Spread::new(usize::MAX);
        placement::choose_with(&cands, count, self.frag_len, &any, &mut self.rng)
    }

    /// Applies a node's effective state (natural, outages, departure).
    pub(super) fn refresh(&mut self, id: u32) {
        let (n, s) = (&self.nodes[id as usize], self.status[id as usize]);
        let up = n.natural_up && n.outages == 0 && !s.departed;
        if up == s.up {
            return;
        }
        let watched = self.sched.online_between(n.since, self.now);
        let online = self.sched.is_online(self.now);
        let n = &mut self.nodes[id as usize];
        // The owners learn only what they watch: a node that was up only
        // while they were offline is still on the same absence.
        if watched > 0 {
            n.uptime.watched(s.up, watched);
        }
        self.status[id as usize].up = up;
        let up_since = std::mem::replace(&mut n.since, self.now);
        if up {
            if online {
                n.uptime.watched(true, 0);
            }
            self.status[id as usize].gone_at = u64::MAX;
            if std::mem::take(&mut n.was_gone) {
                // Its fragments count again: the owners see it at their
                // next pass.
                for o in self.objects_of(id) {
                    self.touch(o);
                }
            }
            let n = &self.nodes[id as usize];
            if self.sched.is_online(self.now) && self.now >= n.renewed_at + self.lease / 3 {
                self.renew(id);
            }
        } else {
            self.went_down(id, up_since);
        }
    }

    /// Schedules the time the owners judge a node that just went down
    /// gone (as [`Uptime::is_gone`] does): its gone window of watched time,
    /// or the window's maximum of wall-clock time since the owners last saw
    /// it, whichever comes first; then the dial grace, while online (the
    /// daemon dials when it sees the holder is past its window).
    fn went_down(&mut self, id: u32, up_since: u64) {
        let n = &self.nodes[id as usize];
        let until_gone = n.uptime.watch_until_gone(&self.policy.window);
        // Last seen: now if the owners are watching, else at the end of
        // their last online period if the node was up then.
        let seen = if self.sched.is_online(self.now) {
            Some(self.now)
        } else {
            let end = self.sched.last_online_end(self.now);
            (end > up_since).then_some(end).or(n.seen)
        };
        let by_watch = self.sched.advance(self.now, until_gone);
        let by_wall = seen.map_or(u64::MAX, |s| s + self.policy.window.max + 1);
        let t = self
            .sched
            .advance(by_watch.min(by_wall).max(self.now), self.grace);
        self.nodes[id as usize].seen = seen;
        self.status[id as usize].gone_at = t;
        self.at(t, Ev::Gone(id, t));
    }

    pub(super) fn depart(&mut self, id: u32) {
        if self.status[id as usize].departed {
            return;
        }
        self.departures += 1;
        self.status[id as usize].departed = true;
        self.refresh(id);
        self.nodes[id as usize].left.clear();
        let left = std::mem::take(&mut self.nodes[id as usize].leftover);
        self.add_leftover(-(left as i64));
        for o in self.objects_of(id) {
            self.check_loss(o);
        }
        let n = &self.nodes[id as usize];
        let (class, subnet, slot) = (n.class, n.subnet, n.slot);
        self.add_node(class, subnet, slot);
    }

    /// The node's leases ran out unless renewed meanwhile (then the event
    /// comes again at the new end): our fragments there are deleted.
    pub(super) fn expire(&mut self, id: u32) {
        let n = &mut self.nodes[id as usize];
        n.expire_queued = false;
        if self.status[id as usize].departed {
            return;
        }
        let end = n.renewed_at + self.lease;
        if self.now < end {
            n.expire_queued = true;
            self.at(end, Ev::Expire(id));
            return;
        }
        let epoch = self.status[id as usize].epoch;
        let objs = self.pruned_objects_of(id);
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
        self.status[id as usize].epoch += 1;
        n.used = 0;
        n.left.clear();
        let left = std::mem::take(&mut n.leftover);
        self.add_leftover(-(left as i64));
        for o in objs {
            self.check_loss(o);
        }
    }

    pub(super) fn renew(&mut self, id: u32) {
        let n = &mut self.nodes[id as usize];
        n.renewed_at = self.now;
        let s = &mut self.status[id as usize];
        let learned = s.known_epoch != s.epoch;
        s.known_epoch = s.epoch;
        if !std::mem::replace(&mut n.expire_queued, true) {
            self.at(self.now + self.lease, Ev::Expire(id));
        }
        if learned {
            // The renewal said those fragments are gone.
            for o in self.objects_of(id) {
                self.touch(o);
            }
        }
    }

    pub(super) fn alive(&self, f: &Frag) -> bool {
        let s = &self.status[f.node as usize];
        !s.departed && s.epoch == f.epoch
    }
}
