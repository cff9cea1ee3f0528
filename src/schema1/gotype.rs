//! Go values as `encoding/json` decodes and encodes them.
//!
//! Each Go struct that skopeo's schema1 conversion passes a document
//! through is described by a [`Ty`] table; [`Ty::decode`] reads a parsed
//! document into a [`Val`] with Go's rules (fields matched exactly, then
//! case-insensitively; the last duplicate wins; `null` clears only what
//! Go can set to nil; any type mismatch fails, as `json.Unmarshal` reports
//! it), and [`Ty::encode`] writes it back as `json.Marshal` would. The
//! invariant: a decode followed by an encode yields the bytes of Go's
//! round trip through that struct.

use std::collections::BTreeMap;

use super::gojson::{GoTime, Kind, Node, write_str};

/// The shape of a Go type, as far as JSON decoding and encoding see it.
#[derive(Debug)]
pub(crate) enum Ty {
    Str,
    Bool,
    /// `int`, `int64`, `time.Duration`: integer literals only.
    Int,
    /// `time.Time`.
    Time,
    /// `struct{}`, the value type of Go's string sets.
    Unit,
    /// A slice: `null` decodes to nil, and nil encodes as `null`.
    List(&'static Ty),
    /// docker's `strslice.StrSlice`: a list of strings, or one string.
    StrSlice,
    /// A map with string keys, encoded with its keys sorted.
    Map(&'static Ty),
    Ptr(&'static Ty),
    Struct(&'static [Field]),
}

/// One field of a Go struct: its JSON name and whether `omitempty` is set.
#[derive(Debug)]
pub(crate) struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub omitempty: bool,
}

/// A decoded Go value. Shapes follow [`Ty`]; `None` is Go's nil.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Str(String),
    Bool(bool),
    Int(i64),
    /// `None` is the zero time.
    Time(Option<GoTime>),
    Unit,
    List(Option<Vec<Val>>),
    Map(Option<BTreeMap<String, Val>>),
    Ptr(Option<Box<Val>>),
    /// Field values in the order of the struct's fields.
    Struct(Vec<Val>),
}

impl Ty {
    /// Go's zero value of the type.
    pub fn zero(&self) -> Val {
        match self {
            Ty::Str => Val::Str(String::new()),
            Ty::Bool => Val::Bool(false),
            Ty::Int => Val::Int(0),
            Ty::Time => Val::Time(None),
            Ty::Unit => Val::Unit,
            Ty::List(_) | Ty::StrSlice => Val::List(None),
            Ty::Map(_) => Val::Map(None),
            Ty::Ptr(_) => Val::Ptr(None),
            Ty::Struct(fields) => Val::Struct(fields.iter().map(|f| f.ty.zero()).collect()),
        }
    }

    /// Decodes `node` into `into` as `json.Unmarshal` would, merging into
    /// structs, maps and pointees that already hold values.
    pub fn decode(&self, node: &Node<'_>, into: &mut Val) -> Result<(), String> {
        let mismatch = || {
            let what = match node.kind {
                Kind::Null => "null",
                Kind::Bool(_) => "a bool",
                Kind::Number => "a number",
                Kind::Str(_) => "a string",
                Kind::Array(_) => "an array",
                Kind::Object(_) => "an object",
            };
            Err(format!("expected {}, found {what}", self.describe()))
        };
        if node.is_null() {
            // Go leaves scalars and structs alone on null and sets nil-able
            // kinds to nil.
            match (self, into) {
                (Ty::List(_) | Ty::StrSlice, v) => *v = Val::List(None),
                (Ty::Map(_), v) => *v = Val::Map(None),
                (Ty::Ptr(_), v) => *v = Val::Ptr(None),
                _ => {}
            }
            return Ok(());
        }
        match (self, &node.kind, into) {
            (Ty::Str, Kind::Str(s), v) => *v = Val::Str(s.clone()),
            (Ty::Bool, Kind::Bool(b), v) => *v = Val::Bool(*b),
            (Ty::Int, Kind::Number, v) => {
                // strconv.ParseInt: no fraction, no exponent, no overflow.
                let n = node
                    .raw
                    .parse::<i64>()
                    .map_err(|_| format!("number {} is not a 64-bit integer", node.raw))?;
                *v = Val::Int(n);
            }
            // Time.UnmarshalJSON reads the raw text between the quotes.
            (Ty::Time, Kind::Str(_), v) => {
                *v = Val::Time(Some(GoTime::parse(&node.raw[1..node.raw.len() - 1])?));
            }
            (Ty::Unit, Kind::Object(_), _) => {}
            (Ty::List(elem), Kind::Array(items), v) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    let mut val = elem.zero();
                    elem.decode(item, &mut val)?;
                    out.push(val);
                }
                *v = Val::List(Some(out));
            }
            (Ty::StrSlice, Kind::Array(_), v) => Ty::List(&Ty::Str).decode(node, v)?,
            (Ty::StrSlice, Kind::Str(s), v) => *v = Val::List(Some(vec![Val::Str(s.clone())])),
            (Ty::Map(elem), Kind::Object(members), v) => {
                if !matches!(v, Val::Map(Some(_))) {
                    *v = Val::Map(Some(BTreeMap::new()));
                }
                let Val::Map(Some(map)) = v else {
                    unreachable!("set just above")
                };
                for (key, item) in members {
                    let mut val = elem.zero();
                    elem.decode(item, &mut val)?;
                    map.insert(key.clone(), val);
                }
            }
            (Ty::Ptr(inner), _, v) => {
                if !matches!(v, Val::Ptr(Some(_))) {
                    *v = Val::Ptr(Some(Box::new(inner.zero())));
                }
                let Val::Ptr(Some(pointee)) = v else {
                    unreachable!("set just above")
                };
                inner.decode(node, pointee)?;
            }
            (Ty::Struct(fields), Kind::Object(members), Val::Struct(vals)) => {
                for (key, item) in members {
                    let Some(i) = field_index(fields, key) else {
                        continue;
                    };
                    fields[i]
                        .ty
                        .decode(item, &mut vals[i])
                        .map_err(|e| format!("{}: {e}", fields[i].name))?;
                }
            }
            _ => return mismatch(),
        }
        Ok(())
    }

