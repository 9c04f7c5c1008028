//! Prevention at admission (pure): the ValidatingAdmissionPolicies each member's API server runs
//! so that a write introducing data of a country its policies forbid there is refused before
//! it exists.
//!
//! For one member and the policies:
//!
//! * a country governed by an `Enforce` policy that does not allow the member is **refused**
//!   (binding `validationActions: [Deny]`);
//! * a country no `Enforce` policy forbids there, but an `Audit` policy does, is **warned**
//!   about (`[Warn, Audit]`): the writer sees a warning, the member's audit log records it,
//!   nothing breaks;
//! * a country no policy governs is not refused (placement's default deny already keeps the
//!   operator from placing it; a label alone is not refused without a policy to name).
//!
//! Each action gets its own policy and binding ([`ENFORCE_NAME`], [`AUDIT_NAME`]); one with
//! nothing to check is not kept. The country codes are written into the policy itself, not into
//! a parameter object (a missing parameter object would block every write or silently disable
//! the check). The policy matches every resource and subresource (`*/*`, so a label added
//! through `pods/status` is checked too) on CREATE and UPDATE only (DELETE is never refused,
//! so what exists can always be removed), and refuses only what a write *introduces*: the
//! countries labelled on the new object that the old one did not carry; a Pod created for a
//! controller object (a controller ownerReference) is not checked (see
//! [`CONTROLLER_PODS_PASS`]). Keys and codes are
//! compared case-insensitively (`country.residency.io/au=true` is data of AU). The API server
//! does not run admission policies on writes to admission policies, so replacing them can never
//! lock the member.
//!
//! [`step`] decides, from what the member holds and what was last written there, what to
//! write; the controller (`controller::admission`) carries it out.

#[cfg(test)]
mod proptests;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::labels;
use crate::placement::{ClusterFacts, Enforcement, PolicyFacts, Selector, SelectorOperator};

/// The policy and binding that refuse (Deny).
pub const ENFORCE_NAME: &str = "residency.io-enforce";
/// The policy and binding that warn (Warn, Audit).
pub const AUDIT_NAME: &str = "residency.io-audit";
/// The annotation holding the digest of the generated spec.
pub const HASH_ANNOTATION: &str = "residency.io/admission-hash";
/// The label naming the MemberCluster an admission policy was generated for.
pub const MEMBER_LABEL: &str = "residency.io/member";

/// What the member's API server does with a write that introduces a country.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// The write is refused.
    Deny,
    /// The write is accepted with a warning (and an audit annotation).
    Warn,
}

impl Action {
    /// The name of the policy and binding that carry this action.
    pub fn object_name(self) -> &'static str {
        match self {
            Action::Deny => ENFORCE_NAME,
            Action::Warn => AUDIT_NAME,
        }
    }

    fn validation_actions(self) -> &'static [&'static str] {
        match self {
            Action::Deny => &["Deny"],
            Action::Warn => &["Warn", "Audit"],
        }
    }
}

/// One country a member refuses or warns about, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// ISO 3166-1 alpha-2 code.
    pub country: String,
    /// Deny or Warn.
    pub action: Action,
    /// The message the writer reads.
    pub message: String,
}

/// The countries `cluster` refuses or warns about, sorted by country (pure).
pub fn refusals(policies: &[PolicyFacts], cluster: &ClusterFacts) -> Vec<Refusal> {
    governed(policies)
        .into_iter()
        .filter_map(|country| {
            let forbidding = |e: Enforcement| -> Vec<&PolicyFacts> {
                let mut v: Vec<&PolicyFacts> = policies
                    .iter()
                    .filter(|p| {
                        p.enforcement == e && p.countries.contains(country) && !p.allows(cluster)
                    })
                    .collect();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                v.dedup_by(|a, b| a.name == b.name);
                v
            };
            let (action, by) = match (
                forbidding(Enforcement::Enforce),
                forbidding(Enforcement::Audit),
            ) {
                (e, _) if !e.is_empty() => (Action::Deny, e),
                (_, a) if !a.is_empty() => (Action::Warn, a),
                _ => return None,
            };
            Some(Refusal {
                country: country.to_string(),
                action,
                message: message(country, cluster, action, &by),
            })
        })
        .collect()
}

