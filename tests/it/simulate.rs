//! The churn simulator: checked against the closed-form Markov model, and
//! run through the `drizzle` binary as users and scripts do.

use std::process::Command;

use drizzle::maint::{markov, GoneWindow};
use drizzle::sim::{self, NodeClass, Outages, OwnerSchedule, RepairDelay, SimConfig};

use crate::support::bin as drizzle_bin;

/// Holders that never go down and leave at `lambda` a day, loss noticed at
/// once, repairs done after an exponential delay of mean `1 / mu` days:
/// the Markov chain's assumptions. Many more nodes than fragments per
/// object: objects that share holders share their departures, and with few
/// nodes the run-to-run spread of the departure count (not the binomial
/// spread the interval assumes) would dominate.
fn markov_world(k: u32, n: u32, r: u32, lambda: f64, mu: f64, days: f64, seed: u64) -> SimConfig {
    SimConfig {
        seed,
        days,
        nodes: 20_000,
        objects: 20_000,
        k,
        n,
        r: Some(r),
        window: GoneWindow::fixed(0),
        lease_days: 10_000.0,
        repair_delay: RepairDelay::Exponential {
            mean_hours: 24.0 / mu,
        },
        owner: OwnerSchedule {
            period_hours: 24.0,
            online_hours: 24.0,
        },
        classes: vec![NodeClass {
            name: "steady".into(),
            share: 1.0,
            availability: 1.0,
            session_hours: 24.0,
            departures_per_month: lambda * 30.0,
        }],
        outages: Outages {
            subnet_size: 50,
            per_month: 0.0,
            hours: 0.0,
        },
        ..SimConfig::default()
    }
}

#[test]
fn the_model_agrees_with_the_markov_chain() {
    let configs = [
        (2, 4, 3, 0.01, 1.0, 365.0),
        (3, 6, 4, 0.02, 0.5, 365.0),
        (4, 8, 6, 0.03, 0.3, 180.0),
        (2, 5, 3, 0.005, 0.1, 365.0),
        (5, 10, 8, 0.05, 1.0, 180.0),
    ];
    for (i, (k, n, r, lambda, mu, days)) in configs.into_iter().enumerate() {
        let cfg = markov_world(k, n, r, lambda, mu, days, 100 + i as u64);
        let report = sim::model::run(&cfg).unwrap();
        let want = markov::loss_probability(k, n, r, lambda, mu, days);
        let [lo, hi] = report.lost_fraction_ci99;
        assert!(
            lo <= want && want <= hi,
            "k={k} n={n} r={r} lambda={lambda} mu={mu}: simulated {} lost (99% {lo:.4}..{hi:.4}), the chain says {want:.4}",
            report.lost_fraction
        );
        assert!(report.repairs > 0 && report.lost_objects > 0);
    }
}

