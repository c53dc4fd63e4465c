//! JSON output byte-compatible with Python's `json` module: `json.dump(indent=2)` for documents
//! and `json.dumps()` for event lines, both with the default `ensure_ascii=True`.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::ser::Formatter;

/// Like Python's `json.dumps(value, indent=2)`: two-space indent, `": "` after keys, no
/// trailing newline.
pub fn to_pretty_bytes<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    write(
        value,
        PyFormatter {
            pretty: true,
            indent: 0,
            has_value: false,
        },
    )
}

/// [`to_pretty_bytes`] of a value that sits `depth` levels deep in a document (a task in a
/// taskset's `tasks` list is 2 deep): its inner lines carry that much more indent, so the text
/// can be spliced into the document as is.
pub fn to_pretty_bytes_at<T: Serialize + ?Sized>(
    value: &T,
    depth: usize,
) -> serde_json::Result<Vec<u8>> {
    write(
        value,
        PyFormatter {
            pretty: true,
            indent: depth,
            has_value: false,
        },
    )
}

/// Like Python's `json.dumps(value)`: one line, `", "` and `": "` separators, no newline.
pub fn to_line_bytes<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    write(
        value,
        PyFormatter {
            pretty: false,
            indent: 0,
            has_value: false,
        },
    )
}

fn write<T: Serialize + ?Sized>(value: &T, formatter: PyFormatter) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut ser)?;
    Ok(out)
}

/// serde_json's `PrettyFormatter` layout with Python's separators and escaping.
///
/// serde_json already escapes `"`, `\` and C0 controls exactly as Python does (short forms for
/// `\b \f \n \r \t`, lowercase `\u00XX` otherwise); Python additionally escapes everything outside
/// printable ASCII, which `write_string_fragment` handles.
struct PyFormatter {
    pretty: bool,
    indent: usize,
    has_value: bool,
}

impl PyFormatter {
    fn newline_indent<W: ?Sized + Write>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(b"\n")?;
        for _ in 0..self.indent {
            w.write_all(b"  ")?;
        }
        Ok(())
    }

    fn begin_nested<W: ?Sized + Write>(&mut self, w: &mut W, open: &[u8]) -> io::Result<()> {
        self.indent += 1;
        self.has_value = false;
        w.write_all(open)
    }

    fn end_nested<W: ?Sized + Write>(&mut self, w: &mut W, close: &[u8]) -> io::Result<()> {
        self.indent -= 1;
        if self.pretty && self.has_value {
            self.newline_indent(w)?;
        }
        w.write_all(close)
    }

    fn begin_item<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        match (self.pretty, first) {
            (true, true) => self.newline_indent(w),
            (true, false) => {
                w.write_all(b",")?;
                self.newline_indent(w)
            }
            (false, true) => Ok(()),
            (false, false) => w.write_all(b", "),
        }
    }
}

impl Formatter for PyFormatter {
    fn begin_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.begin_nested(w, b"[")
    }

    fn end_array<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.end_nested(w, b"]")
    }

    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.begin_item(w, first)
    }

    fn end_array_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.begin_nested(w, b"{")
    }

    fn end_object<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.end_nested(w, b"}")
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        self.begin_item(w, first)
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn end_object_value<W: ?Sized + Write>(&mut self, _w: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // Python's ensure_ascii escapes everything outside ' '..='~' (DEL included), writing
        // characters above U+FFFF as a UTF-16 surrogate pair, in lowercase hex.
        let mut plain_from = 0;
        for (at, c) in fragment.char_indices() {
            if (' '..='~').contains(&c) {
                continue;
            }
            w.write_all(&fragment.as_bytes()[plain_from..at])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(w, "\\u{unit:04x}")?;
            }
            plain_from = at + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[plain_from..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pretty_matches_python_layout() {
        let value = json!({"a": [], "b": {}, "c": [1, {"d": null}], "e": "x"});
        let expected = "{\n  \"a\": [],\n  \"b\": {},\n  \"c\": [\n    1,\n    {\n      \"d\": null\n    }\n  ],\n  \"e\": \"x\"\n}";
        assert_eq!(
            String::from_utf8(to_pretty_bytes(&value).unwrap()).unwrap(),
            expected
        );
    }

    #[test]
    fn line_matches_python_dumps() {
        let value = json!({"a": [1, 2], "b": {"c": true}, "d": {}});
        let expected = r#"{"a": [1, 2], "b": {"c": true}, "d": {}}"#;
        assert_eq!(
            String::from_utf8(to_line_bytes(&value).unwrap()).unwrap(),
            expected
        );
    }

    #[test]
    fn escapes_like_python_ensure_ascii() {
        // json.dumps("é\u2603😀\x7f\"\\\n\x01/") in Python 3.
        let s = "é\u{2603}😀\u{7f}\"\\\n\u{1}/";
        let expected = r#""\u00e9\u2603\ud83d\ude00\u007f\"\\\n\u0001/""#;
        assert_eq!(
            String::from_utf8(to_line_bytes(s).unwrap()).unwrap(),
            expected
        );
    }
}