/// `residency: data of AU may not be stored on msk-1 (RU/moscow): policy apac-to-zurich allows
/// CH/zurich`.
fn message(country: &str, cluster: &ClusterFacts, action: Action, by: &[&PolicyFacts]) -> String {
    let audit = if action == Action::Warn {
        " (Audit)"
    } else {
        ""
    };
    let why = match by {
        [one] => format!("policy {}{audit} allows {}", one.name, allowance(one)),
        many => format!(
            "policies {}",
            many.iter()
                .map(|p| format!("{}{audit} (allows {})", p.name, allowance(p)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "residency: data of {country} may not be stored on {} ({}): {why}",
        cluster.name,
        cluster.location()
    )
}

/// What a policy allows, in words: `CH/zurich`, `CH (any region)`, `clusters labelled tier=gold`.
pub fn allowance(p: &PolicyFacts) -> String {
    let locations: Vec<String> = p
        .allowed_locations
        .iter()
        .map(|l| match &l.region {
            Some(r) => format!("{}/{r}", l.country),
            None => format!("{} (any region)", l.country),
        })
        .collect();
    let selector = p.cluster_selector.as_ref().map(selector_words);
    match (locations.is_empty(), selector) {
        (true, None) => "no cluster".to_string(),
        (false, None) => locations.join(", "),
        (true, Some(s)) => format!("clusters labelled {s}"),
        (false, Some(s)) => format!("{} on clusters labelled {s}", locations.join(", ")),
    }
}

fn selector_words(s: &Selector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    parts.extend(s.match_expressions.iter().map(|r| match r.operator {
        SelectorOperator::In => format!("{} in ({})", r.key, r.values.join(",")),
        SelectorOperator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
        SelectorOperator::Exists => r.key.clone(),
        SelectorOperator::DoesNotExist => format!("!{}", r.key),
    }));
    if parts.is_empty() {
        "anything".to_string()
    } else {
        parts.join(", ")
    }
}

/// CEL (a match condition): false for a Pod created with a controller ownerReference (its
/// StatefulSet, ReplicaSet, Job, ...). The controller object was admitted itself (or predates
/// the policy), a Pod holds no data at rest, and refusing its Pods would keep an existing copy
/// from running again (a source restarted after a failed data move, a copy kept during make
/// before break whose Pod was rescheduled). The member's garbage collector deletes a Pod whose
/// owner does not exist, so the exemption cannot be claimed with an invented owner; the claims
/// a StatefulSet creates are still refused (new data at rest), and the inventory still reports
/// any labelled Pod where its country is forbidden.
const CONTROLLER_PODS_PASS: &str = "!(request.kind.kind == 'Pod' && request.operation == 'CREATE' && \
     has(object.metadata.ownerReferences) && \
     object.metadata.ownerReferences.exists(r, has(r.controller) && r.controller))";

/// The CEL variables of both policies: the countries the new object's labels declare, those of
/// the old object, and the ones the write introduces.
fn variables() -> Value {
    let prefix = labels::COUNTRY_PREFIX;
    let len = prefix.len();
    let countries = |o: &str| {
        format!(
            "{o}.metadata.labels.filter(k, k.lowerAscii().startsWith('{prefix}') && \
             {o}.metadata.labels[k].lowerAscii() == 'true').map(k, k.substring({len}).upperAscii())"
        )
    };
    json!([
        {"name": "countries", "expression": countries("object")},
        {"name": "before", "expression": format!(
            "oldObject == null || !has(oldObject.metadata) || !has(oldObject.metadata.labels) ? [] : {}",
            countries("oldObject"))},
        {"name": "introduced", "expression": "variables.countries.filter(c, !(c in variables.before))"},
    ])
}

/// One admission policy and its binding, as the member should hold them.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// Deny or Warn.
    pub action: Action,
    /// The ValidatingAdmissionPolicy (JSON, `admissionregistration.k8s.io/v1`).
    pub policy: Value,
    /// Its ValidatingAdmissionPolicyBinding.
    pub binding: Value,
    /// The digest of both, also in their [`HASH_ANNOTATION`].
    pub hash: String,
}

/// The admission policies `cluster` should hold for `refusals`: one per action that has a
/// country (pure).
pub fn generate(cluster: &str, refusals: &[Refusal]) -> Vec<Generated> {
    [Action::Deny, Action::Warn]
        .into_iter()
        .filter_map(|action| {
            let mine: Vec<&Refusal> = refusals.iter().filter(|r| r.action == action).collect();
            if mine.is_empty() {
                return None;
            }
            let name = action.object_name();
            let prefix = labels::COUNTRY_PREFIX;
            let validations: Vec<Value> = mine
                .iter()
                .map(|r| {
                    json!({
                        "expression": format!("!('{}' in variables.introduced)", r.country),
                        "message": r.message,
                        "reason": "Forbidden",
                    })
                })
                .collect();
            let spec = json!({
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": ["*"], "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["*/*"], "scope": "*",
                }]},
                // objects without a country label are not evaluated at all
                "matchConditions": [{
                    "name": "labelled-with-a-country",
                    "expression": format!(
                        "has(object.metadata) && has(object.metadata.labels) && \
                         object.metadata.labels.exists(k, k.lowerAscii().startsWith('{prefix}'))"
                    ),
                }, {
                    "name": "not-a-pod-of-an-existing-controller",
                    "expression": CONTROLLER_PODS_PASS,
                }],
                "variables": variables(),
                "validations": validations,
            });
            let binding_spec = json!({
                "policyName": name,
                "validationActions": action.validation_actions(),
            });
            let hash = digest(&json!([spec, binding_spec]));
            let metadata = json!({
                "name": name,
                "labels": {
                    labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
                    MEMBER_LABEL: cluster,
                },
                "annotations": {HASH_ANNOTATION: hash},
            });
            Some(Generated {
                action,
                policy: json!({
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "ValidatingAdmissionPolicy",
                    "metadata": metadata,
                    "spec": spec,
                }),
                binding: json!({
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "ValidatingAdmissionPolicyBinding",
                    "metadata": metadata,
                    "spec": binding_spec,
                }),
                hash,
            })
        })
        .collect()
}