#[test]
fn no_churn_means_no_repairs_no_losses_and_no_expiries() {
    let mut cfg = markov_world(10, 16, 13, 0.0, 1.0, 120.0, 7);
    // The owner online 8 hours a day renews every lease in time.
    cfg.owner = OwnerSchedule {
        period_hours: 24.0,
        online_hours: 8.0,
    };
    cfg.lease_days = 30.0;
    cfg.window = GoneWindow::DEFAULT;
    let r = sim::model::run(&cfg).unwrap();
    assert_eq!(
        (
            r.repairs,
            r.lost_objects,
            r.lease_expiries,
            r.leftover_bytes_peak
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(r.read_availability, 1.0);
}

#[test]
fn a_vault_mounted_minutes_every_nine_days_sees_no_lease_expiry() {
    let mut cfg = markov_world(10, 16, 13, 0.0, 1.0, 120.0, 8);
    cfg.owner = OwnerSchedule {
        period_hours: 9.0 * 24.0,
        online_hours: 0.1,
    };
    cfg.lease_days = 30.0;
    let r = sim::model::run(&cfg).unwrap();
    assert_eq!((r.lease_expiries, r.lost_objects), (0, 0));
    // Mounted every 40 days instead: the leases run out.
    cfg.owner.period_hours = 40.0 * 24.0;
    let r = sim::model::run(&cfg).unwrap();
    assert!(r.lease_expiries > 0);
}

/// A node that is away less than its gone window costs no repair; one away
/// for good is repaired once enough of an object's holders are gone.
#[test]
fn short_absences_cost_nothing_and_departures_are_repaired_at_the_threshold() {
    let mut cfg = markov_world(4, 8, 6, 0.0, 1.0, 60.0, 9);
    cfg.window = GoneWindow::fixed(48 * 3600);
    cfg.repair_delay = RepairDelay::Transfer;
    cfg.classes[0].availability = 0.9;
    cfg.classes[0].session_hours = 20.0;
    let quiet = sim::model::run(&cfg).unwrap();
    assert_eq!(
        quiet.repairs, 0,
        "absences of about 2 hours triggered repairs"
    );
    cfg.classes[0].departures_per_month = 0.3;
    cfg.record_decisions = true;
    let churn = sim::model::run(&cfg).unwrap();
    assert!(churn.repairs > 0);
    // Each repair rebuilt at least n - (r - 1) fragments: it waited for the
    // threshold instead of replacing holders one by one.
    assert!(churn
        .decisions
        .iter()
        .all(|d| d.rebuilt == 0 || d.rebuilt >= 3));
}

/// Runs `drizzle simulate` with `args`, which must succeed; its output.
fn simulate(args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = Command::new(drizzle_bin())
        .arg("simulate")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn run_cli(args: &[&str]) -> serde_json::Value {
    let mut all: Vec<&std::ffi::OsStr> = vec!["--model".as_ref(), "--json".as_ref()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    serde_json::from_slice(&simulate(&all)).unwrap()
}

#[test]
fn the_same_seed_gives_the_same_report_and_another_seed_another() {
    let args = ["--nodes", "400", "--objects", "4000", "--days", "60"];
    let a = run_cli(&[&args[..], &["--seed", "5"]].concat());
    let b = run_cli(&[&args[..], &["--seed", "5"]].concat());
    let c = run_cli(&[&args[..], &["--seed", "6"]].concat());
    assert_eq!(a, b);
    assert_ne!(a["series"], c["series"]);
    assert!(a["repairs"].as_u64().unwrap() > 0);
    assert_eq!(a["series"].as_array().unwrap().len(), 60);
    // The plot and the JSON land in --out.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(drizzle_bin())
        .args([
            "simulate",
            "--model",
            "--nodes",
            "200",
            "--objects",
            "1000",
            "--days",
            "10",
        ])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let svg = std::fs::read_to_string(dir.path().join("report.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<path"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("read availability"), "{text}");
}

#[test]
fn bad_parameters_get_a_clear_error() {
    let out = Command::new(drizzle_bin())
        .args(["simulate", "--model", "--k", "10", "--n", "16", "--r", "17"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("repair threshold"), "{err}");
    let out = Command::new(drizzle_bin())
        .args(["simulate"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model"));
}

/// Runs `drizzle simulate --real` with `params` (TOML) and `extra`
/// flags, its data under `dir`; returns its standard output.
fn run_real(dir: &std::path::Path, params: &str, extra: &[&str]) -> Vec<u8> {
    let file = dir.join("params.toml");
    std::fs::write(&file, params).unwrap();
    let data = dir.join("data");
    let mut all: Vec<&std::ffi::OsStr> = vec![
        "--real".as_ref(),
        "--params".as_ref(),
        file.as_os_str(),
        "--data-dir".as_ref(),
        data.as_os_str(),
    ];
    all.extend(extra.iter().map(std::ffi::OsStr::new));
    simulate(&all)
}

/// `--real` through the binary: ten real nodes in one process, four of
/// them coming and going (and some leaving for good), the owner online 8
/// hours a day, ten simulated days. At the end every object reads back byte
/// for byte, every placed fragment is in its holder's store, and no lease
/// ran out.
#[test]
fn the_real_mode_runs_real_nodes_through_simulated_days() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_real(
        dir.path(),
        r#"
seed = 3
days = 10.0
nodes = 10
objects = 8
k = 2
n = 4
object_bytes = 65536
[owner]
period_hours = 24.0
online_hours = 8.0
[outages]
subnet_size = 10
per_month = 0.0
hours = 0.0
[[classes]]
name = "always-on"
share = 0.6
availability = 1.0
session_hours = 240.0
departures_per_month = 0.0
[[classes]]
name = "laptop"
share = 0.4
availability = 0.5
session_hours = 5.0
departures_per_month = 1.5
"#,
        &["--json"],
    );
    let r: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(r["mode"], "real");
    let c = &r["real"];
    assert_eq!(c["objects_read_back"], 8, "{r:#}");
    assert_eq!(c["objects_lost"], 0);
    assert_eq!(c["placed_fragments_missing"], 0, "{c:#}");
    // Bytes uploaded (acknowledged) are the bytes the nodes received.
    assert!(c["bytes_sent"].as_u64().unwrap() > 0);
    assert_eq!(c["bytes_sent"], c["bytes_received"], "{c:#}");
    assert!(c["placed_fragments"].as_u64().unwrap() >= 8 * 4);
    assert_eq!(r["lease_expiries"], 0);
    assert_eq!(r["series"].as_array().unwrap().len(), 10);
    assert!(r["read_availability"].as_f64().unwrap() > 0.5, "{r:#}");
}

/// One 30-day trace through both modes: `--real` (real nodes, the
/// daemon's maintenance) records its node changes and repair decisions,
/// and `--model --replay` runs the model on the same changes. Both must
/// decide the same repairs (same objects, fragments rebuilt and dropped,
/// within the replay's tolerance), and there must be repairs to compare.
/// The machine may be busy meanwhile: the run waits for connections to
/// settle at each step.
#[test]
fn a_thirty_day_trace_gives_the_same_repair_decisions_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("real");
    run_real(
        dir.path(),
        r#"
seed = 7
days = 30.0
nodes = 12
objects = 16
k = 2
n = 4
object_bytes = 65536
[owner]
period_hours = 24.0
online_hours = 8.0
[outages]
subnet_size = 12
per_month = 0.0
hours = 0.0
[[classes]]
name = "always-on"
share = 0.5
availability = 0.98
session_hours = 240.0
departures_per_month = 0.3
[[classes]]
name = "laptop"
share = 0.5
availability = 0.5
session_hours = 5.0
departures_per_month = 2.0
"#,
        &["--record-decisions", "--out", out_dir.to_str().unwrap()],
    );
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).unwrap()).unwrap();
    let events = recorded["trace"]["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["change"] == "depart"));
    let decisions = recorded["decisions"].as_array().unwrap();
    assert!(
        decisions.iter().filter(|d| d["rebuilt"] != 0).count() >= 3,
        "too few repairs to compare: {decisions:?}"
    );
    let report = out_dir.join("report.json");
    let replay = simulate(&[
        "--model".as_ref(),
        "--json".as_ref(),
        "--replay".as_ref(),
        report.as_os_str(),
    ]);
    let model: serde_json::Value = serde_json::from_slice(&replay).unwrap();
    let m = &model["replay"];
    assert_eq!(m["only_first"], serde_json::json!([]), "{m:#}");
    assert_eq!(m["only_second"], serde_json::json!([]), "{m:#}");
    assert_eq!(m["matched"].as_u64().unwrap(), decisions.len() as u64);
    // A report without a trace is refused with a clear error.
    let plain = dir.path().join("plain.json");
    let mut stripped = recorded.clone();
    stripped.as_object_mut().unwrap().remove("trace");
    std::fs::write(&plain, stripped.to_string()).unwrap();
    let bad = Command::new(drizzle_bin())
        .args(["simulate", "--model", "--replay"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no node trace"));
}
