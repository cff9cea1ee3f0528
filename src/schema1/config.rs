//! The image config skopeo builds for a converted schema1 image.
//!
//! containers/image (`manifest/docker_schema1.go`, `ToSchema2Config`) makes
//! the Docker config from the top history entry's v1Compatibility, kept as
//! raw JSON with a few keys deleted and `rootfs`/`history` added, written as
//! a Go map (keys sorted). For an OCI target it then decodes that into the
//! image-spec `Image` struct and encodes it again (`OCIConfig` in
//! `internal/image/docker_schema2.go`), which drops every Docker-only field
//! and fixes the key order. The invariant: both functions here return the
//! bytes skopeo writes for the same manifest and diff IDs, so the config
//! digest of an airlock conversion equals skopeo's.
//!
//! The tables below are the Go structs involved, field for field. They
//! follow containers/image v5.36 with image-spec v1.1.1 (ArgsEscaped
//! present; `variant` after `os.features`).

use super::gojson::{self, Kind};
use super::gotype::{self, Field, Ty, Val};

const fn field(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        omitempty: false,
    }
}

const fn omitempty(name: &'static str, ty: Ty) -> Field {
    Field {
        name,
        ty,
        omitempty: true,
    }
}

const STRINGS: Ty = Ty::List(&Ty::Str);
const STRING_SET: Ty = Ty::Map(&Ty::Unit);

/// `manifest.Schema1V1Compatibility`: what skopeo reads of every entry.
pub(crate) static V1_COMPAT: [Field; 7] = [
    field("id", Ty::Str),
    omitempty("parent", Ty::Str),
    omitempty("comment", Ty::Str),
    field("created", Ty::Time),
    omitempty("container_config", Ty::Struct(&[field("Cmd", STRINGS)])),
    omitempty("author", Ty::Str),
    omitempty("throwaway", Ty::Bool),
];
pub(crate) const COMPAT_ID: usize = 0;
pub(crate) const COMPAT_PARENT: usize = 1;
const COMPAT_COMMENT: usize = 2;
const COMPAT_CREATED: usize = 3;
const COMPAT_CONTAINER_CONFIG: usize = 4;
const COMPAT_AUTHOR: usize = 5;
pub(crate) const COMPAT_THROWAWAY: usize = 6;

/// `manifest.Schema2HealthConfig`.
static HEALTH: [Field; 6] = [
    omitempty("Test", STRINGS),
    omitempty("StartPeriod", Ty::Int),
    omitempty("StartInterval", Ty::Int),
    omitempty("Interval", Ty::Int),
    omitempty("Timeout", Ty::Int),
    omitempty("Retries", Ty::Int),
];

/// `manifest.Schema2Config` (docker's container config).
static DOCKER_CONFIG: [Field; 25] = [
    field("Hostname", Ty::Str),
    field("Domainname", Ty::Str),
    field("User", Ty::Str),
    field("AttachStdin", Ty::Bool),
    field("AttachStdout", Ty::Bool),
    field("AttachStderr", Ty::Bool),
    omitempty("ExposedPorts", STRING_SET),
    field("Tty", Ty::Bool),
    field("OpenStdin", Ty::Bool),
    field("StdinOnce", Ty::Bool),
    field("Env", STRINGS),
    field("Cmd", Ty::StrSlice),
    omitempty("Healthcheck", Ty::Ptr(&Ty::Struct(&HEALTH))),
    omitempty("ArgsEscaped", Ty::Bool),
    field("Image", Ty::Str),
    field("Volumes", STRING_SET),
    field("WorkingDir", Ty::Str),
    field("Entrypoint", Ty::StrSlice),
    omitempty("NetworkDisabled", Ty::Bool),
    omitempty("MacAddress", Ty::Str),
    field("OnBuild", STRINGS),
    field("Labels", Ty::Map(&Ty::Str)),
    omitempty("StopSignal", Ty::Str),
    omitempty("StopTimeout", Ty::Ptr(&Ty::Int)),
    omitempty("Shell", Ty::StrSlice),
];

/// `manifest.Schema2V1Image`: the top entry must decode as one.
static V1_IMAGE: [Field; 13] = [
    omitempty("id", Ty::Str),
    omitempty("parent", Ty::Str),
    omitempty("comment", Ty::Str),
    field("created", Ty::Time),
    omitempty("container", Ty::Str),
    // omitempty has no effect on a struct in Go.
    omitempty("container_config", Ty::Struct(&DOCKER_CONFIG)),
    omitempty("docker_version", Ty::Str),
    omitempty("author", Ty::Str),
    omitempty("config", Ty::Ptr(&Ty::Struct(&DOCKER_CONFIG))),
    omitempty("architecture", Ty::Str),
    omitempty("variant", Ty::Str),
    omitempty("os", Ty::Str),
    omitempty("Size", Ty::Int),
];
const V1_IMAGE_DOCKER_VERSION: usize = 6;

