//! Journey measurement (SPEC §10) from merged counters: conversion of treatment vs
//! holdout with absolute and relative lift and a 95% confidence interval (normal
//! approximation for the difference of two proportions).

/// Treatment vs holdout.
#[derive(Clone, Debug, PartialEq)]
pub struct Lift {
    pub treatment_entered: u64,
    pub treatment_converted: u64,
    pub holdout_entered: u64,
    pub holdout_converted: u64,
    pub treatment_rate: f64,
    pub holdout_rate: f64,
    /// Treatment rate minus holdout rate.
    pub absolute: f64,
    /// Absolute lift over the holdout rate (None when the holdout rate is 0).
    pub relative: Option<f64>,
    /// 95% confidence interval of the absolute lift (None without both groups).
    pub ci95: Option<(f64, f64)>,
}

pub fn lift(treatment_entered: u64, treatment_converted: u64, holdout_entered: u64, holdout_converted: u64) -> Lift {
    let rate = |c: u64, n: u64| if n == 0 { 0.0 } else { c as f64 / n as f64 };
    let (p1, p2) = (rate(treatment_converted, treatment_entered), rate(holdout_converted, holdout_entered));
    let absolute = p1 - p2;
    let relative = (p2 > 0.0).then(|| absolute / p2);
    let ci95 = (treatment_entered > 0 && holdout_entered > 0).then(|| {
        let se = (p1 * (1.0 - p1) / treatment_entered as f64 + p2 * (1.0 - p2) / holdout_entered as f64).sqrt();
        (absolute - 1.96 * se, absolute + 1.96 * se)
    });
    Lift { treatment_entered, treatment_converted, holdout_entered, holdout_converted, treatment_rate: p1, holdout_rate: p2, absolute, relative, ci95 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lift_with_a_confidence_interval() {
        let l = lift(1000, 120, 100, 8);
        assert!((l.treatment_rate - 0.12).abs() < 1e-9);
        assert!((l.holdout_rate - 0.08).abs() < 1e-9);
        assert!((l.absolute - 0.04).abs() < 1e-9);
        assert!((l.relative.unwrap() - 0.5).abs() < 1e-9);
        let (lo, hi) = l.ci95.unwrap();
        // se = sqrt(.12*.88/1000 + .08*.92/100) = 0.029010...
        assert!((lo - (0.04 - 1.96 * 0.029_010)).abs() < 1e-4 && (hi - (0.04 + 1.96 * 0.029_010)).abs() < 1e-4, "{lo} {hi}");
        let none = lift(10, 1, 0, 0);
        assert!(none.ci95.is_none() && none.relative.is_none());
    }
}
