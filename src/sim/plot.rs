//! The report's plot as a self-contained SVG: surviving fragments per
//! object (and those on holders that are up) over the days, above the
//! repair traffic per day.

use std::fmt::Write;

use super::Report;

const W: f64 = 900.0;
const H: f64 = 260.0;
const PAD: f64 = 50.0;

/// Renders `r` as SVG text.
pub fn svg(r: &Report) -> String {
    let mut out = String::new();
    let days = r.series.len().max(1) as f64;
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#,
        w = W,
        h = 2.0 * H + 40.0
    );
    let _ = write!(
        out,
        r#"<text x="{PAD}" y="18">drizzle simulate --{}: k={} n={} r={} seed={}, {} nodes, {} objects, {} days</text>"#,
        r.mode,
        r.config.k,
        r.config.n,
        r.config.policy().r,
        r.config.seed,
        r.config.nodes,
        r.config.objects,
        r.config.days
    );
    // Panel 1: fragments.
    let top = 30.0;
    fragments_panel(&mut out, r, top, days);
    // Panel 2: repair traffic.
    repair_panel(&mut out, r, top + H + 10.0, days);
    out.push_str("</svg>\n");
    out
}

/// Surviving fragments per object (and those on holders up) over the
/// days, with k and r marked, in the panel at `top`.
fn fragments_panel(out: &mut String, r: &Report, top: f64, days: f64) {
    let x = |d: f64| PAD + (W - 2.0 * PAD) * d / days;
    let ymax = r.config.n as f64 + (r.config.n - r.config.k) as f64;
    axes(out, top, "fragments per object", ymax, days);
    let y1 = |v: f64| top + H - PAD + -(H - 2.0 * PAD) * v / ymax;
    for (color, pick) in [
        (
            "#1f77b4",
            (|p: &super::DayPoint| p.fragments_alive) as fn(&super::DayPoint) -> f64,
        ),
        ("#2ca02c", |p: &super::DayPoint| p.fragments_up),
    ] {
        line(
            out,
            color,
            r.series
                .iter()
                .enumerate()
                .map(|(i, p)| (x(i as f64 + 1.0), y1(pick(p)))),
        );
    }
    for (v, color) in [
        (r.config.k as f64, "#d62728"),
        (r.config.policy().r as f64, "#ff7f0e"),
    ] {
        let _ = write!(
            out,
            r##"<line x1="{PAD}" x2="{x2}" y1="{y}" y2="{y}" stroke="{color}" stroke-dasharray="4 3"/>"##,
            x2 = W - PAD,
            y = y1(v)
        );
    }
    let _ = write!(
        out,
        r##"<text x="{x}" y="{y}" fill="#1f77b4">surviving</text><text x="{x}" y="{y2}" fill="#2ca02c">on holders up</text><text x="{x}" y="{y3}" fill="#ff7f0e">r</text><text x="{x}" y="{y4}" fill="#d62728">k</text>"##,
        x = W - PAD + 4.0,
        y = top + 20.0,
        y2 = top + 36.0,
        y3 = y1(r.config.policy().r as f64),
        y4 = y1(r.config.k as f64)
    );
}

/// Repair traffic per day, in the panel at `top`.
fn repair_panel(out: &mut String, r: &Report, top: f64, days: f64) {
    let x = |d: f64| PAD + (W - 2.0 * PAD) * d / days;
    let mib: Vec<f64> = r
        .series
        .iter()
        .map(|p| p.repair_bytes as f64 / (1 << 20) as f64)
        .collect();
    let ymax = mib.iter().copied().fold(1.0, f64::max) * 1.1;
    axes(out, top, "repair MiB per day", ymax, days);
    let y2 = |v: f64| top + H - PAD - (H - 2.0 * PAD) * v / ymax;
    line(
        out,
        "#9467bd",
        mib.iter()
            .enumerate()
            .map(|(i, v)| (x(i as f64 + 1.0), y2(*v))),
    );
}

fn axes(out: &mut String, top: f64, label: &str, ymax: f64, days: f64) {
    let (x0, x1, y0, y1) = (PAD, W - PAD, top + H - PAD, top + PAD);
    let _ = write!(
        out,
        r##"<path d="M{x0} {y1} L{x0} {y0} L{x1} {y0}" fill="none" stroke="#444"/><text x="{x0}" y="{ly}">{label}</text><text x="{tx}" y="{ty}" text-anchor="end">{ymax:.1}</text><text x="{tx}" y="{y0}" text-anchor="end">0</text><text x="{x1}" y="{dy}" text-anchor="end">day {days}</text>"##,
        ly = y1 - 8.0,
        tx = x0 - 4.0,
        ty = y1 + 4.0,
        dy = y0 + 16.0,
    );
}

fn line(out: &mut String, color: &str, pts: impl Iterator<Item = (f64, f64)>) {
    let mut d = String::new();
    for (i, (x, y)) in pts.enumerate() {
        let _ = write!(d, "{}{x:.1} {y:.1} ", if i == 0 { "M" } else { "L" });
    }
    if !d.is_empty() {
        let _ = write!(
            out,
            r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.5"/>"#
        );
    }
}
