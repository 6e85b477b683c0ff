//! The closed-form model the simulator is checked against: a continuous-time
//! Markov chain over the number of surviving fragments of one object.
//!
//! From `i` surviving fragments, one is lost at rate `i * lambda` (each
//! holder leaves independently); while `i < r` a repair completes at rate
//! `mu` and brings the object back to `n`; at `k - 1` the object is lost
//! (absorbing). The yearly loss probability is the chance of absorption
//! within the horizon starting from `n`, computed by uniformization.

/// Probability that an object starting with `n` fragments is lost within
/// `horizon` days. Rates are per day.
pub fn loss_probability(k: u32, n: u32, r: u32, lambda: f64, mu: f64, horizon: f64) -> f64 {
    loss_probability_from(k, n, r, lambda, mu, horizon, n)
}

/// Like [`loss_probability`], for an object that has `start` surviving
/// fragments now (below `k`: already lost).
pub fn loss_probability_from(
    k: u32,
    n: u32,
    r: u32,
    lambda: f64,
    mu: f64,
    horizon: f64,
    start: u32,
) -> f64 {
    assert!(k >= 1 && k <= r && r <= n);
    if start < k {
        return 1.0;
    }
    let from = (n - start.min(n)) as usize;
    // States 0 ..= n - k + 1: index s means n - s fragments; the last is
    // the loss state.
    let states = (n - k + 2) as usize;
    let lost = states - 1;
    let frags = |s: usize| n as f64 - s as f64;
    // Generator as a dense matrix (tiny: at most a few dozen states).
    let mut q = vec![vec![0.0f64; states]; states];
    for (s, row) in q.iter_mut().enumerate().take(lost) {
        let die = frags(s) * lambda;
        row[s + 1] += die;
        row[s] -= die;
        if frags(s) < r as f64 && mu > 0.0 && s != 0 {
            row[0] += mu;
            row[s] -= mu;
        }
    }
    let rate = (0..states).map(|s| -q[s][s]).fold(0.0, f64::max);
    if rate == 0.0 || horizon <= 0.0 {
        return 0.0;
    }
    debug_assert!(from < lost);
    let e = exp_generator(&q, rate, horizon);
    e[from][lost].clamp(0.0, 1.0)
}

/// `exp(Q T)` for generator `q` whose largest exit rate is `rate`, and
/// `T = horizon`.
fn exp_generator(q: &[Vec<f64>], rate: f64, horizon: f64) -> Vec<Vec<f64>> {
    let states = q.len();
    // exp(Q T) by scaling and squaring: exp(Q h) for a step h short enough
    // that its uniformized series converges in a few terms, then squared
    // back up to T. Every term and product is nonnegative (P = I + Q/rate
    // is a stochastic matrix), so tiny probabilities keep their precision.
    let mut squarings = 0;
    while rate * horizon / 2f64.powi(squarings) > 0.5 {
        squarings += 1;
    }
    let h = horizon / 2f64.powi(squarings);
    let p: Vec<Vec<f64>> = (0..states)
        .map(|i| {
            (0..states)
                .map(|j| q[i][j] / rate + if i == j { 1.0 } else { 0.0 })
                .collect()
        })
        .collect();
    let mul = |a: &[Vec<f64>], b: &[Vec<f64>]| -> Vec<Vec<f64>> {
        (0..states)
            .map(|i| {
                (0..states)
                    .map(|j| (0..states).map(|m| a[i][m] * b[m][j]).sum())
                    .collect()
            })
            .collect()
    };
    let lam = rate * h;
    let mut term: Vec<Vec<f64>> = (0..states)
        .map(|i| {
            (0..states)
                .map(|j| if i == j { 1.0 } else { 0.0 })
                .collect()
        })
        .collect();
    let mut weight = (-lam).exp();
    let mut e: Vec<Vec<f64>> = term
        .iter()
        .map(|row| row.iter().map(|x| x * weight).collect())
        .collect();
    for m in 1..40 {
        term = mul(&term, &p);
        weight *= lam / m as f64;
        for (er, tr) in e.iter_mut().zip(&term) {
            for (x, t) in er.iter_mut().zip(tr) {
                *x += t * weight;
            }
        }
    }
    for _ in 0..squarings {
        e = mul(&e, &e);
    }
    e
}

/// Probability that at least `k` of independent holders are up, each with
/// its own availability (a Poisson-binomial tail).
pub fn read_availability(k: usize, availability: &[f64]) -> f64 {
    // dist[j]: probability that exactly j of the holders seen so far are up.
    let mut dist = vec![1.0f64];
    for a in availability {
        let mut next = vec![0.0; dist.len() + 1];
        for (j, p) in dist.iter().enumerate() {
            next[j] += p * (1.0 - a);
            next[j + 1] += p * a;
        }
        dist = next;
    }
    dist.iter().skip(k).sum::<f64>().clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_repair_it_is_a_binomial_tail() {
        // No repair: lost by T iff more than n - k of n independent
        // exponential lifetimes end before T.
        let (k, n, lambda, t) = (2u32, 4u32, 0.01f64, 100.0f64);
        let q: f64 = 1.0 - (-lambda * t).exp();
        let mut want = 0.0;
        for j in (n - k + 1)..=n {
            let c = (1..=n).product::<u32>() as f64
                / ((1..=j).product::<u32>() as f64 * (1..=(n - j)).product::<u32>() as f64);
            want += c * q.powi(j as i32) * (1.0 - q).powi((n - j) as i32);
        }
        let got = loss_probability(k, n, n, lambda, 0.0, t);
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    }

    #[test]
    fn the_design_figures_checked() {
        // DESIGN.md section 10 says: 10 of 16, departures 5% a month,
        // repair at 13 within a day, about 4e-7 a year; a week, 5e-4. With
        // repair times exponential (mean one day) the chain gives 1.0e-5:
        // from 12 survivors, 3 more departures before the repair come
        // with probability ~0.0196 * 0.018 * 0.0164 = 5.8e-6, and an
        // object falls to 12 about twice a year (166 days from 16). The
        // 4e-7 needs a mean repair time of about 6 hours, or r = 14.
        // ARCHITECTURE.md ("Maintenance") keeps the corrected figures.
        let lambda = 0.05 / 30.0;
        let p = |r, mu| loss_probability(10, 16, r, lambda, mu, 365.0);
        assert!((5e-6..2e-5).contains(&p(13, 1.0)), "{}", p(13, 1.0));
        assert!((1e-3..5e-3).contains(&p(13, 1.0 / 7.0)));
        assert!((1e-7..3e-7).contains(&p(13, 4.0)));
        assert!((2e-7..5e-7).contains(&p(14, 1.0)));
        // Fewer survivors now, likelier loss; below k it is lost.
        let from = |s| loss_probability_from(10, 16, 13, lambda, 1.0, 365.0, s);
        assert!(from(11) > from(13) && from(13) > from(16));
        assert_eq!(from(9), 1.0);
        // Read availability: 23% at 50%, 97.3% at 80%, 99.95% at 90%.
        let at = |a: f64| read_availability(10, &[a; 16]);
        assert!((at(0.5) - 0.227).abs() < 0.005);
        assert!((at(0.8) - 0.973).abs() < 0.001);
        assert!((at(0.9) - 0.9995).abs() < 0.0003);
    }
}
