//! Input projection: the values a rule's declared JSON pointers
//! (RFC 6901) find in a payload, read in one pass over its text that skips
//! what no pointer leads to without decoding it.
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

    /// Whether this is what serde_json finds at the same pointer (`found`,
    /// from `serde_json::Value::pointer` on the same text): the same kind
    /// and value, an object or array compared parsed.
    pub fn is_serde(&self, found: Option<&serde_json::Value>) -> bool {
        use serde_json::Value as J;
        match (found, self) {
            (None, Value::Absent) | (Some(J::Null), Value::Null) => true,
            (Some(J::Bool(b)), Value::Bool(c)) => b == c,
            (Some(J::String(s)), Value::Text(t)) => s == t,
            (Some(J::Number(n)), Value::Int(i)) => n.as_i64() == Some(*i),
            (Some(J::Number(n)), Value::Float(x)) => n.as_i64().is_none() && n.as_f64() == Some(*x),
            (Some(v @ (J::Object(_) | J::Array(_))), Value::Json(j)) => {
                serde_json::from_str::<J>(j).ok().as_ref() == Some(v)
            }
            _ => false,
        }
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
    /// of [`fields`](Self::fields). `json` is trusted to be JSON (the
    /// engine validates payloads at ingest): what no pointer leads to is
    /// skipped without being decoded. On an error nothing is appended.
    pub fn project<'a>(&self, json: &'a str, out: &mut Vec<Value<'a>>) -> Result<(), Error> {
        let start = out.len();
        out.resize(start + self.fields.len(), Value::Absent);
        let result = Scan { text: json, i: 0 }.walk(&self.root, &mut out[start..]);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }
}

/// Why a text could not be read as JSON, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Byte offset where reading stopped.
    pub at: usize,
    /// What was expected there.
    pub expected: &'static str,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not JSON: expected {} at byte {}",
            self.expected, self.at
        )
    }
}

impl std::error::Error for Error {}

/// A cursor over JSON text that finds where values begin and end without
/// decoding what no pointer leads to. It trusts the text to be JSON (the
/// engine validates every payload at ingest): on text that is not, it
/// fails or reads something, but never reads out of bounds.
struct Scan<'a> {
    text: &'a str,
    i: usize,
}

impl<'a> Scan<'a> {
    fn fail<T>(&self, expected: &'static str) -> Result<T, Error> {
        Err(Error {
            at: self.i,
            expected,
        })
    }

    fn byte(&self) -> Option<u8> {
        self.text.as_bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.byte() {
            self.i += 1;
        }
    }

    fn expect(&mut self, b: u8, expected: &'static str) -> Result<(), Error> {
        self.ws();
        if self.byte() != Some(b) {
            return self.fail(expected);
        }
        self.i += 1;
        Ok(())
    }

    /// Past a string that starts here; true when it holds escapes.
    fn string(&mut self) -> Result<bool, Error> {
        let bytes = self.text.as_bytes();
        let mut i = self.i + 1; // past the opening quote
        let mut escaped = false;
        loop {
            i += quote_or_backslash(bytes.get(i..).unwrap_or_default());
            match bytes.get(i) {
                Some(b'"') => {
                    self.i = i + 1;
                    return Ok(escaped);
                }
                Some(_) => {
                    escaped = true;
                    i += 2; // the backslash and what it escapes
                }
                None => {
                    self.i = bytes.len();
                    return self.fail("the end of a string");
                }
            }
        }
    }

    /// Past the value that starts here.
    fn skip(&mut self) -> Result<(), Error> {
        let bytes = self.text.as_bytes();
        match self.byte() {
            Some(b'"') => self.string().map(drop),
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                while let Some(b) = self.byte() {
                    match b {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                self.fail("the end of an object or array")
            }
            Some(_) => {
                let start = self.i;
                while self.i < bytes.len()
                    && !matches!(
                        bytes[self.i],
                        b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'
                    )
                {
                    self.i += 1;
                }
                if self.i == start {
                    return self.fail("a value");
                }
                Ok(())
            }
            None => self.fail("a value"),
        }
    }

    /// Read the value that starts here for `node`: the children it holds
    /// (the last of duplicate keys), then the value itself where fields end.
    fn walk(&mut self, node: &Node, out: &mut [Value<'a>]) -> Result<(), Error> {
        self.ws();
        let start = self.i;
        // (child, value start, value end): the last of duplicate keys.
        let mut found = Found::default();
        match self.byte() {
            Some(b'{') if !node.children.is_empty() => {
                self.i += 1;
                self.ws();
                if self.byte() == Some(b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        if self.byte() != Some(b'"') {
                            return self.fail("an object key");
                        }
                        let key_start = self.i;
                        let escaped = self.string()?;
                        let raw = &self.text[key_start..self.i];
                        let key: Cow<'a, str> = if escaped {
                            Cow::Owned(serde_json::from_str(raw).map_err(|_| Error {
                                at: key_start,
                                expected: "an object key",
                            })?)
                        } else {
                            Cow::Borrowed(&raw[1..raw.len() - 1])
                        };
                        self.expect(b':', "`:`")?;
                        self.ws();
                        let value_start = self.i;
                        self.skip()?;
                        if let Some(at) = node.child(&key) {
                            found.keep(at, value_start, self.i);
                        }
                        self.ws();
                        match self.byte() {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            _ => return self.fail("`,` or `}`"),
                        }
                    }
                }
            }
            Some(b'[') if !node.children.is_empty() => {
                self.i += 1;
                self.ws();
                if self.byte() == Some(b']') {
                    self.i += 1;
                } else {
                    let mut index = 0;
                    loop {
                        self.ws();
                        let value_start = self.i;
                        self.skip()?;
                        if let Some(at) = node.child_at(index) {
                            found.keep(at, value_start, self.i);
                        }
                        self.ws();
                        match self.byte() {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            _ => return self.fail("`,` or `]`"),
                        }
                        index += 1;
                    }
                }
            }
            _ => self.skip()?,
        }
        let end = self.i;
        if !node.ends.is_empty() {
            leaf(&self.text[start..end], node, out, start)?;
        }
        for &(at, value_start, value_end) in found.as_slice() {
            let child = &node.children[at].2;
            if child.children.is_empty() {
                leaf(&self.text[value_start..value_end], child, out, value_start)?;
            } else {
                Scan {
                    text: self.text,
                    i: value_start,
                }
                .walk(child, out)?;
            }
        }
        Ok(())
    }
}

