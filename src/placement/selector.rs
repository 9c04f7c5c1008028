//! Kubernetes label selectors as plain data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A Kubernetes `LabelSelector`: every `match_labels` pair and every `match_expressions`
/// requirement must hold. The empty selector matches every label set.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Selector {
    /// Labels that must be present with exactly these values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Further requirements, all of which must hold.
    #[serde(default)]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One `matchExpressions` entry of a label selector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SelectorRequirement {
    /// The label key the requirement is about.
    pub key: String,
    /// How the label value is compared with `values`.
    pub operator: SelectorOperator,
    /// The values for `In` and `NotIn`; ignored by `Exists` and `DoesNotExist`.
    #[serde(default)]
    pub values: Vec<String>,
}

/// The operator of a [`SelectorRequirement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SelectorOperator {
    /// The label is present and its value is one of `values` (absent label: no match).
    In,
    /// The label is absent, or its value is none of `values` (absent label: match).
    NotIn,
    /// The label is present, whatever its value.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl Selector {
    /// Whether `labels` satisfy this selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self
                .match_expressions
                .iter()
                .all(|requirement| requirement.matches(labels))
    }
}

impl SelectorRequirement {
    /// Whether `labels` satisfy this requirement.
    ///
    /// Taken literally, `In` with no values matches nothing and `NotIn` with no values matches
    /// everything; Kubernetes validation rejects such requirements before they get here.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|value| self.values.contains(value)),
            SelectorOperator::NotIn => value.is_none_or(|value| !self.values.contains(value)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{Selector, SelectorOperator, SelectorRequirement};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn requirement(key: &str, operator: SelectorOperator, values: &[&str]) -> Selector {
        Selector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![SelectorRequirement {
                key: key.to_string(),
                operator,
                values: values.iter().map(|v| v.to_string()).collect(),
            }],
        }
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(Selector::default().matches(&labels(&[])));
        assert!(Selector::default().matches(&labels(&[("tier", "gold")])));
    }

    #[test]
    fn match_labels_require_equal_values() {
        let selector = Selector {
            match_labels: labels(&[("tier", "gold"), ("pci", "yes")]),
            match_expressions: Vec::new(),
        };
        assert!(selector.matches(&labels(&[("tier", "gold"), ("pci", "yes"), ("x", "y")])));
        assert!(!selector.matches(&labels(&[("tier", "gold")])));
        assert!(!selector.matches(&labels(&[("tier", "silver"), ("pci", "yes")])));
    }

    #[test]
    fn in_requires_present_key_with_listed_value() {
        let selector = requirement("tier", SelectorOperator::In, &["gold", "silver"]);
        assert!(selector.matches(&labels(&[("tier", "silver")])));
        assert!(!selector.matches(&labels(&[("tier", "bronze")])));
        assert!(!selector.matches(&labels(&[])));
    }

    #[test]
    fn not_in_matches_absent_key() {
        let selector = requirement("tier", SelectorOperator::NotIn, &["bronze"]);
        assert!(selector.matches(&labels(&[])));
        assert!(selector.matches(&labels(&[("tier", "gold")])));
        assert!(!selector.matches(&labels(&[("tier", "bronze")])));
    }

    #[test]
    fn exists_and_does_not_exist() {
        let exists = requirement("pci", SelectorOperator::Exists, &[]);
        let absent = requirement("pci", SelectorOperator::DoesNotExist, &[]);
        let with = labels(&[("pci", "")]);
        let without = labels(&[("tier", "gold")]);
        assert!(exists.matches(&with) && !exists.matches(&without));
        assert!(!absent.matches(&with) && absent.matches(&without));
    }

    #[test]
    fn labels_and_expressions_must_all_hold() {
        let mut selector = requirement("pci", SelectorOperator::Exists, &[]);
        selector.match_labels = labels(&[("tier", "gold")]);
        assert!(selector.matches(&labels(&[("tier", "gold"), ("pci", "1")])));
        assert!(!selector.matches(&labels(&[("tier", "gold")])));
        assert!(!selector.matches(&labels(&[("pci", "1")])));
    }

    #[test]
    fn deserializes_kubernetes_json() {
        let selector: Selector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"tier": "gold"},
            "matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]},
                                 {"key": "pci", "operator": "Exists"}]
        }))
        .unwrap();
        assert_eq!(selector.match_expressions.len(), 2);
        assert_eq!(
            selector.match_expressions[1].operator,
            SelectorOperator::Exists
        );
        assert!(selector.matches(&labels(&[("tier", "gold"), ("zone", "a"), ("pci", "")])));
    }
}
