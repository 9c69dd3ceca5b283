//! Input projection: the values a rule's declared JSON pointers
//! (RFC 6901) find in a payload, read in one pass over its text.
//!
//! The engine uses it to parse each payload once, natively, for
//! `select-projected` (see `wit/rule.wit`); the Rust SDK uses the same code
//! when a rule reads a field from a whole payload, so a rule gets the same
//! value on both paths.
//!
//! ```
//! use sluice_fields::{Projection, Value};
//!
//! let p = Projection::new(&["/repo", "/pr/number", "/labels"]).unwrap();
//! let mut out = Vec::new();
//! p.project(r#"{"pr":{"number":7},"repo":"acme/x","labels":["a"]}"#, &mut out).unwrap();
//! assert_eq!(out, [Value::Text("acme/x".into()), Value::Int(7), Value::Json(r#"["a"]"#)]);
//! ```
//!
//! What it does with payloads as they come:
//! - an object key with escapes matches its decoded text (`"re\u0070o"` is
//!   `repo`);
//! - of duplicate keys the last one counts, as in JavaScript and Python;
//! - a number is [`Value::Int`] when it is a whole number within `i64`
//!   written without a fraction or exponent, [`Value::Float`] otherwise
//!   (`-0` too), as serde_json reads them;
//! - an object or array is [`Value::Json`]: its text as the payload has it.

#![deny(missing_docs)]

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Most pointers one projection may hold.
pub const MAX_FIELDS: usize = 64;

/// What a pointer finds in one payload. Mirrors the WIT's `field-kind`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value<'a> {
    /// The pointer leads nowhere in this payload.
    #[default]
    Absent,
    /// JSON `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A whole number within `i64`.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string, decoded (borrowed when it had no escapes).
    Text(Cow<'a, str>),
    /// An object or an array, as JSON text.
    Json(&'a str),
}

impl<'a> Value<'a> {
    /// The string, when it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The number as `i64`, when it is a whole number within `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The number as `f64`, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(n) => Some(*n as f64),
            Value::Float(x) => Some(*x),
            _ => None,
        }
    }

    /// The boolean, when it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// True when the pointer found nothing.
    pub fn is_absent(&self) -> bool {
        matches!(self, Value::Absent)
    }

    /// True for JSON `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// Split a JSON pointer into its reference tokens, decoded (`~1` is `/`,
/// `~0` is `~`). `""` is the whole document.
pub fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!(
            "`{pointer}` is not a JSON pointer: it must be empty or start with `/` (e.g. `/{pointer}`)"
        ));
    };
    rest.split('/')
        .map(|t| {
            let mut out = String::with_capacity(t.len());
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => out.push('~'),
                    Some('1') => out.push('/'),
                    _ => {
                        return Err(format!(
                            "`{pointer}` is not a JSON pointer: `~` must be followed by 0 or 1 \
                             (`~0` for `~`, `~1` for `/`)"
                        ));
                    }
                }
            }
            Ok(out)
        })
        .collect()
}

/// One step of the pointers: which declared fields end here, and where
/// they go on.
#[derive(Debug, Clone, Default)]
struct Node {
    /// Indexes of the fields whose pointer ends at this node.
    ends: Vec<usize>,
    /// Tokens below this node, each with the array index it names (when
    /// it is one: `0`, or digits without a leading zero).
    children: Vec<(String, Option<usize>, Node)>,
}

impl Node {
    fn child(&self, key: &str) -> Option<usize> {
        self.children.iter().position(|(k, _, _)| k == key)
    }

    fn child_at(&self, index: usize) -> Option<usize> {
        self.children.iter().position(|(_, i, _)| *i == Some(index))
    }
}