/// Where the first `"` or `\\` of `bytes` is (its length when there is
/// none), eight bytes at a time.
fn quote_or_backslash(bytes: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of `x` that equals `b` (exact for the
    // lowest such byte, which is the one wanted).
    let equal = |x: u64, b: u8| {
        let y = x ^ (ONES * u64::from(b));
        y.wrapping_sub(ONES) & !y & HIGH
    };
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let hit = equal(x, b'"') | equal(x, b'\\');
        if hit != 0 {
            return i + (hit.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + bytes[i..]
        .iter()
        .position(|b| matches!(b, b'"' | b'\\'))
        .unwrap_or(bytes.len() - i)
}

/// The children a walk found, with where their values start and end; inline for
/// the usual few, on the heap past eight.
#[derive(Default)]
struct Found {
    inline: [(usize, usize, usize); 8],
    len: usize,
    more: Vec<(usize, usize, usize)>,
}

impl Found {
    fn keep(&mut self, at: usize, start: usize, end: usize) {
        let items = if self.more.is_empty() {
            &mut self.inline[..self.len]
        } else {
            &mut self.more[..]
        };
        if let Some(slot) = items.iter_mut().find(|(i, _, _)| *i == at) {
            *slot = (at, start, end);
        } else if self.more.is_empty() && self.len < self.inline.len() {
            self.inline[self.len] = (at, start, end);
            self.len += 1;
        } else {
            if self.more.is_empty() {
                self.more.extend_from_slice(&self.inline[..self.len]);
            }
            self.more.push((at, start, end));
        }
    }

    fn as_slice(&self) -> &[(usize, usize, usize)] {
        if self.more.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.more
        }
    }
}

/// Give `raw` (one JSON value, no surrounding space, starting at byte
/// `at`) to the fields ending at `node`.
fn leaf<'a>(raw: &'a str, node: &Node, out: &mut [Value<'a>], at: usize) -> Result<(), Error> {
    let bad = |expected| Error { at, expected };
    let value = match raw.as_bytes().first() {
        Some(b'n') => Value::Null,
        Some(b't') => Value::Bool(true),
        Some(b'f') => Value::Bool(false),
        Some(b'"') => {
            let inner = &raw[1..raw.len() - 1];
            if inner.contains('\\') {
                Value::Text(Cow::Owned(
                    serde_json::from_str::<String>(raw).map_err(|_| bad("a string"))?,
                ))
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
                _ => Value::Float(serde_json::from_str::<f64>(raw).map_err(|_| bad("a number"))?),
            }
        }
    };
    for &i in &node.ends {
        out[i] = value.clone();
    }
    Ok(())
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
                assert!(
                    got.is_serde(want),
                    "{p} in {doc}: serde_json {want:?}, projection {got:?}"
                );
            }
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            any::<u64>().prop_map(|n| serde_json::json!(n)),
            (-1e9f64..1e9).prop_map(|x| serde_json::json!(x)),
            "[a-c\"\\\\/~\u{e9}\u{1F680}\n]{0,6}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
                proptest::collection::vec(("[a-c/~\"\u{e9}]{0,3}", inner), 0..5)
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Every pointer into a value, and a few that lead nowhere.
    fn pointers(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        out.push(format!("{at}/nope"));
        let token = |k: &str| k.replace('~', "~0").replace('/', "~1");
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    pointers(v, format!("{at}/{}", token(k)), out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    pointers(v, format!("{at}/{i}"), out);
                }
                out.push(format!("{at}/{}", a.len()));
            }
            _ => {}
        }
    }

    proptest::proptest! {
        /// On random documents, compact or pretty, every pointer finds
        /// what serde_json's own pointer finds.
        #[test]
        fn agrees_with_serde_json_on_random_documents(doc in json_value(), pretty: bool) {
            let text = if pretty {
                serde_json::to_string_pretty(&doc).unwrap()
            } else {
                serde_json::to_string(&doc).unwrap()
            };
            let mut all = Vec::new();
            pointers(&doc, String::new(), &mut all);
            all.sort();
            all.dedup();
            let mut out = Vec::new();
            Projection::new(&all).unwrap().project(&text, &mut out).unwrap();
            // What serde_json reads from the text (floats may not round-trip).
            let read: serde_json::Value = serde_json::from_str(&text).unwrap();
            for (p, got) in all.iter().zip(&out) {
                let want = read.pointer(p);
                let same = got.is_serde(want);
                proptest::prop_assert!(same, "{} in {}: serde_json {:?}, projection {:?}", p, text, want, got);
            }
        }
    }
}
