//! The traffic model: counters of ~13,000 shopping streets, libraries and facilities, whose
//! traffic follows the population's link skew (a few big streets, a long tail), with opening
//! hours and a daily curve, several terminals per provider, and an operation mix. It turns into
//! a schedule (a trace) of non-homogeneous Poisson arrivals, deterministic for a seed.
//!
//! Owns the arithmetic of "who sends what when"; never talks to a server.

use mykey_engine::id::{ProviderId, ServiceId};

use crate::population::{Kind, PopulationSpec};
use crate::rng::Rng;
use crate::trace::{Event, Request};

/// Relative traffic per hour of the day (0–23), local time: counters open 10:00–20:00, with a
/// lunch and an evening peak. The mean over open hours is 1.
pub const DAILY_CURVE: [f64; 24] = [
    0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, // 00–09 closed
    0.6, 0.9, 1.4, 1.2, 0.9, 0.8, 0.9, 1.2, 1.3, 0.8, // 10–19
    0.0, 0.0, 0.0, 0.0, // 20–23 closed
];

/// The operation mix, as shares that sum to 1.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    /// Lookups of a linked ID (stamp cards, lending).
    pub lookup: f64,
    /// First visits: a link of a new service ID.
    pub link: f64,
    /// Batched lookups (a terminal syncing its list).
    pub batch: f64,
    /// Authenticated lookups: the card signs a challenge (point redemption).
    pub card: f64,
    /// Full registrations of new cards at the portal.
    pub register: f64,
    /// Partner revocation pushes (serial lists of a few lost cards).
    pub push: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            lookup: 0.875,
            link: 0.08,
            batch: 0.02,
            card: 0.02,
            register: 0.004,
            push: 0.001,
        }
    }
}

/// A traffic model.
#[derive(Clone, Debug)]
pub struct Model {
    /// The population it runs against.
    pub population: PopulationSpec,
    /// Requests per second averaged over open hours (scaled by the curve hour by hour).
    pub rate: f64,
    /// Simulated seconds to schedule.
    pub duration_secs: f64,
    /// Simulated time of day at the start, hours (10.0 = opening).
    pub start_hour: f64,
    /// Terminals in all, shared among providers by popularity (at least one each in use).
    pub terminals: u32,
    /// The operation mix.
    pub mix: Mix,
    /// IDs in a batched lookup.
    pub batch_size: usize,
    /// Seed of the schedule (the population has its own).
    pub seed: u64,
}

impl Model {
    /// The arrival rate at simulated second `t` (requests per second).
    pub fn rate_at(&self, t: f64) -> f64 {
        let hour = ((self.start_hour + t / 3600.0) % 24.0).floor() as usize;
        self.rate * DAILY_CURVE[hour.min(23)]
    }

    /// The terminal of `provider` that sends a request: providers' terminals are contiguous
    /// ranges, sized by popularity.
    fn terminal(&self, provider: usize, rng: &mut Rng) -> u32 {
        // A provider of popularity rank k gets about terminals / (k + 1)^s / H terminals;
        // the long tail shares one terminal per provider, folded onto the last terminals.
        let t = self.terminals.max(1);
        let per = ((f64::from(t) / 8.0) / (provider as f64 + 1.0))
            .floor()
            .max(1.0) as u32;
        let base = (provider as u64 * 2_654_435_761 % u64::from(t)) as u32;
        (base + rng.below(u64::from(per)) as u32) % t
    }

    /// The schedule: arrivals by thinning a Poisson process at the day's peak rate.
    pub fn schedule(&self) -> Vec<Event> {
        let mut rng = Rng::new(self.seed);
        let pop = &self.population;
        let popularity = pop.popularity();
        let peak = self.rate * DAILY_CURVE.iter().cloned().fold(0.0, f64::max);
        let mut events = Vec::new();
        if peak <= 0.0 {
            return events;
        }
        let mut t = 0.0;
        loop {
            t += rng.exp(1.0 / peak);
            if t >= self.duration_secs {
                break;
            }
            if rng.unit() * peak >= self.rate_at(t) {
                continue;
            }
            let at_us = (t * 1e6) as u64;
            let u = rng.unit();
            let writes = self.mix.register + self.mix.push;
            if u < writes {
                // Registrations and pushes go over the portal and partner connections; the
                // terminal field is 0.
                let k = events.len() as u64;
                let request = if u < self.mix.register {
                    let id = format!("N{:013}", (self.seed % 1000) * 10_000_000_000 + k);
                    let id = mykey_engine::id::MyKeyId::parse(id.as_bytes())
                        .expect("generated IDs are 14 characters of A-Z0-9");
                    // Serials beyond the population's, one per registration.
                    Request::Register(id, pop.ids + 1 + k)
                } else {
                    let serials = (0..1 + rng.below(10))
                        .map(|_| pop.row(rng.below(pop.ids.max(1)), &popularity).serial)
                        .collect();
                    Request::PushSerials(format!("load-{}-{k}", self.seed), serials)
                };
                events.push(Event {
                    at_us,
                    terminal: 0,
                    request,
                });
                continue;
            }
            let u = u - writes;
            let (request, provider) = if u < self.mix.link {
                // A first visit: a provider drawn by popularity, any ID that may be linked (a
                // provisional ID is refused links until it is confirmed, so no counter would
                // try one).
                let p = popularity.sample(&mut rng);
                let row = loop {
                    let row = pop.row(rng.below(pop.ids.max(1)), &popularity);
                    if row.kind != Kind::Provisional {
                        break row;
                    }
                };
                let svc = format!("NEW{:010}", rng.below(10_000_000_000));
                (Request::Link(provider_id(pop, p), row.id, service(&svc)), p)
            } else {
                // A returning visitor: an ID with a link, at one of its providers; traffic
                // follows the link skew.
                let (row, p) = loop {
                    let row = pop.row(rng.below(pop.ids.max(1)), &popularity);
                    if let Some(&(p, _)) = row.links.first() {
                        break (row, p);
                    }
                };
                if u < self.mix.link + self.mix.card {
                    // A card visit: a full registration (its ID is its card's CN) with a link.
                    let (row, p) = loop {
                        let n = rng.below(pop.ids.max(1));
                        let row = pop.row(n, &popularity);
                        if let (Kind::Full, Some(&(p, _))) = (row.kind, row.links.first()) {
                            break (row, p);
                        }
                    };
                    (
                        Request::CardLookup(provider_id(pop, p), row.id, row.serial),
                        p,
                    )
                } else if u < self.mix.link + self.mix.card + self.mix.batch {
                    let ids = (0..self.batch_size.max(1))
                        .map(|_| pop.row(rng.below(pop.ids.max(1)), &popularity).id)
                        .collect();
                    (Request::Batch(provider_id(pop, p), ids), p)
                } else {
                    (Request::Lookup(provider_id(pop, p), row.id), p)
                }
            };
            events.push(Event {
                at_us,
                terminal: self.terminal(provider, &mut rng),
                request,
            });
        }
        events
    }
}

