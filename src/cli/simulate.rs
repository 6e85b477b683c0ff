//! `drizzle simulate`: the churn simulator from the command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::sim::{self, SimConfig};

/// Arguments of `drizzle simulate`.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Many nodes and objects, no payloads.
    #[arg(long, conflicts_with = "real")]
    pub model: bool,
    /// A few real nodes in this process (real stores, real bytes, the
    /// daemon's maintenance code) under simulated time.
    #[arg(long)]
    pub real: bool,
    /// Where `--real` keeps its nodes' and vault's data (default: a
    /// temporary directory, removed at the end).
    #[arg(long, value_name = "DIR", requires = "real")]
    pub data_dir: Option<PathBuf>,
    /// Replay the node trace of a `--real` report (made with
    /// `--record-decisions`) through the model, with that report's
    /// parameters, and compare the repair decisions both made.
    #[arg(
        long,
        value_name = "REPORT",
        requires = "model",
        conflicts_with = "params"
    )]
    pub replay: Option<PathBuf>,
    /// Keep every repair decision in the report (and, with `--real`, the
    /// trace of node changes, for `--replay`).
    #[arg(long)]
    pub record_decisions: bool,
    /// Parameters in a TOML file (fields of the report's `config`); flags
    /// override it.
    #[arg(long, value_name = "FILE")]
    pub params: Option<PathBuf>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub days: Option<f64>,
    #[arg(long)]
    pub nodes: Option<u32>,
    #[arg(long)]
    pub objects: Option<u32>,
    #[arg(long)]
    pub k: Option<u32>,
    #[arg(long)]
    pub n: Option<u32>,
    /// Repair threshold (default: two thirds of the way from k to n).
    #[arg(long)]
    pub r: Option<u32>,
    /// The same gone window for every holder, in hours (default: per
    /// holder, from its uptime history).
    #[arg(long, value_name = "HOURS")]
    pub window_hours: Option<f64>,
    /// Hours a day the owners are online.
    #[arg(long, value_name = "HOURS")]
    pub owner_hours: Option<f64>,
    /// Write report.json and report.svg into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the report as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
}

impl SimulateArgs {
    /// The configuration: defaults, then the file, then the flags.
    pub fn sim_config(&self) -> anyhow::Result<SimConfig> {
        let mut cfg = match &self.params {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("bad simulation config {}", p.display()))?
            }
            None if self.real => SimConfig::real_default(),
            None => SimConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $(if let Some(v) = self.$f { cfg.$f = v; })* };
        }
        set!(seed, days, nodes, objects, k, n);
        cfg.record_decisions |= self.record_decisions;
        if self.r.is_some() {
            cfg.r = self.r;
        }
        if let Some(h) = self.window_hours {
            cfg.window = crate::maint::GoneWindow::fixed((h * 3600.0) as u64);
        }
        if let Some(h) = self.owner_hours {
            cfg.owner = sim::OwnerSchedule {
                period_hours: 24.0,
                online_hours: h.clamp(0.0, 24.0),
            };
        }
        let checked = if self.real {
            sim::real::validate(&cfg)
        } else {
            cfg.validate()
        };
        checked.map_err(|e| anyhow::anyhow!("bad simulation parameters: {e}"))?;
        Ok(cfg)
    }
}

/// Runs `drizzle simulate`.
pub fn simulate(args: &SimulateArgs) -> anyhow::Result<()> {
    if !args.model && !args.real {
        bail!(
            "choose a mode: --model (many simulated nodes, no payloads) or --real (a few real nodes)"
        );
    }
    if let Some(path) = &args.replay {
        return replay(args, path);
    }
    let cfg = args.sim_config()?;
    let bar = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let days = cfg.days as u32;
    let progress = |d| {
        if bar {
            eprint!("\rsimulating day {d}/{days}");
            let _ = std::io::stderr().flush();
        }
    };
    let report = if args.real {
        let tmp;
        let dir = match &args.data_dir {
            Some(d) => d.clone(),
            None => {
                tmp = tempfile::Builder::new()
                    .prefix("drizzle-simulate-")
                    .tempdir()
                    .context("creating a temporary directory")?;
                tmp.path().to_path_buf()
            }
        };
        sim::real::run(&cfg, &dir, progress)
    } else {
        sim::model::run_with_progress(&cfg, progress)
    }
    .map_err(|e| anyhow::anyhow!(e))?;
    if bar {
        eprintln!();
    }
    show(args, &report, started.elapsed())
}

