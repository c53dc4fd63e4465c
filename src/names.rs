//! Validation of names that become path parts (spec names, task ids, pool names), so that no
//! value read from a file or the command line can point outside its directory.

/// Longest accepted name; file systems allow 255 bytes per component, leaving room for suffixes
/// such as `.lock` and `.tmp`.
const MAX_LEN: usize = 200;

/// A name that cannot be used as a path part.
#[derive(Debug, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct NameError {
    pub kind: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// Checks that `value` is safe as a single path component; `kind` names what it is ("spec name",
/// "task id", "pool name") in the error.
pub fn validate(kind: &'static str, value: &str) -> Result<(), NameError> {
    let reason = if value.is_empty() {
        Some("is empty")
    } else if value.len() > MAX_LEN {
        Some("is longer than 200 bytes")
    } else if value.contains(['/', '\\']) {
        Some("contains a path separator")
    } else if value.chars().any(char::is_control) {
        Some("contains a NUL or control character")
    } else if value.starts_with('.') {
        Some("starts with a dot")
    } else if value.contains("..") {
        Some("contains \"..\"")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(NameError {
            kind,
            value: value.to_owned(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "chat-app",
            "1.2",
            "task_7",
            "Äpfel und Birnen",
            "日本",
            "a.b.c",
            "x",
        ] {
            validate("task id", name).unwrap();
        }
        validate("spec name", &"a".repeat(200)).unwrap();
    }

    #[test]
    fn rejects_unsafe_names_with_a_reason() {
        let cases = [
            ("", "is empty"),
            (".", "starts with a dot"),
            ("..", "starts with a dot"),
            (".hidden", "starts with a dot"),
            ("../x", "contains a path separator"),
            ("a/b", "contains a path separator"),
            ("a\\b", "contains a path separator"),
            ("a..b", "contains \"..\""),
            ("a\0b", "contains a NUL or control character"),
            ("a\nb", "contains a NUL or control character"),
            ("a\u{7f}", "contains a NUL or control character"),
        ];
        for (name, reason) in cases {
            let err = validate("spec name", name).unwrap_err();
            assert_eq!(err.reason, reason, "{name:?}");
        }
        let long = "a".repeat(201);
        assert_eq!(
            validate("task id", &long).unwrap_err().reason,
            "is longer than 200 bytes"
        );
    }

    #[test]
    fn message_names_kind_and_value() {
        let err = validate("spec name", "../x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid spec name \"../x\": contains a path separator"
        );
    }
}
