//! Reading a schema1 manifest the way containers/image does.
//!
//! The manifest is decoded with Go's rules (see [`super::gotype`]), then
//! checked as `Schema1FromManifest` checks it: schemaVersion 1, no other
//! format's fields, as many fsLayers as history entries, every
//! v1Compatibility readable, ids of 64 hex characters, a base without a
//! parent and an unbroken parent chain. The invariant: a [`Schema1`]
//! returned from here is one skopeo would convert, holding the same
//! entries skopeo keeps after dropping repeated ids.

use std::collections::HashMap;

use super::gojson::{self, Kind, Node};
use super::gotype::{self, Field, Ty, Val};
use super::{Entry, Schema1, Schema1Error, config};

/// The manifest's top level as Go's `json.Unmarshal` reads it into
/// containers/image's `Schema1` struct.
static MANIFEST: [Field; 6] = [
    field("name", Ty::Str),
    field("tag", Ty::Str),
    field("architecture", Ty::Str),
    field(
        "fsLayers",
        Ty::List(&Ty::Struct(&[field("blobSum", Ty::Str)])),
    ),
    field(
        "history",
        Ty::List(&Ty::Struct(&[field("v1Compatibility", Ty::Str)])),
    ),
    field("schemaVersion", Ty::Int),
];

const fn field(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        omitempty: false,
    }
}

pub(super) fn parse_json(body: &[u8]) -> Result<Node<'_>, Schema1Error> {
    let text = std::str::from_utf8(body).map_err(|e| Schema1Error::Json(e.to_string()))?;
    gojson::parse(text).map_err(Schema1Error::Json)
}

/// The last member named exactly `key`, as a Go map lookup finds it.
pub(super) fn member<'n, 'a>(node: &'n Node<'a>, key: &str) -> Option<&'n Node<'a>> {
    match &node.kind {
        Kind::Object(members) => members.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
        _ => None,
    }
}

/// Parses and validates a schema1 manifest (signed or not) as skopeo does.
pub fn parse(body: &[u8]) -> Result<Schema1, Schema1Error> {
    let node = parse_json(body)?;
    let ty = Ty::Struct(&MANIFEST);
    let mut val = ty.zero();
    ty.decode(&node, &mut val).map_err(Schema1Error::Json)?;
    let Val::Struct(top) = val else {
        unreachable!("a struct type decodes into a struct value")
    };
    if let Val::Int(v) = top[5]
        && v != 1
    {
        return Err(Schema1Error::Version(v));
    }
    check_unambiguous(&node)?;

    let fs_layers = list_of_strings(&top[3]);
    let history = list_of_strings(&top[4]);
    if fs_layers.len() != history.len() {
        return Err(Schema1Error::LengthMismatch {
            fs_layers: fs_layers.len(),
            history: history.len(),
        });
    }
    if fs_layers.is_empty() {
        return Err(Schema1Error::NoLayers);
    }

    let mut entries = Vec::with_capacity(history.len());
    for (index, (blob_sum, v1)) in fs_layers.into_iter().zip(history).enumerate() {
        let invalid = |reason: String| Schema1Error::Compat { index, reason };
        let compat = config::decode_compat(&v1).map_err(invalid)?;
        let value = serde_json::from_str(&v1).map_err(|e| invalid(e.to_string()))?;
        let blob_sum = blob_sum.parse().map_err(|source| Schema1Error::BlobSum {
            index,
            value: blob_sum.clone(),
            source,
        })?;
        let id = gotype::str_at(&compat, config::COMPAT_ID).to_string();
        let parent = gotype::str_at(&compat, config::COMPAT_PARENT).to_string();
        entries.push(Entry {
            blob_sum,
            v1_compatibility: v1,
            value,
            id,
            parent: (!parent.is_empty()).then_some(parent),
            throwaway: compat[config::COMPAT_THROWAWAY] == Val::Bool(true),
            manifest_index: index,
            compat,
        });
    }

    fix_layers(&mut entries)?;
    Ok(Schema1 {
        name: gotype::str_at(&top, 0).to_string(),
        tag: gotype::str_at(&top, 1).to_string(),
        architecture: gotype::str_at(&top, 2).to_string(),
        entries,
    })
}

fn list_of_strings(val: &Val) -> Vec<String> {
    let Val::List(Some(items)) = val else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| match item {
            Val::Struct(fields) => gotype::str_at(fields, 0).to_string(),
            _ => String::new(),
        })
        .collect()
}

/// containers/image refuses a manifest that also carries another format's
/// essential fields (matched case-insensitively, ignoring nulls).
fn check_unambiguous(node: &Node<'_>) -> Result<(), Schema1Error> {
    let Kind::Object(members) = &node.kind else {
        return Ok(());
    };
    for name in ["config", "layers", "manifests"] {
        let present = members
            .iter()
            .rev()
            .find(|(k, _)| gotype::fold_eq(name, k))
            .is_some_and(|(_, v)| !v.is_null());
        if present {
            return Err(Schema1Error::Ambiguous(name));
        }
    }
    Ok(())
}

