//! A parsed TOML document that remembers the line of every key, so that each config error can
//! name the dotted key and where it was written.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use super::duration::{duration_from_secs, parse_duration};

/// One TOML value. Tables keep their keys with spans and in document order.
#[derive(Debug)]
pub(super) enum Node {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Array(Vec<Node>),
    Table(Vec<(Spanned<String>, Node)>),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::String(_) => "string",
            Node::Integer(_) => "integer",
            Node::Float(_) => "float",
            Node::Boolean(_) => "boolean",
            Node::Array(_) => "array",
            Node::Table(_) => "table",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Node, E> {
        Ok(Node::Boolean(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Node, E> {
        Ok(Node::Integer(value))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Node, E> {
        Ok(Node::Float(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Node, E> {
        Ok(Node::String(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Node, E> {
        Ok(Node::String(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Node::Table(entries))
    }
}

/// Byte offset to 1-based line number.
pub(super) struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    pub(super) fn new(text: &str) -> Lines {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        Lines { starts }
    }

    pub(super) fn line_of(&self, span: Range<usize>) -> usize {
        // The count of line starts at or before the offset is the line number.
        self.starts.partition_point(|&start| start <= span.start)
    }
}

/// What went wrong, where: turned into `ConfigError::Invalid` once the file name is added.
#[derive(Debug)]
pub(super) struct Problem {
    pub(super) line: Option<usize>,
    pub(super) key: String,
    pub(super) message: String,
}

/// A value with its dotted key and the line of that key.
#[derive(Clone)]
pub(super) struct Item<'a> {
    /// The last segment of the key (the pool name, the skill name …).
    pub(super) name: &'a str,
    pub(super) path: String,
    pub(super) line: Option<usize>,
    node: &'a Node,
    lines: &'a Lines,
}

impl<'a> Item<'a> {
    pub(super) fn root(node: &'a Node, lines: &'a Lines) -> Item<'a> {
        Item {
            name: "",
            path: String::new(),
            line: None,
            node,
            lines,
        }
    }

    pub(super) fn problem(&self, message: impl Into<String>) -> Problem {
        Problem {
            line: self.line,
            key: self.path.clone(),
            message: message.into(),
        }
    }

    fn wrong_type(&self, expected: &str) -> Problem {
        self.problem(format!("expected {expected}, found {}", self.node.kind()))
    }

    pub(super) fn table(&self) -> Result<Table<'a>, Problem> {
        match self.node {
            Node::Table(entries) => Ok(Table {
                item: self.clone(),
                entries,
            }),
            _ => Err(self.wrong_type("a table")),
        }
    }

    pub(super) fn str(&self) -> Result<&'a str, Problem> {
        match self.node {
            Node::String(text) => Ok(text),
            _ => Err(self.wrong_type("a string")),
        }
    }

    pub(super) fn bool(&self) -> Result<bool, Problem> {
        match self.node {
            Node::Boolean(value) => Ok(*value),
            _ => Err(self.wrong_type("true or false")),
        }
    }

    /// A whole number no smaller than `min`.
    pub(super) fn integer<T: TryFrom<i64>>(&self, min: i64) -> Result<T, Problem> {
        let Node::Integer(value) = self.node else {
            return Err(self.wrong_type("an integer"));
        };
        if *value < min {
            return Err(self.problem(format!("must be at least {min}, found {value}")));
        }
        T::try_from(*value).map_err(|_| self.problem(format!("{value} is too large")))
    }

    /// A number, written as an integer or a float.
    pub(super) fn float(&self) -> Result<f64, Problem> {
        match self.node {
            // Config numbers are small; the precision lost above 2^53 does not matter here.
            Node::Integer(value) => Ok(*value as f64),
            Node::Float(value) => Ok(*value),
            _ => Err(self.wrong_type("a number")),
        }
    }

    pub(super) fn duration(&self) -> Result<Duration, Problem> {
        match self.node {
            Node::String(text) => parse_duration(text),
            Node::Integer(secs) => match u64::try_from(*secs) {
                Ok(secs) => Ok(Duration::from_secs(secs)),
                Err(_) => duration_from_secs(*secs as f64, &secs.to_string()),
            },
            Node::Float(secs) => duration_from_secs(*secs, &secs.to_string()),
            _ => Err(format!(
                "expected a duration (90s, 5m, 1h or seconds), found {}",
                self.node.kind()
            )),
        }
        .map_err(|message| self.problem(message))
    }

    /// A size in bytes: an integer, or a string such as `"100MB"`, `"1GiB"`, `"512k"`.
    pub(super) fn byte_size(&self) -> Result<u64, Problem> {
        match self.node {
            Node::Integer(value) => u64::try_from(*value)
                .map_err(|_| self.problem(format!("must not be negative, found {value}"))),
            Node::String(text) => parse_byte_size(text).map_err(|message| self.problem(message)),
            _ => Err(self.wrong_type("a size (bytes, or a string like \"100MB\")")),
        }
    }

    /// A memory size in MiB: a plain integer is MiB already, a string such as `"8GiB"` is
    /// converted (rounded up).
    pub(super) fn mebibytes(&self) -> Result<u64, Problem> {
        match self.node {
            Node::Integer(_) => self.integer(0),
            _ => Ok(self.byte_size()?.div_ceil(1 << 20)),
        }
    }

    /// A string, number or boolean as text: these end up in environment variables.
    pub(super) fn scalar_string(&self) -> Result<String, Problem> {
        match self.node {
            Node::String(text) => Ok(text.clone()),
            Node::Integer(value) => Ok(value.to_string()),
            Node::Float(value) => Ok(value.to_string()),
            Node::Boolean(value) => Ok(value.to_string()),
            _ => Err(self.wrong_type("a string, number or boolean")),
        }
    }

    pub(super) fn array(&self) -> Result<Vec<Item<'a>>, Problem> {
        let Node::Array(nodes) = self.node else {
            return Err(self.wrong_type("an array"));
        };
        Ok(nodes
            .iter()
            .enumerate()
            .map(|(index, node)| Item {
                name: self.name,
                path: format!("{}[{index}]", self.path),
                // All `[[x]]` tables share the one key `x`, whose line is the first header's;
                // a table's own first key says which of them is meant.
                line: match node {
                    Node::Table(entries) => entries
                        .iter()
                        .map(|(key, _)| self.lines.line_of(key.span()))
                        .min()
                        .or(self.line),
                    _ => self.line,
                },
                node,
                lines: self.lines,
            })
            .collect())
    }

    /// Strings: an array of them, or a single one standing for a one-element list.
    pub(super) fn string_list(&self) -> Result<Vec<(Item<'a>, &'a str)>, Problem> {
        if let Node::String(text) = self.node {
            return Ok(vec![(self.clone(), text.as_str())]);
        }
        let items = self
            .array()
            .map_err(|_| self.wrong_type("a string or an array of strings"))?;
        items
            .into_iter()
            .map(|item| item.str().map(|text| (item, text)))
            .collect()
    }
}

/// A table being decoded.
pub(super) struct Table<'a> {
    item: Item<'a>,
    entries: &'a [(Spanned<String>, Node)],
}

impl<'a> Table<'a> {
    pub(super) fn entries(&self) -> impl Iterator<Item = Item<'a>> + '_ {
        self.entries.iter().map(|(key, node)| Item {
            name: key.get_ref(),
            path: join_key(&self.item.path, key.get_ref()),
            line: Some(self.item.lines.line_of(key.span())),
            node,
            lines: self.item.lines,
        })
    }

    pub(super) fn get(&self, name: &str) -> Option<Item<'a>> {
        self.entries().find(|item| item.name == name)
    }

    /// Rejects the first key not in `known`, so that a misspelt setting is never ignored.
    pub(super) fn deny_unknown(&self, known: &[&str]) -> Result<(), Problem> {
        match self.entries().find(|item| !known.contains(&item.name)) {
            None => Ok(()),
            Some(item) => Err(Problem {
                line: item.line,
                key: self.item.path.clone(),
                message: format!(
                    "unknown key {:?} (expected one of: {})",
                    item.name,
                    known.join(", ")
                ),
            }),
        }
    }
}

/// Appends a key to a dotted path, quoting it the way TOML would when it is not a bare key.
fn join_key(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// Parses `"100MB"`, `"1GiB"`, `"512k"` or `"2048"`: decimal (k, MB, GB) and binary (KiB,
/// MiB, GiB) units, case-insensitive, an optional trailing `B`.
pub(super) fn parse_byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let bad =
        || format!("invalid size {text:?} (use bytes, or a number with KB, MB, GB, KiB, MiB, GiB)");
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let factor: u64 = match unit.trim_end_matches('b') {
        "" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        "ki" => 1 << 10,
        "mi" => 1 << 20,
        "gi" => 1 << 30,
        _ => return Err(bad()),
    };
    number.checked_mul(factor).ok_or_else(bad)
}
