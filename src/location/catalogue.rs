//! The public clouds' regions and the country each is in (pure).
//!
//! The table is `data/cloud-regions.csv` (its header names the sources), compiled into the
//! binary. A region name may belong to several providers, sometimes in different countries
//! (Alibaba Cloud's `ap-southeast-3` is Kuala Lumpur, AWS's is Jakarta): when a member's nodes
//! name their provider (`spec.providerID`: AWS, Google Cloud, Azure), only that provider's
//! entries count, and a region it does not list is flagged; otherwise a region contradicts a
//! declared country only when no provider's entry of that name is in it, and a region no
//! provider lists (a private data centre's) is self-declared: accepted, and said to rest on the
//! member's own word.

use std::collections::BTreeSet;
use std::sync::LazyLock;

/// The table, as shipped.
pub const SOURCE: &str = include_str!("../../data/cloud-regions.csv");

/// One region of one provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Provider, e.g. `aws`, `gcp`, `azure`, `yandex`.
    pub provider: String,
    /// The region's identifier, as nodes carry it in `topology.kubernetes.io/region`.
    pub region: String,
    /// ISO 3166-1 alpha-2 code of the country it is in.
    pub country: String,
    /// City or area.
    pub place: String,
}

impl Entry {
    /// `aws: Zurich, CH`.
    pub fn describe(&self) -> String {
        format!("{}: {}, {}", self.provider, self.place, self.country)
    }
}

/// A malformed line of the table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("data/cloud-regions.csv line {line}: {why}")]
pub struct CatalogueError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub why: String,
}

/// The region table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalogue {
    /// Sorted by region, then provider.
    entries: Vec<Entry>,
}

/// The table compiled into the binary (checked by a unit test, so it always parses).
pub static BUILTIN: LazyLock<Catalogue> = LazyLock::new(|| {
    Catalogue::parse(SOURCE).unwrap_or_else(|e| panic!("the shipped region catalogue: {e}"))
});

impl Catalogue {
    /// Parses `provider,region,country,place` lines; `#` starts a comment line; the first other
    /// line is the header. Country codes must be assigned ISO 3166-1 codes; a provider may list
    /// a region once.
    pub fn parse(text: &str) -> Result<Self, CatalogueError> {
        let mut entries = Vec::new();
        let mut seen = BTreeSet::new();
        let mut header = true;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |why: String| CatalogueError { line: i + 1, why };
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            if header {
                if cols != ["provider", "region", "country", "place"] {
                    return Err(err(format!(
                        "the header must be provider,region,country,place, not {line}"
                    )));
                }
                header = false;
                continue;
            }
            let [provider, region, country, place] = cols[..] else {
                return Err(err(format!("{} columns, not 4", cols.len())));
            };
            if provider.is_empty() || region.is_empty() || place.is_empty() {
                return Err(err("an empty column".into()));
            }
            crate::api::CountryCode::parse(country)
                .map_err(|e| err(format!("country {country}: {e}")))?;
            if !seen.insert((provider.to_string(), region.to_string())) {
                return Err(err(format!("{provider} lists {region} twice")));
            }
            entries.push(Entry {
                provider: provider.into(),
                region: region.into(),
                country: country.into(),
                place: place.into(),
            });
        }
        entries.sort_by(|a, b| (&a.region, &a.provider).cmp(&(&b.region, &b.provider)));
        Ok(Self { entries })
    }

    /// Every provider's entry of `region`.
    pub fn lookup(&self, region: &str) -> &[Entry] {
        let start = self.entries.partition_point(|e| e.region.as_str() < region);
        let end = start
            + self.entries[start..]
                .iter()
                .take_while(|e| e.region == region)
                .count();
        &self.entries[start..end]
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The regions one provider lists.
    pub fn regions_of<'a>(&'a self, provider: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |e| e.provider == provider)
            .map(|e| e.region.as_str())
    }

    /// An entry whose region is spelled like `region` but for case, `-` and `_` (a near miss,
    /// such as `ru-central-1` for Yandex's `ru-central1`).
    pub fn resembling(&self, region: &str) -> Option<&Entry> {
        let norm = |s: &str| {
            s.chars()
                .filter(|c| *c != '-' && *c != '_')
                .collect::<String>()
                .to_ascii_lowercase()
        };
        let want = norm(region);
        self.entries
            .iter()
            .find(|e| e.region != region && norm(&e.region) == want)
    }

    /// The distinct providers, sorted.
    pub fn providers(&self) -> BTreeSet<&str> {
        self.entries.iter().map(|e| e.provider.as_str()).collect()
    }

    /// What the table says of an attested region of a member that declares `declared_country`;
    /// `providers` are those the member's nodes name in their provider IDs (may be empty).
    pub fn judge(
        &self,
        region: &str,
        declared_country: &str,
        providers: &BTreeSet<&str>,
    ) -> RegionFinding {
        let all = self.lookup(region);
        let candidates: Vec<&Entry> = all
            .iter()
            .filter(|e| providers.is_empty() || providers.contains(e.provider.as_str()))
            .collect();
        let verdict = if candidates.is_empty() && !providers.is_empty() {
            RegionVerdict::NotListed(providers.iter().map(|p| p.to_string()).collect())
        } else if candidates.is_empty() {
            RegionVerdict::SelfDeclared
        } else if let Some(e) = candidates.iter().find(|e| e.country == declared_country) {
            RegionVerdict::InCountry((*e).clone())
        } else {
            RegionVerdict::OtherCountry(candidates.into_iter().cloned().collect())
        };
        RegionFinding {
            region: region.to_string(),
            verdict,
        }
    }
}