/// `manifest.Schema2History`.
static DOCKER_HISTORY: [Field; 5] = [
    field("created", Ty::Time),
    omitempty("author", Ty::Str),
    omitempty("created_by", Ty::Str),
    omitempty("comment", Ty::Str),
    omitempty("empty_layer", Ty::Bool),
];

/// image-spec `v1.ImageConfig`.
static OCI_CONFIG: [Field; 10] = [
    omitempty("User", Ty::Str),
    omitempty("ExposedPorts", STRING_SET),
    omitempty("Env", STRINGS),
    omitempty("Entrypoint", STRINGS),
    omitempty("Cmd", STRINGS),
    omitempty("Volumes", STRING_SET),
    omitempty("WorkingDir", Ty::Str),
    omitempty("Labels", Ty::Map(&Ty::Str)),
    omitempty("StopSignal", Ty::Str),
    omitempty("ArgsEscaped", Ty::Bool),
];

/// image-spec `v1.History`.
static OCI_HISTORY: [Field; 5] = [
    omitempty("created", Ty::Ptr(&Ty::Time)),
    omitempty("created_by", Ty::Str),
    omitempty("author", Ty::Str),
    omitempty("comment", Ty::Str),
    omitempty("empty_layer", Ty::Bool),
];

/// image-spec `v1.Image`, with `v1.Platform` embedded (its fields promoted
/// in place, as Go does).
static OCI_IMAGE: [Field; 10] = [
    omitempty("created", Ty::Ptr(&Ty::Time)),
    omitempty("author", Ty::Str),
    field("architecture", Ty::Str),
    field("os", Ty::Str),
    omitempty("os.version", Ty::Str),
    omitempty("os.features", STRINGS),
    omitempty("variant", Ty::Str),
    omitempty("config", Ty::Struct(&OCI_CONFIG)),
    field(
        "rootfs",
        Ty::Struct(&[field("type", Ty::Str), field("diff_ids", STRINGS)]),
    ),
    omitempty("history", Ty::List(&Ty::Struct(&OCI_HISTORY))),
];

/// Keys `ToSchema2Config` deletes from the raw top entry.
const DROPPED: [&str; 6] = ["id", "parent", "parent_id", "layer_id", "throwaway", "Size"];

/// Decodes one v1Compatibility string as skopeo does on every entry.
pub(crate) fn decode_compat(text: &str) -> Result<Vec<Val>, String> {
    let node = gojson::parse(text)?;
    let ty = Ty::Struct(&V1_COMPAT);
    let mut val = ty.zero();
    ty.decode(&node, &mut val)?;
    let Val::Struct(vals) = val else {
        unreachable!("a struct type decodes into a struct value")
    };
    Ok(vals)
}

/// One history entry of the new config, from an entry's decoded fields.
fn history_item(compat: &[Val]) -> Val {
    let cmd = match &compat[COMPAT_CONTAINER_CONFIG] {
        Val::Struct(cc) => match &cc[0] {
            Val::List(Some(words)) => words
                .iter()
                .map(|w| match w {
                    Val::Str(s) => s.as_str(),
                    _ => "",
                })
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        },
        _ => String::new(),
    };
    Val::Struct(vec![
        compat[COMPAT_CREATED].clone(),
        compat[COMPAT_AUTHOR].clone(),
        Val::Str(cmd),
        compat[COMPAT_COMMENT].clone(),
        compat[COMPAT_THROWAWAY].clone(),
    ])
}

