//! The workload generator: a seeded SplitMix64 RNG, a rejection-inversion Zipf sampler,
//! and the event factory that turns a [`Workload`] into ingest batches (customers,
//! event mix, second identities, padded properties, unique message ids).
//!
//! It must stay cheap per event (no serde, no per-event locks): it runs on the same
//! two cores as the node it measures.

use std::fmt::Write as _;

use chorus_proto::v1;
use serde::{Deserialize, Serialize};

/// SplitMix64: tiny, fast, statistically good enough for workload generation, and
/// trivially reproducible from a printed seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// An independent stream derived from `seed` and a stream number.
    pub fn derive(seed: u64, stream: u64) -> Rng {
        let mut r = Rng::new(seed ^ stream.wrapping_mul(0xA24B_AED4_963E_E407));
        r.next_u64();
        Rng(r.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n) (Lemire's multiply-shift; the tiny bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Zipf over ranks 1..=n with exponent s > 0, by rejection-inversion (Hörmann and
/// Derflinger): O(1) memory and time, no table even for millions of customers.
///
/// The envelope is h(x) = 1 on [0, 1] and x^-s on (1, n]; a draw from it is rounded up to
/// the rank k and accepted with probability k^-s / h(x) ≤ 1, so P(k) ∝ k^-s exactly.
#[derive(Clone, Debug)]
pub struct Zipf {
    n: f64,
    s: f64,
    /// Total mass of the envelope.
    t: f64,
    /// 1 / (1 - s) when s ≠ 1.
    q: f64,
}

impl Zipf {
    pub fn new(n: u64, s: f64) -> Zipf {
        assert!(n >= 1, "zipf needs at least one rank");
        assert!(s > 0.0 && s.is_finite(), "zipf exponent must be positive, got {s}");
        let nf = n as f64;
        let (t, q) = if (s - 1.0).abs() < 1e-12 {
            (1.0 + nf.ln(), 0.0)
        } else {
            let q = 1.0 / (1.0 - s);
            ((nf.powf(1.0 - s) - s) * q, q)
        };
        Zipf { n: nf, s, t, q }
    }

    fn is_harmonic(&self) -> bool {
        (self.s - 1.0).abs() < 1e-12
    }

    /// Inverse of the envelope's cumulative mass.
    fn inv_h(&self, p: f64) -> f64 {
        let pt = p * self.t;
        if pt <= 1.0 {
            pt
        } else if self.is_harmonic() {
            (pt - 1.0).exp()
        } else {
            (pt * (1.0 - self.s) + self.s).powf(self.q)
        }
    }

    /// A rank in 1..=n (1 is the most popular).
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        loop {
            let x = self.inv_h(rng.next_f64());
            let k = (x + 1.0).floor().min(self.n);
            let ratio = if x > 1.0 { if self.is_harmonic() { x / k } else { (x / k).powf(self.s) } } else { 1.0 };
            if rng.next_f64() < ratio {
                return k as u64;
            }
        }
    }
}

/// How customers are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Zipf,
    Uniform,
}

/// One kind of event in the mix.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MixEntry {
    /// Event name (track).
    pub name: String,
    /// Relative weight (need not sum to 100).
    pub weight: f64,
    /// Add `properties.revenue` (as `Order Completed` does in W1).
    #[serde(default)]
    pub revenue: bool,
}

/// The W1 event mix of SPEC §13.
pub fn w1_mix() -> Vec<MixEntry> {
    let e = |name: &str, weight: f64, revenue: bool| MixEntry { name: name.into(), weight, revenue };
    vec![
        e("Product Viewed", 60.0, false),
        e("email.opened", 15.0, false),
        e("email.clicked", 10.0, false),
        e("App Opened", 10.0, false),
        e("Order Completed", 5.0, true),
    ]
}

/// What to generate (the part of a scenario that shapes events, not traffic).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Workload {
    pub customers: u64,
    pub distribution: Distribution,
    pub zipf_s: f64,
    pub seed: u64,
    /// Fraction of events that carry the email as a second identity.
    pub second_identity_ratio: f64,
    /// Target size of `properties_json` in bytes (padded with a `pad` string; never
    /// smaller than the event's natural properties).
    pub payload_bytes: usize,
    pub mix: Vec<MixEntry>,
}

