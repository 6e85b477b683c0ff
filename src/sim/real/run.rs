//! The steps of a `--real` run: the first upload, node churn, the owner's
//! mounts with a maintenance round per step, hourly read samples, and the
//! final checks that make the report.

use super::*;
use crate::maint::markov;
use crate::sim::RealChecks;

impl World {
    fn keys(&self) -> VaultKeys {
        let mut master = [0u8; 32];
        master[..8].copy_from_slice(&self.cfg.seed.to_be_bytes());
        VaultKeys::from_master(&master)
    }

    fn remote_config(&self) -> RemoteConfig {
        let c = &self.cfg;
        let mut r = RemoteConfig::new(c.k, c.n);
        r.lease_secs = (c.lease_days * DAY as f64) as u32;
        r.window = c.window;
        r.repair_threshold = c.r;
        r.repair_rate = c.repair_rate;
        r.publish_every = Duration::from_secs(1);
        r.read_wait = Duration::from_secs(5);
        r.background = false;
        r.record_repairs = c.record_decisions;
        // Every node is on 127.0.0.1: one domain would cap nothing.
        r.domains = crate::placement::DomainRule::Peer;
        r
    }

    /// Mounts the owner's vault: opens it, starts its node (on the same
    /// address as last time) and maintenance without timers of its own.
    pub(super) fn mount(&mut self) -> Result<(), String> {
        let vdir = self.dir.join("vault");
        if !vdir.exists() {
            std::fs::create_dir_all(&vdir).map_err(|e| e.to_string())?;
            Vault::create(&vdir, &self.keys(), 0, 0).map_err(|e| e.to_string())?;
        }
        let opts = VaultOptions {
            disk_cache: 0,
            ..Default::default()
        };
        let started = Instant::now();
        let vault = loop {
            match Vault::open(&vdir, "simulated", self.keys(), opts.clone()) {
                Ok(v) => break v,
                // The previous mount lets go of the store as it stops.
                Err(_) if started.elapsed() < Duration::from_secs(20) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return Err(format!("opening the vault: {e}")),
            }
        };
        let mut ncfg = NodeConfig::new(vdir.join("node"), 0);
        ncfg.clock = self.clock.clone();
        let vnode = self
            .net
            .join(&ncfg)
            .map_err(|e| format!("starting the vault's node: {e:#}"))?;
        // Watching starts now.
        vnode.observe_peers();
        let rt = runtime()?;
        let remote = {
            let _in = rt.enter();
            Remote::start_with(vault.clone(), vnode.clone(), self.remote_config())
        };
        self.mount = Some(Mount {
            rt,
            vault,
            vnode,
            remote,
        });
        Ok(())
    }