fn digest(v: &Value) -> String {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    let d = Sha256::digest(&bytes);
    d.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// An admission object (policy or binding) as the member holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    /// Its uid.
    pub uid: String,
    /// Its `metadata.generation` (bumped by the API server on every spec change).
    pub generation: i64,
    /// The value of its [`HASH_ANNOTATION`].
    pub hash: Option<String>,
    /// Whether it carries the operator's managed-by label and this member's name.
    pub labelled: bool,
}

/// What the operator last wrote (or saw after writing) for one admission object: the object
/// it wrote and the generation it left it at. Kept in memory: after a restart each object is
/// replaced once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Uid of the object.
    pub uid: String,
    /// Its generation right after the write.
    pub generation: i64,
}

/// What to do with one admission object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// It is as generated: nothing to write.
    Keep,
    /// It is missing: create it.
    Create,
    /// Replace it whole with the generated one.
    Replace(ReplaceWhy),
    /// No longer wanted: delete it.
    Delete,
}

/// Why an admission object is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplaceWhy {
    /// The policies changed what it must refuse.
    Changed,
    /// Someone changed it since the operator wrote it (its generation or labels moved on).
    EditedByHand,
    /// The operator has no record of writing it (it just started): replaced once, which
    /// undoes any edit made meanwhile.
    Unrecorded,
}

/// The step for one admission object from what is wanted (`Some(hash)`), what the member holds,
/// and what the operator last wrote there (pure). A missing object that is not wanted needs
/// nothing; an object that is there but not wanted is deleted (its name is the operator's).
pub fn step(want: Option<&str>, live: Option<&Live>, written: Option<&Written>) -> Step {
    match (want, live) {
        (None, None) => Step::Keep,
        (None, Some(_)) => Step::Delete,
        (Some(_), None) => Step::Create,
        (Some(hash), Some(live)) => {
            let ours = written.is_some_and(|w| w.uid == live.uid);
            if !ours {
                Step::Replace(ReplaceWhy::Unrecorded)
            } else if written.is_some_and(|w| w.generation != live.generation) || !live.labelled {
                Step::Replace(ReplaceWhy::EditedByHand)
            } else if live.hash.as_deref() != Some(hash) {
                Step::Replace(ReplaceWhy::Changed)
            } else {
                Step::Keep
            }
        }
    }
}

