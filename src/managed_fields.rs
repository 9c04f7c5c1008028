//! Pure: which fields of a placed object the operator owns. A new object is made with a create,
//! which fails when an object of that name exists, so it never merges into someone else's (an
//! apply would); every later change is a server-side apply. A create records the operator's
//! fields as an `Update` entry, which its applies do not own: a field the desired state later
//! drops would stay. Before the first apply to such an object, [`upgraded`] turns that entry into
//! the operator's `Apply` entry, as client-go's `csaupgrade` does after client-side apply. The
//! entry also holds the fields the member defaulted; the next apply drops them and the member
//! defaults them again, to the same values.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use serde_json::Value;

const UPDATE: &str = "Update";
const APPLY: &str = "Apply";

/// The managed fields with `manager`'s `Update` entry of the object's main resource folded into
/// its `Apply` entry (made from it when there is none), or `None` when there is no such entry
/// (nothing to do).
pub fn upgraded(entries: &[ManagedFieldsEntry], manager: &str) -> Option<Vec<ManagedFieldsEntry>> {
    let of = |e: &ManagedFieldsEntry, operation: &str| {
        e.manager.as_deref() == Some(manager)
            && e.operation.as_deref() == Some(operation)
            && e.subresource.as_deref().unwrap_or_default().is_empty()
    };
    let at = entries.iter().position(|e| of(e, UPDATE))?;
    let mut out = entries.to_vec();
    let mut update = out.remove(at);
    match out.iter_mut().find(|e| of(e, APPLY)) {
        Some(apply) => {
            let mut fields = apply
                .fields_v1
                .take()
                .map(|f| f.0)
                .unwrap_or_else(|| Value::Object(Default::default()));
            if let Some(FieldsV1(theirs)) = &update.fields_v1 {
                union(&mut fields, theirs);
            }
            apply.fields_v1 = Some(FieldsV1(fields));
            apply.fields_type = Some("FieldsV1".into());
        }
        None => {
            update.operation = Some(APPLY.into());
            out.insert(at, update);
        }
    }
    Some(out)
}

/// Adds the field set `other` to `into` (both in the `FieldsV1` form: nested objects whose
/// leaves are empty objects).
fn union(into: &mut Value, other: &Value) {
    match (into, other) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                union(
                    a.entry(k.clone())
                        .or_insert_with(|| Value::Object(Default::default())),
                    v,
                );
            }
        }
        (into, other) => *into = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(manager: &str, operation: &str, fields: Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            api_version: Some("v1".into()),
            fields_type: Some("FieldsV1".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    #[test]
    fn a_created_objects_entry_becomes_the_apply_entry() {
        let fields = json!({"f:data": {"f:a": {}}, "f:metadata": {"f:labels": {"f:x": {}}}});
        let entries = [
            entry("residency-operator", "Update", fields.clone()),
            entry("kubectl-edit", "Update", json!({"f:data": {"f:b": {}}})),
        ];
        let out = upgraded(&entries, "residency-operator").unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].operation.as_deref(), Some("Apply"));
        assert_eq!(out[0].fields_v1, Some(FieldsV1(fields)));
        assert_eq!(
            out[1], entries[1],
            "another manager's entry is kept as it was"
        );
    }

    #[test]
    fn an_existing_apply_entry_takes_the_union() {
        let entries = [
            entry(
                "residency-operator",
                "Apply",
                json!({"f:data": {"f:a": {}}}),
            ),
            entry(
                "residency-operator",
                "Update",
                json!({"f:data": {"f:b": {}}, "f:spec": {".": {}}}),
            ),
        ];
        let out = upgraded(&entries, "residency-operator").unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].operation.as_deref(), Some("Apply"));
        assert_eq!(
            out[0].fields_v1,
            Some(FieldsV1(
                json!({"f:data": {"f:a": {}, "f:b": {}}, "f:spec": {".": {}}})
            ))
        );
    }

    #[test]
    fn nothing_to_do_without_the_operators_update_entry() {
        let entries = [
            entry("residency-operator", "Apply", json!({"f:data": {}})),
            entry("someone", "Update", json!({"f:data": {}})),
        ];
        assert_eq!(upgraded(&entries, "residency-operator"), None);
        let mut status = entry("residency-operator", "Update", json!({"f:status": {}}));
        status.subresource = Some("status".into());
        assert_eq!(upgraded(&[status], "residency-operator"), None);
        assert_eq!(upgraded(&[], "residency-operator"), None);
    }
}