/// Makes events for one stream; every stream has its own generator (own RNG, own
/// message-id prefix), so no state is shared between streams.
pub struct Generator {
    rng: Rng,
    zipf: Option<Zipf>,
    customers: u64,
    second_identity_ratio: f64,
    payload_bytes: usize,
    /// Cumulative weights, normalised to end at 1.0.
    cumulative: Vec<f64>,
    mix: Vec<MixEntry>,
    id_prefix: String,
    seq: u64,
    pad: String,
}

impl Generator {
    /// `run_id` makes message ids unique across runs against the same node; `stream`
    /// makes them unique across the streams of one run.
    pub fn new(w: &Workload, run_id: u64, stream: u64) -> Generator {
        assert!(w.customers >= 1, "at least one customer");
        assert!(!w.mix.is_empty(), "the event mix is empty");
        let total: f64 = w.mix.iter().map(|m| m.weight).sum();
        assert!(total > 0.0, "the event mix weights sum to zero");
        let mut acc = 0.0;
        let cumulative = w
            .mix
            .iter()
            .map(|m| {
                acc += m.weight / total;
                acc
            })
            .collect();
        Generator {
            rng: Rng::derive(w.seed, stream),
            zipf: (w.distribution == Distribution::Zipf).then(|| Zipf::new(w.customers, w.zipf_s)),
            customers: w.customers,
            second_identity_ratio: w.second_identity_ratio,
            payload_bytes: w.payload_bytes,
            cumulative,
            mix: w.mix.clone(),
            id_prefix: format!("lt-{run_id:x}-{stream}-"),
            seq: 0,
            pad: "x".repeat(w.payload_bytes),
        }
    }

    /// The next customer index in 0..customers.
    pub fn customer(&mut self) -> u64 {
        match &self.zipf {
            Some(z) => z.sample(&mut self.rng) - 1,
            None => self.rng.below(self.customers),
        }
    }

    fn pick_mix(&mut self) -> usize {
        let u = self.rng.next_f64();
        self.cumulative.iter().position(|&c| u < c).unwrap_or(self.cumulative.len() - 1)
    }