/// The countries refused and warned about, sorted, as shown in status.
pub fn summary(refusals: &[Refusal]) -> (Vec<String>, Vec<String>) {
    let of = |a: Action| {
        refusals
            .iter()
            .filter(|r| r.action == a)
            .map(|r| r.country.clone())
            .collect::<Vec<_>>()
    };
    (of(Action::Deny), of(Action::Warn))
}

/// Every country some policy governs, sorted (pure).
pub fn governed(policies: &[PolicyFacts]) -> BTreeSet<&str> {
    policies
        .iter()
        .flat_map(|p| p.countries.iter().map(String::as_str))
        .collect()
}

/// What a member refuses and warns about: its [`refusals`] when its prevention is enabled,
/// nothing otherwise (pure; the controller and `plan` both use it).
pub fn for_member(policies: &[PolicyFacts], cluster: &ClusterFacts, enabled: bool) -> Vec<Refusal> {
    if enabled {
        refusals(policies, cluster)
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::Location;
    use std::collections::BTreeMap;

    fn cluster(name: &str, country: &str, region: &str) -> ClusterFacts {
        ClusterFacts {
            name: name.into(),
            labels: Default::default(),
            country: country.into(),
            region: region.into(),
            ready: true,
            verified: true,
            schedulable: true,
        }
    }

    fn policy(name: &str, countries: &[&str], at: (&str, &str), e: Enforcement) -> PolicyFacts {
        PolicyFacts {
            name: name.into(),
            countries: countries.iter().map(|c| c.to_string()).collect(),
            allowed_locations: vec![Location {
                country: at.0.into(),
                region: Some(at.1.into()),
            }],
            cluster_selector: None,
            enforcement: e,
        }
    }

    #[test]
    fn the_seed_refuses_apac_on_moscow_with_a_message_a_person_can_act_on() {
        let policies = [
            policy(
                "apac-to-zurich",
                &["AU", "NZ"],
                ("CH", "zurich"),
                Enforcement::Enforce,
            ),
            policy("eu-trial", &["DE"], ("CH", "geneva"), Enforcement::Audit),
        ];
        let msk = cluster("msk-1", "RU", "moscow");
        let r = refusals(&policies, &msk);
        assert_eq!(
            r.iter()
                .map(|r| (r.country.as_str(), r.action))
                .collect::<Vec<_>>(),
            [
                ("AU", Action::Deny),
                ("DE", Action::Warn),
                ("NZ", Action::Deny)
            ]
        );
        assert_eq!(
            r[0].message,
            "residency: data of AU may not be stored on msk-1 (RU/moscow): policy apac-to-zurich allows CH/zurich"
        );
        assert_eq!(
            r[1].message,
            "residency: data of DE may not be stored on msk-1 (RU/moscow): policy eu-trial (Audit) allows CH/geneva"
        );
        assert!(refusals(&policies[..1], &cluster("zrh-1", "CH", "zurich")).is_empty());
    }

    #[test]
    fn an_enforce_refusal_wins_over_an_audit_warning_and_names_every_policy() {
        let policies = [
            policy("b", &["AU"], ("CH", "zurich"), Enforcement::Enforce),
            policy("a", &["AU"], ("DE", "berlin"), Enforcement::Enforce),
            policy("c", &["AU"], ("CH", "zurich"), Enforcement::Audit),
        ];
        let r = refusals(&policies, &cluster("msk-1", "RU", "moscow"));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].action, Action::Deny);
        assert!(
            r[0].message
                .ends_with("policies a (allows DE/berlin), b (allows CH/zurich)"),
            "{}",
            r[0].message
        );
    }

    #[test]
    fn generated_policies_hold_the_codes_and_bindings_the_actions() {
        let policies = [
            policy("p", &["AU"], ("CH", "zurich"), Enforcement::Enforce),
            policy("q", &["JP"], ("CH", "zurich"), Enforcement::Audit),
        ];
        let g = generate("msk-1", &refusals(&policies, &cluster("msk-1", "RU", "m")));
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].policy["metadata"]["name"], ENFORCE_NAME);
        assert_eq!(g[0].binding["spec"]["validationActions"], json!(["Deny"]));
        assert_eq!(
            g[1].binding["spec"]["validationActions"],
            json!(["Warn", "Audit"])
        );
        assert_eq!(g[0].binding["spec"]["policyName"], ENFORCE_NAME);
        assert_eq!(
            g[0].policy["spec"]["validations"][0]["expression"],
            "!('AU' in variables.introduced)"
        );
        assert!(g[0].policy["spec"].get("paramKind").is_none());
        let conditions = &g[0].policy["spec"]["matchConditions"];
        assert!(
            conditions[1]["expression"]
                .as_str()
                .unwrap()
                .contains("ownerReferences"),
            "the member's controllers may start Pods of existing controllers: {conditions}"
        );
        let rule = &g[0].policy["spec"]["matchConstraints"]["resourceRules"][0];
        assert_eq!(rule["resources"], json!(["*/*"]));
        assert_eq!(rule["operations"], json!(["CREATE", "UPDATE"]));
        assert_eq!(
            g[0].policy["metadata"]["annotations"][HASH_ANNOTATION],
            g[0].hash
        );
        // nothing forbidden, nothing generated
        assert!(generate("zrh-1", &[]).is_empty());
        // a change of what is refused changes the digest
        let only_au = generate(
            "msk-1",
            &refusals(&policies[..1], &cluster("msk-1", "RU", "m")),
        );
        assert_eq!(only_au[0].hash, g[0].hash);
        let more = [policy(
            "p",
            &["AU", "NZ"],
            ("CH", "zurich"),
            Enforcement::Enforce,
        )];
        let g2 = generate("msk-1", &refusals(&more, &cluster("msk-1", "RU", "m")));
        assert_ne!(g2[0].hash, g[0].hash);
    }

    #[test]
    fn steps_restore_what_was_deleted_or_edited_and_leave_the_rest_alone() {
        let live = |uid: &str, generation, hash: &str, labelled| Live {
            uid: uid.into(),
            generation,
            hash: Some(hash.into()),
            labelled,
        };
        let w = |uid: &str, generation| Written {
            uid: uid.into(),
            generation,
        };
        assert_eq!(step(None, None, None), Step::Keep);
        assert_eq!(step(Some("h"), None, Some(&w("u", 1))), Step::Create);
        assert_eq!(
            step(None, Some(&live("u", 1, "h", true)), None),
            Step::Delete
        );
        let ours = live("u", 1, "h", true);
        assert_eq!(step(Some("h"), Some(&ours), Some(&w("u", 1))), Step::Keep);
        assert_eq!(
            step(Some("h2"), Some(&ours), Some(&w("u", 1))),
            Step::Replace(ReplaceWhy::Changed)
        );
        assert_eq!(
            step(Some("h"), Some(&live("u", 2, "h", true)), Some(&w("u", 1))),
            Step::Replace(ReplaceWhy::EditedByHand)
        );
        assert_eq!(
            step(Some("h"), Some(&live("u", 1, "h", false)), Some(&w("u", 1))),
            Step::Replace(ReplaceWhy::EditedByHand)
        );
        // deleted and re-made by someone else, or never recorded (a restart)
        assert_eq!(
            step(Some("h"), Some(&live("v", 1, "h", true)), Some(&w("u", 1))),
            Step::Replace(ReplaceWhy::Unrecorded)
        );
        assert_eq!(
            step(Some("h"), Some(&ours), None),
            Step::Replace(ReplaceWhy::Unrecorded)
        );
    }

    #[test]
    fn allowance_in_words() {
        let mut p = policy("p", &["AU"], ("CH", "zurich"), Enforcement::Enforce);
        p.allowed_locations.push(Location {
            country: "LI".into(),
            region: None,
        });
        assert_eq!(allowance(&p), "CH/zurich, LI (any region)");
        p.cluster_selector = Some(Selector {
            match_labels: BTreeMap::from([("tier".into(), "gold".into())]),
            match_expressions: vec![],
        });
        assert_eq!(
            allowance(&p),
            "CH/zurich, LI (any region) on clusters labelled tier=gold"
        );
        p.allowed_locations.clear();
        assert_eq!(allowance(&p), "clusters labelled tier=gold");
        p.cluster_selector = None;
        assert_eq!(allowance(&p), "no cluster");
    }
}
