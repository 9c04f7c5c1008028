//! ISO 3166-1 alpha-2 country codes, validated against the list of assigned codes.
//!
//! The list comes from the maintained `rust_iso3166` crate. The same list is embedded in the CRD
//! schemas as a CEL rule, so the API server and the offline `plan` command agree on what a valid
//! code is (`GB` is valid; `UK` and `XX` are not).

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};

/// An assigned ISO 3166-1 alpha-2 country code, upper case (for example `CH`, `AU`, `GB`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CountryCode(String);

/// Why a string is not a country code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CountryCodeError {
    /// Not two upper-case ASCII letters.
    #[error(
        "'{0}' is not a country code: use two upper-case letters (ISO 3166-1 alpha-2, e.g. CH)"
    )]
    Malformed(String),
    /// Two letters, but not an assigned code.
    #[error("'{0}' is not an assigned ISO 3166-1 alpha-2 country code{hint}", hint = hint(.0))]
    Unassigned(String),
}

fn hint(code: &str) -> &'static str {
    match code {
        "UK" => " (the United Kingdom is GB)",
        "EL" => " (Greece is GR)",
        "EU" => " (the European Union is not a country: list its member states)",
        _ => "",
    }
}

impl CountryCode {
    /// Parses and validates a code.
    pub fn parse(s: &str) -> Result<Self, CountryCodeError> {
        if s.len() != 2 || !s.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(CountryCodeError::Malformed(s.to_string()));
        }
        if rust_iso3166::from_alpha2(s).is_none() {
            return Err(CountryCodeError::Unassigned(s.to_string()));
        }
        Ok(Self(s.to_string()))
    }

    /// The code as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The English short name of the country ("Switzerland").
    pub fn name(&self) -> &'static str {
        rust_iso3166::from_alpha2(&self.0)
            .map(|c| c.name)
            .unwrap_or("unknown")
    }

    /// Every assigned alpha-2 code, sorted.
    pub fn all() -> Vec<&'static str> {
        let mut all: Vec<&'static str> = rust_iso3166::ALL.iter().map(|c| c.alpha2).collect();
        all.sort_unstable();
        all
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for CountryCode {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for CountryCode {
    type Err = CountryCodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for CountryCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The CEL rule that checks a code against the assigned list (used in the CRD schemas).
pub fn cel_rule() -> String {
    let list = CountryCode::all()
        .iter()
        .map(|c| format!("'{c}'"))
        .collect::<Vec<_>>()
        .join(",");
    format!("self in [{list}]")
}

impl JsonSchema for CountryCode {
    fn schema_name() -> Cow<'static, str> {
        "CountryCode".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "ISO 3166-1 alpha-2 country code, upper case (for example CH, AU, GB).",
            "type": "string",
            "minLength": 2,
            "maxLength": 2,
            "x-kubernetes-validations": [{
                "rule": cel_rule(),
                "messageExpression": "\"'\" + self + \"' is not an assigned ISO 3166-1 alpha-2 country code (upper case, for example GB for the United Kingdom)\""
            }]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_assigned_codes() {
        for c in ["CH", "GB", "AU", "RU", "US", "BN", "LK"] {
            assert_eq!(CountryCode::parse(c).unwrap().as_str(), c);
        }
        assert_eq!(CountryCode::parse("CH").unwrap().name(), "Switzerland");
    }

    #[test]
    fn rejects_unassigned_and_malformed_codes() {
        assert!(matches!(
            CountryCode::parse("UK"),
            Err(CountryCodeError::Unassigned(_))
        ));
        assert!(matches!(
            CountryCode::parse("XX"),
            Err(CountryCodeError::Unassigned(_))
        ));
        assert!(matches!(
            CountryCode::parse("ch"),
            Err(CountryCodeError::Malformed(_))
        ));
        assert!(matches!(
            CountryCode::parse("CHE"),
            Err(CountryCodeError::Malformed(_))
        ));
        assert!(matches!(
            CountryCode::parse(""),
            Err(CountryCodeError::Malformed(_))
        ));
        let msg = CountryCode::parse("UK").unwrap_err().to_string();
        assert!(msg.contains("GB"), "{msg}");
    }

    #[test]
    fn the_list_has_every_assigned_code_once() {
        let all = CountryCode::all();
        assert_eq!(all.len(), 249);
        let mut dedup = all.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), all.len());
        assert!(cel_rule().contains("'GB'") && !cel_rule().contains("'UK'"));
    }

    #[test]
    fn deserialize_validates() {
        let ok: CountryCode = serde_json::from_str("\"NZ\"").unwrap();
        assert_eq!(ok.as_str(), "NZ");
        let err = serde_json::from_str::<CountryCode>("\"XX\"").unwrap_err();
        assert!(err.to_string().contains("not an assigned"), "{err}");
    }
}