/// skopeo's `fixManifestLayers`: checks the id chain and drops the upper of
/// two consecutive entries with the same id.
fn fix_layers(entries: &mut Vec<Entry>) -> Result<(), Schema1Error> {
    for (index, e) in entries.iter().enumerate() {
        let hex = e.id.len() == 64 && e.id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex {
            return Err(Schema1Error::BadId {
                index,
                id: e.id.clone(),
            });
        }
    }
    let base = entries.last().expect("the caller checked for no entries");
    if let Some(parent) = &base.parent {
        return Err(Schema1Error::BaseHasParent {
            index: entries.len() - 1,
            id: base.id.clone(),
            parent: parent.clone(),
        });
    }

    // A repeat that is not adjacent would make the chain a loop.
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut last = "";
    for (index, e) in entries.iter().enumerate() {
        if let Some(&first) = seen.get(e.id.as_str())
            && e.id != last
        {
            return Err(Schema1Error::DuplicateId {
                id: e.id.clone(),
                first,
                again: index,
            });
        }
        seen.entry(&e.id).or_insert(index);
        last = &e.id;
    }

    // From the base up, as skopeo walks, so the first broken link reported
    // is the lowest one; a removal shifts only the entries above.
    for i in (0..entries.len() - 1).rev() {
        if entries[i].id == entries[i + 1].id {
            entries.remove(i);
        } else if entries[i].parent.as_deref().unwrap_or("") != entries[i + 1].id {
            return Err(Schema1Error::BrokenChain {
                index: entries[i].manifest_index,
                id: entries[i].id.clone(),
                parent: entries[i].parent.clone().unwrap_or_default(),
                below: entries[i + 1].id.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../../tests/data/schema1/", $name)).as_slice()
        };
    }

    const BLOB_A: &str = "sha256:67ed875f07785cf4c36d4b3592450df0c46ee7669583e32768f737081521647e";
    const BLOB_B: &str = "sha256:b634210e4625d09d4f128c24fb5925943df1ec41807d259f563b1490b2d3fb0d";

    fn id(c: char) -> String {
        c.to_string().repeat(64)
    }

    /// A v1Compatibility with `id` and, unless empty, `parent`.
    fn v1(id: &str, parent: &str, extra: &str) -> String {
        let parent = if parent.is_empty() {
            String::new()
        } else {
            format!(r#","parent":"{parent}""#)
        };
        format!(r#"{{"id":"{id}"{parent}{extra}}}"#)
    }

    /// An unsigned manifest of (blobSum, v1Compatibility) entries, top first.
    fn manifest_of(entries: &[(&str, String)]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 1,
            "name": "t/img",
            "tag": "1",
            "architecture": "amd64",
            "fsLayers": entries.iter().map(|(b, _)| serde_json::json!({"blobSum": b})).collect::<Vec<_>>(),
            "history": entries.iter().map(|(_, v)| serde_json::json!({"v1Compatibility": v})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn parses_registry_manifest_fields_and_layers() {
        let image = parse(fixture!("registry-get1.json")).unwrap();
        assert_eq!(
            (
                image.name.as_str(),
                image.tag.as_str(),
                image.architecture.as_str()
            ),
            ("s1/img", "1", "amd64")
        );
        assert_eq!(image.entries.len(), 7);
        let throwaway: Vec<bool> = image.entries.iter().map(|e| e.throwaway).collect();
        assert_eq!(throwaway, [true, false, true, true, false, false, true]);
        assert_eq!(image.entries[6].parent, None);
        assert_eq!(image.entries[0].value["os"], "linux");
        assert!(
            image.entries[0]
                .v1_compatibility
                .starts_with(r#"{"architecture""#)
        );

        let layers = image.layers();
        let indexes: Vec<usize> = layers.iter().map(|l| l.index).collect();
        assert_eq!(indexes, [5, 4, 1]);
        let skopeo: serde_json::Value =
            serde_json::from_slice(fixture!("registry.skopeo-oci-manifest.json")).unwrap();
        for (layer, theirs) in layers.iter().zip(skopeo["layers"].as_array().unwrap()) {
            assert_eq!(layer.digest.to_string(), theirs["digest"]);
        }
    }

    #[test]
    fn drops_upper_of_consecutive_entries_sharing_an_id() {
        let image = parse(fixture!("edge.json")).unwrap();
        let kept: Vec<usize> = image.entries.iter().map(|e| e.manifest_index).collect();
        assert_eq!(kept, [0, 2, 3, 4, 5]);
        let layers = image.layers();
        assert_eq!(layers.len(), 4);
        assert_eq!(
            layers[1].digest, layers[2].digest,
            "a repeated blob stays twice"
        );
    }

    #[test]
    fn rejects_ids_that_are_not_64_hex() {
        for bad in [
            "A".repeat(64),
            "a".repeat(63),
            "../x".to_string(),
            String::new(),
        ] {
            let body = manifest_of(&[(BLOB_A, v1(&bad, "", ""))]);
            let err = parse(&body).unwrap_err();
            assert!(
                matches!(&err, Schema1Error::BadId { index: 0, id } if *id == bad),
                "{err}"
            );
        }
    }

    #[test]
    fn rejects_base_with_parent() {
        let body = manifest_of(&[
            (BLOB_A, v1(&id('a'), &id('b'), "")),
            (BLOB_B, v1(&id('b'), &id('c'), "")),
        ]);
        let err = parse(&body).unwrap_err();
        assert!(matches!(err, Schema1Error::BaseHasParent { index: 1, .. }));
        assert!(err.to_string().contains(&id('c')), "{err}");
    }

    #[test]
    fn rejects_broken_parent_chain_naming_the_entry() {
        let body = manifest_of(&[
            (BLOB_A, v1(&id('a'), &id('9'), "")),
            (BLOB_A, v1(&id('c'), &id('b'), "")),
            (BLOB_B, v1(&id('b'), "", "")),
        ]);
        let err = parse(&body).unwrap_err();
        assert!(
            matches!(&err, Schema1Error::BrokenChain { index: 0, below, .. } if *below == id('c')),
            "{err}"
        );
        let missing = manifest_of(&[
            (BLOB_A, v1(&id('a'), "", "")),
            (BLOB_B, v1(&id('b'), "", "")),
        ]);
        assert!(matches!(
            parse(&missing),
            Err(Schema1Error::BrokenChain { index: 0, .. })
        ));
    }

    #[test]
    fn checks_the_chain_after_dropping_repeats() {
        // The dropped upper entry's own parent is never looked at, as in
        // skopeo: only the kept lower one must link to the entry below.
        let body = manifest_of(&[
            (BLOB_A, v1(&id('a'), &id('b'), "")),
            (BLOB_A, v1(&id('b'), &id('f'), r#","throwaway":true"#)),
            (BLOB_B, v1(&id('b'), &id('c'), "")),
            (BLOB_B, v1(&id('c'), "", "")),
        ]);
        let image = parse(&body).unwrap();
        assert_eq!(image.entries.len(), 3);
        assert!(
            !image.entries[1].throwaway,
            "the lower entry's fields are kept"
        );
        assert_eq!(image.entries[1].manifest_index, 2);
    }

    #[test]
    fn rejects_repeated_id_that_is_not_adjacent() {
        let body = manifest_of(&[
            (BLOB_A, v1(&id('a'), &id('b'), "")),
            (BLOB_A, v1(&id('b'), &id('a'), "")),
            (BLOB_B, v1(&id('a'), "", "")),
        ]);
        let err = parse(&body).unwrap_err();
        assert!(
            matches!(
                err,
                Schema1Error::DuplicateId {
                    first: 0,
                    again: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn rejects_malformed_manifests() {
        let one = [(BLOB_A, v1(&id('a'), "", ""))];
        let mut value: serde_json::Value = serde_json::from_slice(&manifest_of(&one)).unwrap();
        let variant = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = value.clone();
            f(&mut v);
            parse(&serde_json::to_vec(&v).unwrap()).unwrap_err()
        };
        assert!(matches!(
            variant(&|v| v["schemaVersion"] = 2.into()),
            Schema1Error::Version(2)
        ));
        assert!(matches!(
            variant(&|v| v["Layers"] = serde_json::json!([])),
            Schema1Error::Ambiguous("layers")
        ));
        assert!(matches!(
            variant(&|v| v["fsLayers"] = serde_json::json!([])),
            Schema1Error::LengthMismatch {
                fs_layers: 0,
                history: 1
            }
        ));
        assert!(matches!(
            variant(&|v| v["fsLayers"][0]["blobSum"] = "sha256:nope".into()),
            Schema1Error::BlobSum { index: 0, .. }
        ));
        assert!(matches!(
            variant(&|v| v["history"][0]["v1Compatibility"] = "{not json".into()),
            Schema1Error::Compat { index: 0, .. }
        ));
        assert!(matches!(
            variant(&|v| v["history"][0]["v1Compatibility"] =
                v1(&id('a'), "", r#","created":"last tuesday""#).into()),
            Schema1Error::Compat { index: 0, .. }
        ));
        assert!(matches!(
            variant(&|v| v["history"][0]["v1Compatibility"] =
                v1(&id('a'), "", r#","container_config":{"Cmd":"sh"}"#).into()),
            Schema1Error::Compat { index: 0, .. }
        ));
        assert!(matches!(
            variant(&|v| v["name"] = 5.into()),
            Schema1Error::Json(_)
        ));
        value["fsLayers"] = serde_json::json!([]);
        value["history"] = serde_json::json!([]);
        assert!(matches!(
            parse(&serde_json::to_vec(&value).unwrap()),
            Err(Schema1Error::NoLayers)
        ));
    }
}