    fn describe(&self) -> &'static str {
        match self {
            Ty::Str => "a string",
            Ty::Bool => "a bool",
            Ty::Int => "an integer",
            Ty::Time => "an RFC 3339 time string",
            Ty::Unit | Ty::Map(_) | Ty::Struct(_) => "an object",
            Ty::List(_) => "an array",
            Ty::StrSlice => "a string or an array of strings",
            Ty::Ptr(inner) => inner.describe(),
        }
    }

    /// Appends `val` as `json.Marshal` writes a value of this type.
    pub fn encode(&self, val: &Val, out: &mut String) {
        match (self, val) {
            (Ty::Str, Val::Str(s)) => write_str(out, s),
            (Ty::Bool, Val::Bool(b)) => out.push_str(if *b { "true" } else { "false" }),
            (Ty::Int, Val::Int(n)) => out.push_str(&n.to_string()),
            (Ty::Time, Val::Time(t)) => {
                out.push('"');
                out.push_str(t.as_ref().map_or(GoTime::ZERO, GoTime::as_str));
                out.push('"');
            }
            (Ty::Unit, _) => out.push_str("{}"),
            (Ty::List(_) | Ty::StrSlice, Val::List(None))
            | (Ty::Map(_), Val::Map(None))
            | (Ty::Ptr(_), Val::Ptr(None)) => out.push_str("null"),
            (Ty::List(elem), Val::List(Some(items))) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    elem.encode(item, out);
                }
                out.push(']');
            }
            (Ty::StrSlice, v) => Ty::List(&Ty::Str).encode(v, out),
            (Ty::Map(elem), Val::Map(Some(map))) => {
                out.push('{');
                // BTreeMap<String, _> iterates in byte order, as Go sorts.
                for (i, (key, item)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, key);
                    out.push(':');
                    elem.encode(item, out);
                }
                out.push('}');
            }
            (Ty::Ptr(inner), Val::Ptr(Some(pointee))) => inner.encode(pointee, out),
            (Ty::Struct(fields), Val::Struct(vals)) => {
                out.push('{');
                let mut first = true;
                for (field, val) in fields.iter().zip(vals) {
                    if field.omitempty && is_empty(val) {
                        continue;
                    }
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    write_str(out, field.name);
                    out.push(':');
                    field.ty.encode(val, out);
                }
                out.push('}');
            }
            (ty, val) => unreachable!("value {val:?} does not have the shape of {ty:?}"),
        }
    }
}

/// Go's `omitempty` test. Structs and times are never empty.
fn is_empty(val: &Val) -> bool {
    match val {
        Val::Str(s) => s.is_empty(),
        Val::Bool(b) => !b,
        Val::Int(n) => *n == 0,
        Val::List(items) => items.as_ref().is_none_or(Vec::is_empty),
        Val::Map(map) => map.as_ref().is_none_or(BTreeMap::is_empty),
        Val::Ptr(p) => p.is_none(),
        Val::Time(_) | Val::Unit | Val::Struct(_) => false,
    }
}

