//! A synthetic national population in the engine's bulk-load format (`snapshots/POPULATION.md`):
//! providers (~13,000 shopping streets, libraries, facilities) and MyKey IDs with their
//! certificate and links.
//!
//! Every ID is a pure function of the seed and its index, so the traffic model can draw "a
//! registered ID and one of its links" without keeping the population in memory. Owns the
//! naming and the skew (links favour a few big streets, with a long tail); never talks to a
//! server.

use std::io::{self, Write};

use mykey_engine::id::MyKeyId;

use crate::rng::{Rng, Zipf};

/// What to generate.
#[derive(Clone, Debug)]
pub struct PopulationSpec {
    /// MyKey IDs.
    pub ids: u64,
    /// Shopping streets.
    pub streets: usize,
    /// Libraries.
    pub libraries: usize,
    /// Sports and other public facilities.
    pub facilities: usize,
    /// Seed of everything.
    pub seed: u64,
    /// Key identifier of the JPKI CA generation the IDs' certificates name.
    pub ca_key_id: Vec<u8>,
    /// Zipf exponent of the providers' popularity.
    pub zipf_s: f64,
}

impl Default for PopulationSpec {
    fn default() -> Self {
        Self {
            ids: 100_000,
            streets: 13_000,
            libraries: 3_300,
            facilities: 2_000,
            seed: 1,
            ca_key_id: vec![0x0d; 20],
            zipf_s: 1.0,
        }
    }
}

/// The state column of a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Full registration: the ID is a card's CN random string.
    Full,
    /// Provisional registration of a chosen ID, not yet confirmed.
    Provisional,
    /// A chosen ID, confirmed at a municipal counter.
    Custom,
}

/// One generated ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The ID.
    pub id: MyKeyId,
    /// How it was registered.
    pub kind: Kind,
    /// Certificate serial (the row index + 1).
    pub serial: u64,
    /// Links: provider index and service ID.
    pub links: Vec<(usize, String)>,
}

const ALNUM: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

impl PopulationSpec {
    /// Providers in all.
    pub fn provider_count(&self) -> usize {
        self.streets + self.libraries + self.facilities
    }

    /// The provider ID of index `i`: streets first (most popular first), then libraries, then
    /// facilities. `<prefecture 2><municipality 3>-<ST|LIB|FAC>-<4 digits>`.
    pub fn provider(&self, i: usize) -> String {
        let (kind, n) = if i < self.streets {
            ("ST", i)
        } else if i < self.streets + self.libraries {
            ("LIB", i - self.streets)
        } else {
            ("FAC", i - self.streets - self.libraries)
        };
        let pref = 1 + n % 47;
        let muni = 101 + (n / 47) % 800;
        format!("{pref:02}{muni:03}-{kind}-{:04}", n / (47 * 800) + 1)
    }

    /// The popularity of providers (rank = index).
    pub fn popularity(&self) -> Zipf {
        Zipf::new(self.provider_count(), self.zipf_s)
    }

    /// Row `n` (deterministic).
    pub fn row(&self, n: u64, popularity: &Zipf) -> Row {
        let mut r = Rng::new(self.seed.wrapping_mul(0x1000_0000_01b3) ^ n);
        let u = r.unit();
        let kind = if u < 0.95 {
            Kind::Full
        } else if u < 0.97 {
            Kind::Provisional
        } else {
            Kind::Custom
        };
        let mut id = [0u8; 14];
        match kind {
            Kind::Full => {
                for c in &mut id {
                    *c = ALNUM[r.below(36) as usize];
                }
            }
            // A chosen ID: a readable prefix and the index, so two never collide.
            Kind::Provisional | Kind::Custom => {
                let s = format!("MY{:012}", n % 1_000_000_000_000);
                id.copy_from_slice(s.as_bytes());
            }
        }
        // A random 14-character string could repeat another row's; the index makes it unique.
        if kind == Kind::Full {
            let tag = format!("{:07}", n % 10_000_000);
            id[7..].copy_from_slice(tag.as_bytes());
        }
        let id = MyKeyId::parse(&id).expect("generated IDs are 14 characters of A-Z0-9");
        // A provisional ID is not usable yet: it has no links.
        let links_n = match r.unit() {
            _ if kind == Kind::Provisional => 0,
            x if x < 0.20 => 0,
            x if x < 0.60 => 1,
            x if x < 0.85 => 2,
            x if x < 0.95 => 3,
            _ => 4,
        };
        let mut links: Vec<(usize, String)> = Vec::with_capacity(links_n);
        for _ in 0..links_n {
            let p = popularity.sample(&mut r);
            if links.iter().any(|(q, _)| *q == p) {
                continue;
            }
            links.push((p, format!("{:010}", r.below(10_000_000_000))));
        }
        Row {
            id,
            kind,
            serial: n + 1,
            links,
        }
    }

    /// Writes `providers.txt` and `population.csv` contents; `progress` hears the rows written
    /// every million.
    pub fn write(
        &self,
        providers: &mut dyn Write,
        population: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<Summary> {
        writeln!(
            providers,
            "# {} providers generated by mykey-load (seed {})",
            self.provider_count(),
            self.seed
        )?;
        for i in 0..self.provider_count() {
            writeln!(providers, "{}", self.provider(i))?;
        }
        let popularity = self.popularity();
        let ca = mykey_engine::id::Hex(&self.ca_key_id).to_string();
        writeln!(population, "mykey_id,state,cert,links")?;
        let mut sum = Summary::default();
        for n in 0..self.ids {
            let row = self.row(n, &popularity);
            let state = match row.kind {
                Kind::Provisional => "provisional",
                Kind::Full | Kind::Custom => "active",
            };
            let links: Vec<String> = row
                .links
                .iter()
                .map(|(p, s)| format!("{}={s}", self.provider(*p)))
                .collect();
            writeln!(
                population,
                "{},{state},{ca}:{:016X},{}",
                row.id,
                row.serial,
                links.join(";")
            )?;
            sum.ids += 1;
            sum.links += row.links.len() as u64;
            if (n + 1) % 1_000_000 == 0 {
                progress(n + 1);
            }
        }
        sum.providers = self.provider_count() as u64;
        Ok(sum)
    }
}

/// What was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// IDs.
    pub ids: u64,
    /// Links.
    pub links: u64,
    /// Providers.
    pub providers: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_deterministic_unique_and_skewed() {
        let spec = PopulationSpec {
            ids: 20_000,
            ..PopulationSpec::default()
        };
        let pop = spec.popularity();
        assert_eq!(spec.row(77, &pop), spec.row(77, &pop));
        let mut seen = std::collections::HashSet::new();
        let mut top = 0u64;
        let mut links = 0u64;
        for n in 0..spec.ids {
            let r = spec.row(n, &pop);
            assert!(seen.insert(r.id), "duplicate ID at {n}");
            for (p, _) in &r.links {
                links += 1;
                if *p < 100 {
                    top += 1;
                }
            }
        }
        // A few big streets: the top 100 of 18,300 providers hold a large share of the links.
        let share = top as f64 / links as f64;
        assert!(share > 0.3, "top-100 share {share}");
        let names: std::collections::HashSet<String> = (0..spec.provider_count())
            .map(|i| spec.provider(i))
            .collect();
        assert_eq!(
            names.len(),
            spec.provider_count(),
            "provider IDs are unique"
        );
    }
}
