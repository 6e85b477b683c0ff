//! Measurements: the daily series, the availability sample and the final
//! report (with confidence bounds).

use rand::Rng;

use super::super::{poisson99, wilson99, DayPoint, Report};
use crate::maint::markov;

use super::{Sim, DAY, DAY_SAMPLE};

impl Sim {
    /// A random sample of nodes that are up.
    pub(super) fn up_sample(&mut self, want: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(want);
        for _ in 0..want * 20 {
            if out.len() >= want {
                break;
            }
            let id = self.rng.random_range(0..self.nodes.len()) as u32;
            if self.status[id as usize].reachable() && !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }

    pub(super) fn day_point(&mut self) {
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
                    up += self.status[f.node as usize].up as u64;
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

    pub(super) fn report(mut self) -> Report {
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
            trace: None,
            replay: None,
            real: None,
            config: self.cfg,
        }
    }
}