    /// One event.
    pub fn event(&mut self) -> v1::Event {
        let customer = self.customer();
        let kind = self.pick_mix();
        self.seq += 1;
        let mut message_id = String::with_capacity(self.id_prefix.len() + 12);
        message_id.push_str(&self.id_prefix);
        let _ = write!(message_id, "{}", self.seq);

        let mut identities = Vec::with_capacity(2);
        identities.push(v1::Identity { kind: "anonymous_id".into(), value: format!("anon-{customer}") });
        if self.rng.next_f64() < self.second_identity_ratio {
            identities.push(v1::Identity { kind: "email".into(), value: format!("user-{customer}@example.com") });
        }

        let mut props = String::with_capacity(self.payload_bytes.max(64) + 32);
        let r = self.rng.next_u64();
        let entry = &self.mix[kind];
        match entry.name.as_str() {
            "Product Viewed" => {
                let _ = write!(props, r#"{{"product_id":"p-{}","price":{}.99,"category":"c-{}""#, r % 5000, (r >> 16) % 200, (r >> 32) % 20);
            }
            "email.opened" | "email.clicked" => {
                let _ = write!(props, r#"{{"campaign_id":"cmp-{}""#, r % 50);
            }
            _ => props.push('{'),
        }
        if entry.revenue {
            let sep = if props.len() > 1 { "," } else { "" };
            let _ = write!(props, r#"{sep}"order_id":"o-{}","revenue":{}.{:02}"#, self.seq, 5 + (r >> 8) % 495, r % 100);
        }
        // Pad to the configured size: `,"pad":"xxx…"}` adds 10 bytes of syntax.
        let room = self.payload_bytes.saturating_sub(props.len() + 1);
        if room > 10 {
            let sep = if props.len() > 1 { "," } else { "" };
            props.push_str(sep);
            props.push_str(r#""pad":""#);
            props.push_str(&self.pad[..room - 9 + (1 - sep.len())]);
            props.push('"');
        }
        props.push('}');

        v1::Event { message_id, r#type: "track".into(), name: entry.name.clone(), identities, properties_json: props, ..Default::default() }
    }

    /// A batch of `n` events.
    pub fn batch(&mut self, n: usize) -> Vec<v1::Event> {
        (0..n).map(|_| self.event()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w1(customers: u64) -> Workload {
        Workload { customers, distribution: Distribution::Zipf, zipf_s: 1.0, seed: 42, second_identity_ratio: 0.3, payload_bytes: 200, mix: w1_mix() }
    }

    #[test]
    fn zipf_matches_the_exact_distribution() {
        for s in [0.7, 1.0, 1.3] {
            let n = 20u64;
            let z = Zipf::new(n, s);
            let mut rng = Rng::new(7);
            let draws = 400_000;
            let mut counts = vec![0u64; n as usize];
            for _ in 0..draws {
                let k = z.sample(&mut rng);
                assert!((1..=n).contains(&k), "rank {k} out of range");
                counts[(k - 1) as usize] += 1;
            }
            let norm: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
            for k in 1..=n {
                let expected = (k as f64).powf(-s) / norm;
                let got = counts[(k - 1) as usize] as f64 / draws as f64;
                assert!((got - expected).abs() < 0.01 * expected.max(0.02) + 0.002, "s={s} rank {k}: got {got:.4}, expected {expected:.4}");
            }
        }
    }

    #[test]
    fn zipf_covers_large_n_without_a_table() {
        let z = Zipf::new(1_000_000, 1.0);
        let mut rng = Rng::new(1);
        let mut max = 0;
        let mut ones = 0;
        for _ in 0..200_000 {
            let k = z.sample(&mut rng);
            assert!((1..=1_000_000).contains(&k));
            max = max.max(k);
            ones += u64::from(k == 1);
        }
        // P(1) = 1 / H(1e6) ≈ 0.0695.
        let p1 = ones as f64 / 200_000.0;
        assert!((p1 - 0.0695).abs() < 0.005, "p(rank 1) = {p1}");
        assert!(max > 100_000, "the tail is reached: max rank {max}");
    }

    #[test]
    fn events_follow_the_mix_and_identity_ratio() {
        let mut g = Generator::new(&w1(1000), 1, 0);
        let n = 100_000;
        let mut names = std::collections::HashMap::<String, usize>::new();
        let mut second = 0;
        let mut ids = std::collections::HashSet::new();
        for _ in 0..n {
            let e = g.event();
            assert!(ids.insert(e.message_id.clone()), "message ids are unique");
            *names.entry(e.name.clone()).or_default() += 1;
            let anon = &e.identities[0];
            assert_eq!(anon.kind, "anonymous_id");
            let i: u64 = anon.value.strip_prefix("anon-").unwrap().parse().unwrap();
            assert!(i < 1000);
            if e.identities.len() == 2 {
                second += 1;
                assert_eq!(e.identities[1].value, format!("user-{i}@example.com"));
            }
            let props: serde_json::Value = serde_json::from_str(&e.properties_json).expect("properties are JSON");
            assert_eq!(e.properties_json.len(), 200, "payload padded to size: {}", e.properties_json);
            if e.name == "Order Completed" {
                assert!(props["revenue"].is_number(), "{props}");
            }
        }
        let share = |name: &str| names[name] as f64 / n as f64;
        assert!((share("Product Viewed") - 0.60).abs() < 0.01);
        assert!((share("email.opened") - 0.15).abs() < 0.01);
        assert!((share("email.clicked") - 0.10).abs() < 0.01);
        assert!((share("App Opened") - 0.10).abs() < 0.01);
        assert!((share("Order Completed") - 0.05).abs() < 0.01);
        assert!((second as f64 / n as f64 - 0.3).abs() < 0.01);
    }

    #[test]
    fn small_payloads_are_not_padded_and_stay_json() {
        let mut w = w1(10);
        for size in [0, 1, 20, 45, 60, 61, 62, 70, 1000] {
            w.payload_bytes = size;
            let mut g = Generator::new(&w, 1, 3);
            for _ in 0..500 {
                let e = g.event();
                let _: serde_json::Value = serde_json::from_str(&e.properties_json).unwrap_or_else(|err| panic!("size {size}: {err}: {}", e.properties_json));
                assert!(e.properties_json.len() <= size.max(120), "size {size}: {}", e.properties_json);
            }
        }
    }

    #[test]
    fn streams_with_the_same_seed_are_reproducible_and_distinct() {
        let w = w1(100_000);
        let a: Vec<_> = Generator::new(&w, 9, 0).batch(50).into_iter().map(|e| e.identities[0].value.clone()).collect();
        let b: Vec<_> = Generator::new(&w, 9, 0).batch(50).into_iter().map(|e| e.identities[0].value.clone()).collect();
        let c: Vec<_> = Generator::new(&w, 9, 1).batch(50).into_iter().map(|e| e.identities[0].value.clone()).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