    /// Unmounts: maintenance and the vault's node stop.
    pub(super) fn unmount(&mut self) -> Result<(), String> {
        let Some(m) = self.mount.take() else {
            return Ok(());
        };
        let a = m.remote.activity();
        self.take_repairs(&m.remote);
        self.repairs += a.repaired_objects;
        self.rebuilt += a.fragments_rebuilt;
        self.repair_bytes += a.repair_bytes;
        self.sent += a.fragment_bytes_stored;
        m.vnode.stop();
        drop(m.remote);
        drop(m.rt);
        m.vault.shutdown().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Writes every object at the start, with every node up, and waits
    /// until they are all placed; then each node takes its first state.
    pub(super) fn upload(&mut self) -> Result<(), String> {
        self.mount()?;
        let m = self.mount.as_ref().expect("mounted");
        for i in 0..self.cfg.objects {
            let data = content(self.cfg.seed, i, self.cfg.object_bytes);
            let v = &m.vault;
            let (ino, _) = v
                .mknod(ROOT_INO, &name(i), Kind::File, 0o644, 0, 0, 0, None)
                .map_err(|e| e.to_string())?;
            v.open_file(ino).map_err(|e| e.to_string())?;
            v.write(ino, 0, &data).map_err(|e| e.to_string())?;
            v.release(ino).map_err(|e| e.to_string())?;
        }
        m.vault.sync_all().map_err(|e| e.to_string())?;
        let wait = m.remote.wait_synced(|_| {});
        m.rt.block_on(async { tokio::time::timeout(Duration::from_secs(300), wait).await })
            .map_err(|_| "the first upload did not finish in 5 minutes".to_string())??;
        if self.cfg.record_decisions {
            self.number_objects()?;
        }
        let now = self.clock.now();
        for i in 0..self.peers.len() {
            let c = self.cfg.classes[self.peers[i].class].clone();
            let up = self.rng.random_bool(c.availability.clamp(0.0, 1.0));
            self.peers[i].next_flip = now + self.session(c.availability, c.session_hours, up);
            if !up {
                self.stop(i);
                self.note(now, i, Change::Down);
            }
        }
        if !self.online(now) {
            self.unmount()?;
        }
        Ok(())
    }

    /// Numbers the data objects (by id) and records their first
    /// placements in the trace.
    fn number_objects(&mut self) -> Result<(), String> {
        let m = self.mount.as_ref().expect("mounted");
        let mut all = m.vault.placements().map_err(|e| e.to_string())?;
        all.sort_by_key(|(id, _)| id.0);
        self.trace.nodes = self.cfg.nodes;
        for (i, (id, p)) in all.iter().enumerate() {
            self.object_index.insert(*id, i as u32);
            let frags = p
                .fragments
                .iter()
                .map(|f| (self.slot(&f.peer), f.index))
                .collect();
            self.trace.placements.push(frags);
        }
        Ok(())
    }

    /// Moves the repairs `remote` carried out on data objects into the
    /// run's decisions.
    fn take_repairs(&mut self, remote: &Remote) {
        for r in remote.take_repairs() {
            let Some(&object) = self.object_index.get(&r.object) else {
                continue; // metadata
            };
            self.decisions.push(Decision {
                time: r.time - START,
                object,
                rebuilt: r.rebuilt,
                dropped: r.dropped,
                targets: r.targets.iter().map(|p| self.slot(p)).collect(),
            });
        }
    }

    /// The slot of the node with this peer id (`u32::MAX`, which a replay
    /// refuses, for one that never ran here).
    fn slot(&self, peer: &[u8]) -> u32 {
        self.slot_of.get(peer).copied().unwrap_or(u32::MAX)
    }

    /// A session's length: up `hours` on average, down as long as the
    /// availability makes it.
    fn session(&mut self, availability: f64, hours: f64, up: bool) -> u64 {
        if availability >= 1.0 {
            return u64::MAX / 2;
        }
        let up_mean = hours * HOUR as f64;
        let mean = if up {
            up_mean
        } else {
            up_mean * (1.0 - availability) / availability
        };
        exp(&mut self.rng, mean)
    }

    pub(super) fn online(&self, t: u64) -> bool {
        let period = (self.cfg.owner.period_hours * HOUR as f64) as u64;
        let online = (self.cfg.owner.online_hours * HOUR as f64) as u64;
        online >= period || (t - START) % period.max(1) < online
    }

    /// Departures and session flips due by `t`.
    pub(super) fn churn(&mut self, t: u64) -> Result<(), String> {
        for i in 0..self.peers.len() {
            if self.peers[i].departs_at <= t {
                self.stop(i);
                let _ = std::fs::remove_dir_all(&self.peers[i].dir);
                self.expired_departed += self.peers[i].expired;
                self.received_departed += self.peers[i].received;
                let fresh = self.fresh_peer(self.peers[i].class);
                self.peers[i] = fresh;
                self.departures += 1;
                self.start(i)?;
                self.note(t, i, Change::Depart);
                let c = self.cfg.classes[self.peers[i].class].clone();
                self.peers[i].next_flip = t + self.session(c.availability, c.session_hours, true);
            } else if self.peers[i].next_flip <= t {
                let up = !self.peers[i].up;
                if up {
                    self.start(i)?;
                    self.note(t, i, Change::Up);
                } else {
                    self.stop(i);
                    self.note(t, i, Change::Down);
                }
                let c = self.cfg.classes[self.peers[i].class].clone();
                self.peers[i].next_flip = t + self.session(c.availability, c.session_hours, up);
            }
        }
        Ok(())
    }

    /// The owner's side of a step, after its churn: unmount when the
    /// online hours are over; while mounted, a maintenance round (the
    /// mount and the uptime count start the step, in [`run`]).
    pub(super) fn owner(&mut self, t: u64) -> Result<(), String> {
        if !self.online(t) {
            return self.unmount();
        }
        if let Some(m) = &self.mount {
            m.rt.block_on(m.remote.maintain());
        }
        Ok(())
    }

    /// Peer ids (bytes) of the running nodes.
    fn up_ids(&self) -> HashSet<Vec<u8>> {
        self.peers
            .iter()
            .filter_map(|p| p.node.as_ref())
            .map(|n| n.peer_id().to_bytes())
            .collect()
    }

    /// Every hour, while mounted: is each object readable from the nodes
    /// that are up?
    pub(super) fn hourly(&mut self) {
        let Some(m) = &self.mount else { return };
        let Ok(all) = m.vault.placements() else {
            return;
        };
        let up = self.up_ids();
        for (_, p) in &all {
            let on_up = p.fragments.iter().filter(|f| up.contains(&f.peer)).count();
            self.read_hits += (on_up >= p.k as usize) as u64;
            self.read_samples += 1;
        }
    }

    pub(super) fn day_point(&mut self, day: u32) {
        let repair_bytes = self.repair_bytes
            + self
                .mount
                .as_ref()
                .map_or(0, |m| m.remote.activity().repair_bytes);
        let day_bytes = repair_bytes.saturating_sub(self.series_bytes);
        self.series_bytes = repair_bytes;
        let up = self.up_ids();
        let (mut alive, mut on_up, mut objects) = (0u64, 0u64, 0u64);
        if let Some(Ok(all)) = self.mount.as_ref().map(|m| m.vault.placements()) {
            let ids: HashSet<Vec<u8>> = self.peer_ids();
            for (_, p) in &all {
                objects += 1;
                alive += p.fragments.iter().filter(|f| ids.contains(&f.peer)).count() as u64;
                on_up += p.fragments.iter().filter(|f| up.contains(&f.peer)).count() as u64;
            }
        }
        self.series.push(DayPoint {
            day,
            fragments_alive: alive as f64 / objects.max(1) as f64,
            fragments_up: on_up as f64 / objects.max(1) as f64,
            repair_bytes: day_bytes,
            leftover_bytes: 0,
            lost_objects: 0,
        });
    }

    /// Peer ids (bytes) of every node that has not departed (running or
    /// not; only running ones are known by id).
    fn peer_ids(&self) -> HashSet<Vec<u8>> {
        self.peers.iter().filter_map(|p| p.id.clone()).collect()
    }

    /// Every node comes back; every object is read and compared, every
    /// placed fragment looked for in its holder's store; then the report.
    pub(super) fn finish(mut self) -> Result<Report, String> {
        for i in 0..self.peers.len() {
            if self.peers[i].node.is_none() {
                self.start(i)?;
            }
        }
        if self.mount.is_none() {
            self.mount()?;
        }
        let mut checks = self.check()?;
        self.unmount()?;
        checks.bytes_sent = self.sent;
        checks.bytes_received = self.received_departed
            + self
                .peers
                .iter()
                .map(|p| {
                    p.received
                        + p.node
                            .as_ref()
                            .map_or(0, |n| n.counters().bytes_in.load(Ordering::Relaxed))
                })
                .sum::<u64>();
        let expired: u64 = self.expired_departed
            + self
                .peers
                .iter()
                .map(|p| p.expired + p.node.as_ref().map_or(0, |n| n.expired_fragments()))
                .sum::<u64>();
        for p in &mut self.peers {
            if let Some(n) = p.node.take() {
                n.stop();
            }
        }
        Ok(self.report(checks, expired))
    }

    /// The end-of-run checks (mounted, every node up).
    fn check(&self) -> Result<RealChecks, String> {
        let m = self.mount.as_ref().expect("mounted");
        let mut c = RealChecks::default();
        for i in 0..self.cfg.objects {
            let want = content(self.cfg.seed, i, self.cfg.object_bytes);
            let got = m
                .vault
                .lookup(ROOT_INO, &name(i))
                .and_then(|(ino, _)| m.vault.read(ino, 0, want.len()));
            match got {
                Ok(bytes) if bytes == want => c.objects_read_back += 1,
                _ => c.objects_lost += 1,
            }
        }
        let all = m.vault.all_placements().map_err(|e| e.to_string())?;
        let mut wanted: HashMap<Vec<u8>, Vec<crate::coder::FragmentId>> = HashMap::new();
        for (_, p) in &all {
            for f in &p.fragments {
                wanted.entry(f.peer.clone()).or_default().push(f.id);
            }
        }
        for p in &self.peers {
            let Some(n) = &p.node else { continue };
            let held = n.fragment_count();
            let ids = wanted.remove(&n.peer_id().to_bytes()).unwrap_or_default();
            let has = n.holds(&ids)?;
            let found = has.iter().filter(|h| **h).count() as u64;
            c.placed_fragments += ids.len() as u64;
            c.placed_fragments_missing += ids.len() as u64 - found;
            c.leftover_fragments += held.saturating_sub(found);
        }
        // Fragments on departed holders are gone with them.
        c.placed_on_departed = wanted.values().map(|v| v.len() as u64).sum();
        Ok(c)
    }

    fn report(mut self, checks: RealChecks, expired: u64) -> Report {
        let cfg = &self.cfg;
        let years = cfg.days / 365.0;
        let object_years = cfg.objects as f64 * years;
        let lost = checks.objects_lost;
        let [lo, hi] = poisson99(lost);
        let node_days = cfg.nodes as f64 * cfg.days;
        let departure_rate = self.departures as f64 / node_days.max(1e-9);
        let window_days = cfg.window.unknown as f64 / DAY as f64;
        let r = cfg.policy().r;
        let user_bytes = cfg.objects as f64 * cfg.object_bytes as f64;
        let frag = cfg.object_bytes as f64 / cfg.k as f64;
        Report {
            mode: "real".into(),
            object_years,
            lost_objects: lost,
            lost_fraction: lost as f64 / cfg.objects.max(1) as f64,
            lost_fraction_ci99: wilson99(lost, cfg.objects as u64),
            loss_per_object_year: lost as f64 / object_years.max(1e-12),
            loss_per_object_year_ci99: [lo / object_years.max(1e-12), hi / object_years.max(1e-12)],
            markov_loss_per_year: markov::loss_probability(
                cfg.k,
                cfg.n,
                r,
                departure_rate,
                1.0 / window_days.max(1e-6),
                365.0,
            ),
            departure_rate_per_day: departure_rate,
            mean_repair_latency_hours: window_days * 24.0,
            read_availability: self.read_hits as f64 / self.read_samples.max(1) as f64,
            availability_samples: self.read_samples,
            repairs: self.repairs,
            fragments_rebuilt: self.rebuilt,
            repair_bytes: self.repair_bytes,
            repair_bytes_per_node_per_year: self.repair_bytes as f64
                / cfg.nodes as f64
                / years.max(1e-12),
            repair_per_user_byte_year: self.repair_bytes as f64 / user_bytes / years.max(1e-12),
            leftover_bytes_peak: (checks.leftover_fragments as f64 * frag) as u64,
            leftover_bytes_mean: checks.leftover_fragments as f64 * frag,
            lease_expiries: expired,
            node_departures: self.departures,
            series: self.series,
            decisions: std::mem::take(&mut self.decisions),
            trace: self
                .cfg
                .record_decisions
                .then(|| std::mem::take(&mut self.trace)),
            replay: None,
            real: Some(checks),
            config: self.cfg,
        }
    }
}
