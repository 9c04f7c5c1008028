//! Pure: which fields of a placed object the operator owns. A new object is made with a create,
//! which fails when an object of that name exists, so it never merges into someone else's (an
//! apply would); every later change is a server-side apply. A create records its fields as an
//! `Update` entry (of [`crate::api::CREATE_MANAGER`]), which the applies do not own: a field the
//! desired state later drops would stay. Before the first apply to such an object, [`upgraded`]
//! folds that entry into the applies' `Apply` entry, as client-go's `csaupgrade` does after
//! client-side apply. The entry also holds the fields the member defaulted; the next apply drops
//! them and the member defaults them again, to the same values.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use serde_json::Value;

const UPDATE: &str = "Update";
const APPLY: &str = "Apply";

/// The managed fields with the `Update` entry of `created_by` (of the object's main resource)
/// folded into the `Apply` entry of `applied_by` (made from it when there is none), or `None`
/// when there is no such entry (nothing to do).
pub fn upgraded(
    entries: &[ManagedFieldsEntry],
    created_by: &str,
    applied_by: &str,
) -> Option<Vec<ManagedFieldsEntry>> {
    let of = |e: &ManagedFieldsEntry, manager: &str, operation: &str| {
        e.manager.as_deref() == Some(manager)
            && e.operation.as_deref() == Some(operation)
            && e.subresource.as_deref().unwrap_or_default().is_empty()
    };
    let at = entries.iter().position(|e| of(e, created_by, UPDATE))?;
    let mut out = entries.to_vec();
    let mut update = out.remove(at);
    match out.iter_mut().find(|e| of(e, applied_by, APPLY)) {
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
            update.manager = Some(applied_by.into());
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
            entry("op-create", "Update", fields.clone()),
            entry("kubectl-edit", "Update", json!({"f:data": {"f:b": {}}})),
            entry("op", "Update", json!({"f:spec": {"f:replicas": {}}})),
        ];
        let out = upgraded(&entries, "op-create", "op").unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].manager.as_deref(), Some("op"));
        assert_eq!(out[0].operation.as_deref(), Some("Apply"));
        assert_eq!(out[0].fields_v1, Some(FieldsV1(fields)));
        assert_eq!(
            out[1..],
            entries[1..],
            "the other entries (the operator's own updates too) are kept as they were"
        );
    }

    #[test]
    fn an_existing_apply_entry_takes_the_union() {
        let entries = [
            entry("op", "Apply", json!({"f:data": {"f:a": {}}})),
            entry(
                "op-create",
                "Update",
                json!({"f:data": {"f:b": {}}, "f:spec": {".": {}}}),
            ),
        ];
        let out = upgraded(&entries, "op-create", "op").unwrap();
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
            entry("op", "Apply", json!({"f:data": {}})),
            entry("op", "Update", json!({"f:spec": {"f:replicas": {}}})),
            entry("someone", "Update", json!({"f:data": {}})),
        ];
        assert_eq!(upgraded(&entries, "op-create", "op"), None);
        let mut status = entry("op-create", "Update", json!({"f:status": {}}));
        status.subresource = Some("status".into());
        assert_eq!(upgraded(&[status], "op-create", "op"), None);
        assert_eq!(upgraded(&[], "op-create", "op"), None);
    }
}