fn array_index(token: &str) -> Option<usize> {
    let digits = token.bytes().all(|b| b.is_ascii_digit());
    if token.is_empty() || !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

/// A set of JSON pointers, compiled into one tree so that a payload is
/// read once however many of them there are.
#[derive(Debug, Clone)]
pub struct Projection {
    fields: Vec<String>,
    root: Node,
}

impl Projection {
    /// Compile `pointers`. Refuses a pointer that is not one, a duplicate,
    /// and more than [`MAX_FIELDS`]; the message names the pointer.
    pub fn new<S: AsRef<str>>(pointers: &[S]) -> Result<Self, String> {
        if pointers.len() > MAX_FIELDS {
            return Err(format!(
                "{} fields are declared; at most {MAX_FIELDS} are allowed",
                pointers.len()
            ));
        }
        let mut root = Node::default();
        let mut fields = Vec::with_capacity(pointers.len());
        for (i, p) in pointers.iter().enumerate() {
            let p = p.as_ref();
            if fields.iter().any(|f: &String| f == p) {
                return Err(format!("`{p}` is declared twice"));
            }
            let mut node = &mut root;
            for token in tokens(p)? {
                let at = match node.child(&token) {
                    Some(at) => at,
                    None => {
                        let index = array_index(&token);
                        node.children.push((token, index, Node::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[at].2;
            }
            node.ends.push(i);
            fields.push(p.to_owned());
        }
        Ok(Self { fields, root })
    }

    /// The pointers, in the order given.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// Append to `out` the value of each pointer in `json`, in the order
    /// of [`fields`](Self::fields). Fails only on text that is not JSON;
    /// then nothing is appended.
    pub fn project<'a>(
        &self,
        json: &'a str,
        out: &mut Vec<Value<'a>>,
    ) -> Result<(), serde_json::Error> {
        let start = out.len();
        out.resize(start + self.fields.len(), Value::Absent);
        let result = walk_str(json, &self.root, &mut out[start..]);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

/// Read `text` (one JSON value) for `node`.
fn walk_str<'a>(
    text: &'a str,
    node: &Node,
    out: &mut [Value<'a>],
) -> Result<(), serde_json::Error> {
    if node.children.is_empty() {
        let raw: &RawValue = serde_json::from_str(text)?;
        return leaf(raw.get(), node, out);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let found = de.deserialize_any(Walk { node })?;
    de.end()?;
    if !node.ends.is_empty() {
        leaf(text.trim_matches(is_json_space), node, out)?;
    }
    for (at, raw) in found {
        let child = &node.children[at].2;
        if child.children.is_empty() {
            leaf(raw.get(), child, out)?;
        } else {
            walk_str(raw.get(), child, out)?;
        }
    }
    Ok(())
}

fn is_json_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Give `raw` (one JSON value, no surrounding space) to the fields ending
/// at `node`.
fn leaf<'a>(raw: &'a str, node: &Node, out: &mut [Value<'a>]) -> Result<(), serde_json::Error> {
    if node.ends.is_empty() {
        return Ok(());
    }
    let value = match raw.as_bytes().first() {
        Some(b'n') => Value::Null,
        Some(b't') => Value::Bool(true),
        Some(b'f') => Value::Bool(false),
        Some(b'"') => {
            let inner = &raw[1..raw.len() - 1];
            if inner.contains('\\') {
                Value::Text(Cow::Owned(serde_json::from_str::<String>(raw)?))
            } else {
                Value::Text(Cow::Borrowed(inner))
            }
        }
        Some(b'{' | b'[') => Value::Json(raw),
        _ => {
            // `-0` is a float to serde_json (negative zero), so here too.
            let whole = !raw.contains(['.', 'e', 'E']) && raw != "-0";
            match raw.parse::<i64>() {
                Ok(n) if whole => Value::Int(n),
                _ => Value::Float(serde_json::from_str::<f64>(raw)?),
            }
        }
    };
    for &i in &node.ends {
        out[i] = value.clone();
    }
    Ok(())
}

/// Visits one object or array for a node with children: the raw text of
/// each child found (the last, for a duplicate key), by child position.
struct Walk<'n> {
    node: &'n Node,
}

type Found<'a> = Vec<(usize, &'a RawValue)>;

fn keep<'a>(found: &mut Found<'a>, at: usize, raw: &'a RawValue) {
    match found.iter_mut().find(|(i, _)| *i == at) {
        Some(slot) => slot.1 = raw,
        None => found.push((at, raw)),
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Found<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = Vec::new();
        while let Some(key) = map.next_key_seed(Key)? {
            match self.node.child(&key) {
                Some(at) => keep(&mut found, at, map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = Vec::new();
        let mut index = 0;
        loop {
            match self.node.child_at(index) {
                Some(at) => match seq.next_element::<&'de RawValue>()? {
                    Some(raw) => keep(&mut found, at, raw),
                    None => break,
                },
                None => {
                    if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                }
            }
            index += 1;
        }
        Ok(found)
    }

    // Scalars have no children: every pointer below them is absent.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project<'a>(pointers: &[&str], json: &'a str) -> Vec<Value<'a>> {
        let mut out = Vec::new();
        Projection::new(pointers)
            .unwrap()
            .project(json, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn finds_each_kind() {
        let json = r#"{"s":"x","e":"a\"b","n":null,"t":true,"f":false,"i":-3,"x":1.5,
            "big":18446744073709551615,"exp":1e2,"o":{"a":[1, 2]},"a":[{"k":"v"}]}"#;
        let got = project(
            &[
                "/s",
                "/e",
                "/n",
                "/t",
                "/f",
                "/i",
                "/x",
                "/big",
                "/exp",
                "/o",
                "/a/0/k",
                "/a/1",
                "/nope",
                "/s/deeper",
            ],
            json,
        );
        assert_eq!(
            got,
            [
                Value::Text("x".into()),
                Value::Text("a\"b".into()),
                Value::Null,
                Value::Bool(true),
                Value::Bool(false),
                Value::Int(-3),
                Value::Float(1.5),
                Value::Float(18446744073709551615.0),
                Value::Float(100.0),
                Value::Json(r#"{"a":[1, 2]}"#),
                Value::Text("v".into()),
                Value::Absent,
                Value::Absent,
                Value::Absent,
            ]
        );
    }

    #[test]
    fn escaped_keys_match_and_the_last_duplicate_counts() {
        let json =
            r#"{"re\u0070o":"first","x":{"repo":"decoy"},"t":"\"repo\":\"no\"","repo":"last"}"#;
        assert_eq!(project(&["/repo"], json), [Value::Text("last".into())]);
        let json = r#"{"a":{"b":1,"c":2},"a":{"b":3}}"#;
        assert_eq!(
            project(&["/a/b", "/a/c"], json),
            [Value::Int(3), Value::Absent]
        );
    }

    #[test]
    fn pointers_nest_and_escape() {
        let json = r#"{"a/b":{"~":7},"a":{"":5},"0":"zero","arr":["x","y"]}"#;
        assert_eq!(
            project(
                &["/a~1b/~0", "/a/", "/0", "/arr/1", "/arr/01", "/arr/-", "/a"],
                json
            ),
            [
                Value::Int(7),
                Value::Int(5),
                Value::Text("zero".into()),
                Value::Text("y".into()),
                Value::Absent,
                Value::Absent,
                Value::Json(r#"{"":5}"#),
            ]
        );
        assert_eq!(project(&[""], r#" {"a":1} "#), [Value::Json(r#"{"a":1}"#)]);
    }

    #[test]
    fn bad_pointers_and_bad_json_are_named() {
        assert!(
            Projection::new(&["repo"])
                .unwrap_err()
                .contains("`repo` is not a JSON pointer")
        );
        assert!(
            Projection::new(&["/a~2"])
                .unwrap_err()
                .contains("`~` must be followed")
        );
        assert!(
            Projection::new(&["/a", "/a"])
                .unwrap_err()
                .contains("declared twice")
        );
        let many: Vec<String> = (0..65).map(|i| format!("/f{i}")).collect();
        assert!(Projection::new(&many).unwrap_err().contains("at most 64"));
        let mut out = vec![Value::Null];
        assert!(
            Projection::new(&["/a"])
                .unwrap()
                .project("{\"a\":", &mut out)
                .is_err()
        );
        assert_eq!(out, [Value::Null], "nothing appended on an error");
    }

    /// The projection agrees with serde_json's own pointer on the value
    /// found, for random documents.
    #[test]
    fn agrees_with_serde_json_pointer() {
        let docs = [
            r#"{"a":{"b":[1,{"c":"d\n"}]},"e":[[]],"f":{}}"#,
            r#"{"a":[0,1,2,3,4,5,6,7,8,9,10,{"z":null}],"b":-0,"c":1.0}"#,
        ];
        let pointers = [
            "/a", "/a/b", "/a/b/1/c", "/a/11/z", "/e/0", "/f", "/b", "/c", "/a/b/0",
        ];
        for doc in docs {
            let parsed: serde_json::Value = serde_json::from_str(doc).unwrap();
            for (p, got) in pointers.iter().zip(project(&pointers, doc)) {
                let want = parsed.pointer(p);
                match (want, &got) {
                    (None, Value::Absent) => {}
                    (Some(serde_json::Value::String(s)), Value::Text(t)) => assert_eq!(s, t),
                    (
                        Some(v @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))),
                        Value::Json(j),
                    ) => {
                        assert_eq!(v, &serde_json::from_str::<serde_json::Value>(j).unwrap())
                    }
                    (Some(serde_json::Value::Number(n)), Value::Int(i)) => {
                        assert_eq!(n.as_i64(), Some(*i))
                    }
                    (Some(serde_json::Value::Number(n)), Value::Float(x)) => {
                        assert_eq!(n.as_f64(), Some(*x))
                    }
                    (Some(serde_json::Value::Null), Value::Null) => {}
                    (want, got) => panic!("{p} in {doc}: serde_json {want:?}, projection {got:?}"),
                }
            }
        }
    }
}