fn provider_id(pop: &PopulationSpec, i: usize) -> ProviderId {
    ProviderId::parse(pop.provider(i).as_bytes()).expect("generated provider IDs are valid")
}

fn service(s: &str) -> ServiceId {
    ServiceId::parse_text(s).expect("generated service IDs are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(rate: f64, duration_secs: f64, start_hour: f64) -> Model {
        Model {
            population: PopulationSpec {
                ids: 10_000,
                ..PopulationSpec::default()
            },
            rate,
            duration_secs,
            start_hour,
            terminals: 500,
            mix: Mix::default(),
            batch_size: 10,
            seed: 3,
        }
    }

    /// Generated arrivals match the model within 3 % (a Poisson count's spread here is under
    /// 0.5 %), hour by hour, and the mix within 1 point.
    #[test]
    fn arrivals_follow_the_rate_the_curve_and_the_mix() {
        // 12:00–12:10 at a curve factor of 1.4.
        let m = model(100.0, 600.0, 12.0);
        let ev = m.schedule();
        let want = 100.0 * 1.4 * 600.0;
        let got = ev.len() as f64;
        assert!(
            (got - want).abs() / want < 0.03,
            "{got} arrivals, model {want}"
        );
        assert!(
            ev.windows(2).all(|w| w[0].at_us <= w[1].at_us),
            "starts are ordered"
        );
        let links = ev
            .iter()
            .filter(|e| matches!(e.request, Request::Link(..)))
            .count() as f64;
        assert!(
            (links / got - 0.08).abs() < 0.01,
            "link share {}",
            links / got
        );
        // No first visit links a provisional ID (the server would refuse it WRONG_STATE).
        // Chosen IDs are `MY` and the row index.
        let popularity = m.population.popularity();
        let provisional_links = ev
            .iter()
            .filter_map(|e| match &e.request {
                Request::Link(_, id, _) => id.as_str().strip_prefix("MY")?.parse::<u64>().ok(),
                _ => None,
            })
            .filter(|n| m.population.row(*n, &popularity).kind == Kind::Provisional)
            .count();
        assert_eq!(provisional_links, 0, "links aimed at provisional IDs");
        // 19:54–20:06: six minutes at 0.8, then closed.
        let ev = model(100.0, 720.0, 19.9).schedule();
        let open = 100.0 * 0.8 * 360.0;
        let late = ev.iter().filter(|e| e.at_us > 360_000_000).count();
        assert_eq!(late, 0, "no traffic after closing time");
        assert!(
            (ev.len() as f64 - open).abs() / open < 0.03,
            "{} before closing, model {open}",
            ev.len()
        );
        // Skew: the busiest provider draws about its Zipf weight (1/H(18,300) ≈ 9.6 %), and
        // the busiest 1 % of providers draw most of the traffic.
        let ev = m.schedule();
        let mut per = std::collections::HashMap::new();
        for e in &ev {
            let p = match &e.request {
                Request::Lookup(p, _)
                | Request::Link(p, _, _)
                | Request::Batch(p, _)
                | Request::CardLookup(p, _, _) => *p,
                Request::Register(..) | Request::PushSerials(..) => continue,
            };
            *per.entry(p).or_insert(0u64) += 1;
        }
        let mut counts: Vec<u64> = per.into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let share = |n: usize| counts.iter().take(n).sum::<u64>() as f64 / ev.len() as f64;
        let top_weight = m.population.popularity().weight(0);
        assert!(
            (share(1) - top_weight).abs() < 0.02,
            "top provider {} vs {top_weight}",
            share(1)
        );
        assert!(share(183) > 0.5, "top 1 % of providers: {}", share(183));
    }
}