/// The field `key` decodes into: an exact name first, then one equal under
/// Unicode simple case folding (Go's `bytes.EqualFold`).
pub(crate) fn field_index(fields: &[Field], key: &str) -> Option<usize> {
    fields
        .iter()
        .position(|f| f.name == key)
        .or_else(|| fields.iter().position(|f| fold_eq(f.name, key)))
}

/// Case-insensitive equality of an ASCII field name and a key, including
/// the two non-ASCII letters that fold to ASCII ones: the Kelvin sign
/// (to k) and the long s (to s).
pub(crate) fn fold_eq(name: &str, key: &str) -> bool {
    let mut key = key.chars();
    for n in name.chars() {
        let Some(k) = key.next() else {
            return false;
        };
        let same = k.eq_ignore_ascii_case(&n)
            || (k == '\u{212a}' && n.eq_ignore_ascii_case(&'k'))
            || (k == '\u{17f}' && n.eq_ignore_ascii_case(&'s'));
        if !same {
            return false;
        }
    }
    key.next().is_none()
}

/// Field `i` of a decoded struct as a string (`""` for anything else).
pub(crate) fn str_at(vals: &[Val], i: usize) -> &str {
    match &vals[i] {
        Val::Str(s) => s,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema1::gojson::parse;

    static INNER: [Field; 2] = [
        Field {
            name: "Cmd",
            ty: Ty::StrSlice,
            omitempty: true,
        },
        Field {
            name: "Labels",
            ty: Ty::Map(&Ty::Str),
            omitempty: false,
        },
    ];
    static OUTER: [Field; 4] = [
        Field {
            name: "id",
            ty: Ty::Str,
            omitempty: true,
        },
        Field {
            name: "Size",
            ty: Ty::Int,
            omitempty: true,
        },
        Field {
            name: "created",
            ty: Ty::Time,
            omitempty: false,
        },
        Field {
            name: "config",
            ty: Ty::Ptr(&Ty::Struct(&INNER)),
            omitempty: true,
        },
    ];
    const OUTER_TY: Ty = Ty::Struct(&OUTER);

    fn roundtrip(json: &str) -> Result<String, String> {
        let mut val = OUTER_TY.zero();
        OUTER_TY.decode(&parse(json)?, &mut val)?;
        let mut out = String::new();
        OUTER_TY.encode(&val, &mut out);
        Ok(out)
    }

    #[test]
    fn decodes_fields_case_insensitively_with_the_last_key_winning() {
        assert_eq!(
            roundtrip(r#"{"ID":"a","id":"b","unknown":[1],"SIZE":3}"#).unwrap(),
            r#"{"id":"b","Size":3,"created":"0001-01-01T00:00:00Z"}"#
        );
        assert_eq!(
            roundtrip("{\"\u{17f}ize\":4,\"id\":\"x\",\"Id\":\"y\"}").unwrap(),
            r#"{"id":"y","Size":4,"created":"0001-01-01T00:00:00Z"}"#
        );
    }

    #[test]
    fn merges_repeated_objects_and_sorts_map_keys() {
        let out = roundtrip(
            r#"{"config":{"Cmd":"sh","Labels":{"b":"1"}},"config":{"labels":{"a":null}}}"#,
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"created":"0001-01-01T00:00:00Z","config":{"Cmd":["sh"],"Labels":{"a":"","b":"1"}}}"#
        );
        let out = roundtrip(r#"{"config":{"Cmd":[]}}"#).unwrap();
        assert!(out.ends_with(r#""config":{"Labels":null}}"#), "{out}");
    }

    #[test]
    fn null_leaves_scalars_and_clears_pointers() {
        let out = roundtrip(r#"{"id":"a","id":null,"config":{},"config":null,"created":null}"#);
        assert_eq!(
            out.unwrap(),
            r#"{"id":"a","created":"0001-01-01T00:00:00Z"}"#
        );
    }

    #[test]
    fn rejects_type_mismatches_go_rejects() {
        for bad in [
            r#"{"id":1}"#,
            r#"{"Size":1.0}"#,
            r#"{"Size":1e3}"#,
            r#"{"Size":"1"}"#,
            r#"{"Size":99999999999999999999}"#,
            r#"{"created":"yesterday"}"#,
            r#"{"created":1}"#,
            r#"{"config":[]}"#,
            r#"{"config":{"Cmd":[1]}}"#,
            r#"{"config":{"Labels":{"a":1}}}"#,
            r#"[]"#,
        ] {
            assert!(roundtrip(bad).is_err(), "{bad}");
        }
    }
}