/// `--replay`: the model on a `--real` report's trace.
fn replay(args: &SimulateArgs, path: &std::path::Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let recorded: sim::Report = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a simulation report", path.display()))?;
    let Some(trace) = &recorded.trace else {
        bail!(
            "{} has no node trace: make it with `drizzle simulate --real --record-decisions --out DIR`",
            path.display()
        );
    };
    let report = sim::model::replay(&recorded.config, trace, &recorded.decisions)
        .map_err(|e| anyhow::anyhow!("cannot replay {}: {e}", path.display()))?;
    show(args, &report, started.elapsed())
}

/// Writes the report where asked and prints it (as JSON, or a summary).
fn show(
    args: &SimulateArgs,
    report: &sim::Report,
    elapsed: std::time::Duration,
) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.json"), &json)?;
        std::fs::write(dir.join("report.svg"), sim::plot::svg(report))?;
    }
    if args.json {
        println!("{json}");
        return Ok(());
    }
    print_summary(report, elapsed);
    if let Some(dir) = &args.out {
        println!("report: {}", dir.join("report.json").display());
        println!("plot:   {}", dir.join("report.svg").display());
    }
    Ok(())
}

/// The report as a few lines for people.
fn print_summary(r: &sim::Report, elapsed: std::time::Duration) {
    let [lo, hi] = r.loss_per_object_year_ci99;
    println!(
        "{} objects on {} nodes for {} days (k={} n={} r={}, seed {}), {:.1} s",
        r.config.objects,
        r.config.nodes,
        r.config.days,
        r.config.k,
        r.config.n,
        r.config.policy().r,
        r.config.seed,
        elapsed.as_secs_f64()
    );
    println!(
        "lost objects:          {} ({:.2e} per object-year, 99% interval {:.2e} to {:.2e})",
        r.lost_objects, r.loss_per_object_year, lo, hi
    );
    println!(
        "Markov estimate:       {:.2e} per year (holders lost {:.4}/day, repaired {:.1} h after falling below r)",
        r.markov_loss_per_year, r.departure_rate_per_day, r.mean_repair_latency_hours
    );
    println!(
        "read availability:     {:.4} ({} samples)",
        r.read_availability, r.availability_samples
    );
    println!(
        "repairs:               {} ({} fragments), {:.2} x the stored bytes a year, {} per node a year",
        r.repairs,
        r.fragments_rebuilt,
        r.repair_per_user_byte_year,
        crate::units::human_bytes(r.repair_bytes_per_node_per_year as u64)
    );
    println!(
        "leftovers:             peak {}, mean {}; lease expiries {}; departures {}",
        crate::units::human_bytes(r.leftover_bytes_peak),
        crate::units::human_bytes(r.leftover_bytes_mean as u64),
        r.lease_expiries,
        r.node_departures
    );
    if let Some(m) = &r.replay {
        println!(
            "replayed decisions:    {} as recorded (at most {} s apart), {} only in the recording, {} only in the model: {}",
            m.matched,
            m.max_skew,
            m.only_first.len(),
            m.only_second.len(),
            if m.same() { "the same" } else { "they differ" }
        );
    }
    if let Some(c) = &r.real {
        println!(
            "read back at the end:  {} of {} objects byte for byte",
            c.objects_read_back,
            c.objects_read_back + c.objects_lost
        );
        println!(
            "placed fragments:      {} on nodes still here, {} of them missing; {} on departed nodes; {} unnamed on nodes",
            c.placed_fragments, c.placed_fragments_missing, c.placed_on_departed, c.leftover_fragments
        );
        println!(
            "fragment bytes:        {} acknowledged to the vault, {} stored by the nodes",
            c.bytes_sent, c.bytes_received
        );
    }
}