/// What the catalogue says of one attested region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionFinding {
    /// The region.
    pub region: String,
    /// The verdict.
    pub verdict: RegionVerdict,
}

/// Whether a region is where its member says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegionVerdict {
    /// The catalogue places it in the declared country (this provider's entry).
    InCountry(Entry),
    /// The catalogue places it elsewhere (every candidate entry).
    OtherCountry(Vec<Entry>),
    /// No provider lists it: a private region, on the member's own word.
    SelfDeclared,
    /// The member's nodes are at these providers (their provider IDs say), and none of them
    /// lists a region of that name.
    NotListed(Vec<String>),
}

impl RegionFinding {
    /// Why the region contradicts the declared country, when it does:
    /// `eu-central-1 in DE (aws: Frankfurt, DE)`.
    pub fn contradiction(&self) -> Option<String> {
        match &self.verdict {
            RegionVerdict::OtherCountry(entries) => {
                let countries: BTreeSet<&str> =
                    entries.iter().map(|e| e.country.as_str()).collect();
                Some(format!(
                    "{} in {} ({})",
                    self.region,
                    countries.into_iter().collect::<Vec<_>>().join(" or "),
                    entries
                        .iter()
                        .map(Entry::describe)
                        .collect::<Vec<_>>()
                        .join("; ")
                ))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_parses_and_covers_the_clouds() {
        let c = Catalogue::parse(SOURCE).unwrap();
        assert_eq!(&c, &*BUILTIN);
        assert!(c.len() > 150, "{} entries", c.len());
        let providers = c.providers();
        for p in ["aws", "gcp", "azure", "yandex"] {
            assert!(providers.contains(p), "{p} missing: {providers:?}");
        }
        let one = |region: &str, provider: &str| {
            c.lookup(region)
                .iter()
                .find(|e| e.provider == provider)
                .map(|e| e.country.clone())
        };
        assert_eq!(one("eu-central-2", "aws").as_deref(), Some("CH"));
        assert_eq!(one("eu-central-1", "aws").as_deref(), Some("DE"));
        assert_eq!(one("europe-west6", "gcp").as_deref(), Some("CH"));
        assert_eq!(one("switzerlandnorth", "azure").as_deref(), Some("CH"));
        assert_eq!(one("switzerlandwest", "azure").as_deref(), Some("CH"));
        assert_eq!(one("ru-central1", "yandex").as_deref(), Some("RU"));
        assert_eq!(one("us-east-1", "aws").as_deref(), Some("US"));
        assert_eq!(one("ap-southeast-2", "aws").as_deref(), Some("AU"));
        assert!(c.lookup("zurich-dc-7").is_empty());
    }

    const TABLE: &str = "# test\nprovider,region,country,place\naws,eu-central-2,CH,Zurich\naws,eu-central-1,DE,Frankfurt\naws,ap-southeast-3,ID,Jakarta\nalibaba,ap-southeast-3,MY,Kuala Lumpur\n";

    #[test]
    fn a_region_in_another_country_contradicts_the_declared_one() {
        let c = Catalogue::parse(TABLE).unwrap();
        let none = BTreeSet::new();
        let f = c.judge("eu-central-1", "CH", &none);
        assert_eq!(
            f.contradiction().as_deref(),
            Some("eu-central-1 in DE (aws: Frankfurt, DE)")
        );
        assert!(
            matches!(c.judge("eu-central-2", "CH", &none).verdict, RegionVerdict::InCountry(e) if e.place == "Zurich")
        );
        assert_eq!(
            c.judge("zrh-dc-7", "CH", &none).verdict,
            RegionVerdict::SelfDeclared
        );
        assert_eq!(c.judge("zrh-dc-7", "CH", &none).contradiction(), None);
    }

    #[test]
    fn a_shared_region_name_is_judged_by_the_nodes_provider() {
        let c = Catalogue::parse(TABLE).unwrap();
        // without knowing the provider, either country may be meant
        assert!(matches!(
            c.judge("ap-southeast-3", "MY", &BTreeSet::new()).verdict,
            RegionVerdict::InCountry(e) if e.provider == "alibaba"
        ));
        assert!(matches!(
            c.judge("ap-southeast-3", "ID", &BTreeSet::new()).verdict,
            RegionVerdict::InCountry(e) if e.provider == "aws"
        ));
        // nodes on AWS: it is Jakarta
        let aws = BTreeSet::from(["aws"]);
        assert_eq!(
            c.judge("ap-southeast-3", "MY", &aws)
                .contradiction()
                .as_deref(),
            Some("ap-southeast-3 in ID (aws: Jakarta, ID)")
        );
        // without a provider: every entry counts
        assert_eq!(
            c.judge("ap-southeast-3", "CH", &BTreeSet::new())
                .contradiction()
                .as_deref(),
            Some("ap-southeast-3 in ID or MY (alibaba: Kuala Lumpur, MY; aws: Jakarta, ID)")
        );
        // nodes on Google Cloud, which has no region of that name: not listed, not private
        assert_eq!(
            c.judge("ap-southeast-3", "CH", &BTreeSet::from(["gcp"]))
                .verdict,
            RegionVerdict::NotListed(vec!["gcp".into()])
        );
        assert_eq!(
            c.judge("zrh-dc-7", "CH", &BTreeSet::from(["aws"])).verdict,
            RegionVerdict::NotListed(vec!["aws".into()])
        );
        // a near miss is found
        let y = Catalogue::parse("provider,region,country,place\nyandex,ru-central1,RU,Moscow\n")
            .unwrap();
        assert_eq!(
            y.resembling("ru-central-1").map(|e| e.region.as_str()),
            Some("ru-central1")
        );
        assert_eq!(y.resembling("ru-central1"), None);
    }

    #[test]
    fn malformed_tables_are_refused_with_the_line() {
        let bad_country = "provider,region,country,place\naws,x,XX,Nowhere\n";
        let e = Catalogue::parse(bad_country).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.why.contains("XX"), "{e}");
        let twice = "provider,region,country,place\naws,x,CH,A\naws,x,CH,B\n";
        assert_eq!(Catalogue::parse(twice).unwrap_err().line, 3);
        let columns = "provider,region,country,place\naws,x,CH\n";
        assert!(
            Catalogue::parse(columns)
                .unwrap_err()
                .why
                .contains("3 columns")
        );
        assert!(Catalogue::parse("region,provider,country,place\n").is_err());
    }
}