/// The Docker image config: `ToSchema2Config`.
///
/// `top` is history[0]'s v1Compatibility; `compats` are every entry's
/// decoded fields, top first; `diff_ids` are for the non-throwaway entries,
/// base first.
pub(crate) fn docker_config(
    top: &str,
    compats: &[Vec<Val>],
    diff_ids: &[String],
) -> Result<Vec<u8>, String> {
    let image_ty = Ty::Struct(&V1_IMAGE);
    let mut image = image_ty.zero();
    image_ty.decode(&gojson::parse(top)?, &mut image)?;

    // Configs from Docker before 1.8.3 lack fields that are not omitempty;
    // skopeo re-encodes them through the struct to add those, as docker's
    // own pull did.
    let reencoded;
    let mut config_text = top;
    if let Val::Struct(fields) = &image {
        let version = gotype::str_at(fields, V1_IMAGE_DOCKER_VERSION);
        if !version.is_empty() && version_less(version, "1.8.3") {
            let mut out = String::new();
            image_ty.encode(&image, &mut out);
            reencoded = out;
            config_text = &reencoded;
        }
    }

    let mut history = String::new();
    const HISTORY_TY: Ty = Ty::List(&Ty::Struct(&DOCKER_HISTORY));
    let items = compats.iter().rev().map(|c| history_item(c)).collect();
    HISTORY_TY.encode(&Val::List(Some(items)), &mut history);

    // Schema2RootFS.DiffIDs is omitempty.
    let mut rootfs = String::from(r#"{"type":"layers""#);
    if !diff_ids.is_empty() {
        rootfs.push_str(r#","diff_ids":"#);
        let ids = diff_ids.iter().map(|d| Val::Str(d.clone())).collect();
        STRINGS.encode(&Val::List(Some(ids)), &mut rootfs);
    }
    rootfs.push('}');

    // map[string]*json.RawMessage: the last duplicate wins, keys are
    // sorted by their bytes, values are compacted source text.
    let node = gojson::parse(config_text)?;
    let Kind::Object(members) = &node.kind else {
        return Err("v1Compatibility is not a JSON object".to_string());
    };
    let mut raw = std::collections::BTreeMap::new();
    for (key, value) in members {
        let mut compact = String::new();
        gojson::write_compact(&mut compact, value.raw);
        raw.insert(key.as_str(), compact);
    }
    for key in DROPPED {
        raw.remove(key);
    }
    raw.insert("rootfs", rootfs);
    raw.insert("history", history);

    let mut out = String::from("{");
    for (i, (key, value)) in raw.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        gojson::write_str(&mut out, key);
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    Ok(out.into_bytes())
}

/// The OCI image config: the Docker config decoded into image-spec's
/// `Image` and encoded again.
pub(crate) fn oci_config(docker_config: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(docker_config).map_err(|e| e.to_string())?;
    let ty = Ty::Struct(&OCI_IMAGE);
    let mut image = ty.zero();
    ty.decode(&gojson::parse(text)?, &mut image)?;
    let mut out = String::new();
    ty.encode(&image, &mut out);
    Ok(out.into_bytes())
}

/// docker's `versions.LessThan`: dot-separated integers, where a part that
/// is not a number counts as 0.
fn version_less(a: &str, b: &str) -> bool {
    let parts = |v: &str| -> Vec<i64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (a, b) = (parts(a), parts(b));
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x < y;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(top: &str, below: &[&str], diff_ids: &[&str]) -> String {
        let mut compats = vec![decode_compat(top).unwrap()];
        compats.extend(below.iter().map(|c| decode_compat(c).unwrap()));
        let ids: Vec<String> = diff_ids.iter().map(|s| s.to_string()).collect();
        String::from_utf8(docker_config(top, &compats, &ids).unwrap()).unwrap()
    }

    const ID_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const ID_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn compares_docker_versions_numerically() {
        assert!(version_less("1.8.2", "1.8.3"));
        assert!(version_less("1.8.3-dev", "1.8.3"));
        assert!(version_less("1.7", "1.8.3"));
        assert!(!version_less("1.8.3", "1.8.3"));
        assert!(!version_less("1.10.0", "1.8.3"));
        assert!(!version_less("1.8.3.1", "1.8.3"));
    }

    #[test]
    fn keeps_raw_values_sorts_keys_and_drops_v1_fields() {
        let top = format!(
            r#"{{"id":"{ID_A}","parent":"{ID_B}","Size":12,"parent_id":"x","layer_id":"y",
            "throwaway":false,"os":"linux","zz":1.50,"config":{{"Env" : ["A=<1>"]}},
            "architecture":"amd64","created":"2020-01-02T03:04:05.100Z"}}"#
        );
        let base = format!(r#"{{"id":"{ID_B}","created":"2020-01-01T00:00:00Z"}}"#);
        let out = convert(&top, &[&base], &["sha256:11"]);
        assert_eq!(
            out,
            r#"{"architecture":"amd64","config":{"Env":["A=\u003c1\u003e"]},"created":"2020-01-02T03:04:05.100Z","history":[{"created":"2020-01-01T00:00:00Z"},{"created":"2020-01-02T03:04:05.1Z"}],"os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:11"]},"zz":1.50}"#
        );
    }

    #[test]
    fn builds_history_from_cmd_author_comment_and_throwaway() {
        let top = format!(
            r##"{{"id":"{ID_A}","parent":"{ID_B}","throwaway":true,"author":"me <m@x>",
            "comment":"c","container_config":{{"Cmd":["/bin/sh","-c","#(nop) ","CMD [\"x\"]"]}}}}"##
        );
        let base = format!(r#"{{"id":"{ID_B}","container_config":{{"Cmd":null}}}}"#);
        let out = convert(&top, &[&base], &[]);
        assert_eq!(
            out,
            r##"{"author":"me \u003cm@x\u003e","comment":"c","container_config":{"Cmd":["/bin/sh","-c","#(nop) ","CMD [\"x\"]"]},"history":[{"created":"0001-01-01T00:00:00Z"},{"created":"0001-01-01T00:00:00Z","author":"me \u003cm@x\u003e","created_by":"/bin/sh -c #(nop)  CMD [\"x\"]","comment":"c","empty_layer":true}],"rootfs":{"type":"layers"}}"##
        );
    }

    #[test]
    fn reencodes_configs_of_docker_before_1_8_3() {
        let top = format!(
            r#"{{"id":"{ID_A}","docker_version":"1.6.2","created":"2015-05-01T00:00:00Z",
            "config":{{"Cmd":"sh","Env":null}},"Size":7}}"#
        );
        let out = convert(&top, &[], &["sha256:11"]);
        let expected = concat!(
            r#"{"config":{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"#,
            r#""AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,"#,
            r#""StdinOnce":false,"Env":null,"Cmd":["sh"],"Image":"","Volumes":null,"#,
            r#""WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null},"#,
            r#""container_config":{"Hostname":"","Domainname":"","User":"","AttachStdin":false,"#,
            r#""AttachStdout":false,"AttachStderr":false,"Tty":false,"OpenStdin":false,"#,
            r#""StdinOnce":false,"Env":null,"Cmd":null,"Image":"","Volumes":null,"#,
            r#""WorkingDir":"","Entrypoint":null,"OnBuild":null,"Labels":null},"#,
            r#""created":"2015-05-01T00:00:00Z","docker_version":"1.6.2","#,
            r#""history":[{"created":"2015-05-01T00:00:00Z"}],"#,
            r#""rootfs":{"type":"layers","diff_ids":["sha256:11"]}}"#
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn rejects_top_entry_that_is_not_a_docker_v1_image() {
        for bad in [
            format!(r#"{{"id":"{ID_A}","Size":"big"}}"#),
            format!(r#"{{"id":"{ID_A}","config":{{"ExposedPorts":["80/tcp"]}}}}"#),
            format!(r#"{{"id":"{ID_A}","config":{{"Healthcheck":{{"Retries":1.5}}}}}}"#),
        ] {
            let compats = vec![decode_compat(&bad).unwrap()];
            assert!(docker_config(&bad, &compats, &[]).is_err(), "{bad}");
        }
    }

    /// Field order and ArgsEscaped follow image-spec v1.1.1, as current
    /// skopeo builds with. skopeo 1.9.3 (image-spec 1.1.0-rc2) writes
    /// `variant` right after `architecture` and drops ArgsEscaped.
    #[test]
    fn oci_config_keeps_only_image_spec_fields_in_struct_order() {
        let docker = concat!(
            r#"{"architecture":"arm","config":{"Hostname":"h","Cmd":["a&b"],"Env":null,"#,
            r#""Labels":{"b":"2","a":"1"},"ArgsEscaped":true,"Volumes":null},"#,
            r#""container_config":{"Cmd":["x"]},"created":"2020-01-02T03:04:05.120Z","#,
            r#""docker_version":"18.09","history":[{"created":"2020-01-01T00:00:00Z","#,
            r#""author":"a","created_by":"c","empty_layer":true}],"os":"linux","#,
            r#""rootfs":{"type":"layers"},"variant":"v7"}"#
        );
        let out = String::from_utf8(oci_config(docker.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            out,
            concat!(
                r#"{"created":"2020-01-02T03:04:05.12Z","architecture":"arm","os":"linux","#,
                r#""variant":"v7","config":{"Cmd":["a\u0026b"],"Labels":{"a":"1","b":"2"},"#,
                r#""ArgsEscaped":true},"rootfs":{"type":"layers","diff_ids":null},"#,
                r#""history":[{"created":"2020-01-01T00:00:00Z","created_by":"c","author":"a","#,
                r#""empty_layer":true}]}"#
            )
        );
    }
}
