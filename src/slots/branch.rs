//! Task branch names: the configured pattern filled in with the spec and task id, then made
//! into a name that `git check-ref-format --branch` accepts.

/// The placeholders a branch pattern may use.
const PLACEHOLDERS: &[&str] = &["{spec}", "{task_id}"];

/// `pattern` with `{spec}` and `{task_id}` replaced, sanitized into a valid branch name.
pub fn branch_name(pattern: &str, spec: &str, task_id: &str) -> String {
    sanitize(
        &pattern
            .replace("{spec}", spec)
            .replace("{task_id}", task_id),
    )
}

/// Checks a configured `branch_pattern`: only known placeholders, and both of them, since two
/// tasks mapped to one branch would reset each other's work (task ids such as `1.1` repeat
/// across specs).
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let after = &rest[open..];
        match after.find('}') {
            Some(close) if !PLACEHOLDERS.contains(&&after[..=close]) => {
                let found = &after[..=close];
                // `{` may legitimately appear in a branch name; only `{word}` looks like a
                // misspelt placeholder.
                if found[1..found.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(format!(
                        "unknown placeholder {found} (use {})",
                        PLACEHOLDERS.join(" and ")
                    ));
                }
                rest = &after[1..];
            }
            _ => rest = &after[1..],
        }
    }
    for placeholder in PLACEHOLDERS {
        if !pattern.contains(placeholder) {
            return Err(format!(
                "must contain {placeholder}, so that every task gets a branch of its own"
            ));
        }
    }
    Ok(())
}

/// Rewrites `name` until it is a valid branch name: forbidden characters become `-`, empty
/// path components and leading or trailing dots and slashes go, and so on (see
/// `git help check-ref-format`). A name that is already valid comes back unchanged, which is
/// how the configured base branch is checked.
pub fn sanitize(name: &str) -> String {
    // Each rule can expose another (dropping a leading `-` can leave a leading `.`), so the
    // rules run until nothing changes; every pass only shortens or keeps the length, and a
    // pass that changes nothing ends the loop.
    let mut current = name.to_owned();
    loop {
        let next = sanitize_once(&current);
        if next == current {
            break;
        }
        current = next;
    }
    match current.as_str() {
        "" => "task".to_owned(),
        // Both are valid refs but refused as branch names: `@` is HEAD's shorthand, and a
        // branch called HEAD would be ambiguous with it.
        "@" | "HEAD" => format!("{current}-task"),
        _ => current,
    }
}

fn sanitize_once(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            let forbidden =
                c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\');
            if forbidden {
                '-'
            } else {
                c
            }
        })
        .collect();
    let mapped = mapped.replace("@{", "-{").replace("..", "-");
    let components: Vec<&str> = mapped
        .split('/')
        .map(|part| {
            let mut part = part.trim_start_matches('.');
            // `x.lock.` ends in a dot, and without it in `.lock`: strip both until neither.
            loop {
                let trimmed = part.trim_end_matches('.');
                let trimmed = trimmed.strip_suffix(".lock").unwrap_or(trimmed);
                if trimmed == part {
                    break part;
                }
                part = trimmed;
            }
        })
        .filter(|part| !part.is_empty())
        .collect();
    // A branch name must not look like an option.
    components.join("/").trim_start_matches('-').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::git::Git;

    /// What git itself says about `name` as a branch name.
    fn git_accepts(name: &str) -> bool {
        let dir = std::env::temp_dir();
        Git::new(&dir)
            .args(["check-ref-format", "--branch", name])
            .succeeds()
            .unwrap()
    }

    #[test]
    fn default_pattern_keeps_ordinary_names() {
        assert_eq!(
            branch_name("task/{spec}/{task_id}", "chat-app", "1.1"),
            "task/chat-app/1.1"
        );
    }

    #[test]
    fn sanitized_names_pass_git_check_ref_format() {
        let cases = [
            ("task/a b/1..2~^:", "task/a-b/1-2---"),
            ("task/x?*[y]\\z", "task/x---y]-z"),
            ("/lead//trail/", "lead/trail"),
            (".hidden/.x/y.", "hidden/x/y"),
            ("a.lock/b.lock", "a/b"),
            ("a.lock.lock.", "a"),
            ("ref@{1}", "ref-{1}"),
            ("-opt", "opt"),
            ("-./x", "x"),
            ("tab\there\u{7f}", "tab-here-"),
            ("...", "task"),
            ("", "task"),
            ("@", "@-task"),
            ("HEAD", "HEAD-task"),
            ("Äpfel/日本", "Äpfel/日本"),
        ];
        for (input, expected) in cases {
            let name = sanitize(input);
            assert_eq!(name, expected, "{input:?}");
            assert!(git_accepts(&name), "{input:?} -> {name:?}");
        }
        let name = branch_name("task/{spec}/{task_id}", "a b", "1..2~^:");
        assert!(git_accepts(&name), "{name:?}");
    }

    #[test]
    fn valid_names_are_unchanged() {
        for name in ["main", "release/1.x", "feature/a-b_c", "v1.0"] {
            assert_eq!(sanitize(name), name);
            assert!(git_accepts(name));
        }
    }

    #[test]
    fn pattern_needs_both_placeholders_and_no_unknown_ones() {
        check_pattern("task/{spec}/{task_id}").unwrap();
        check_pattern("agent/{spec}-{task_id}/{x-y}").unwrap();
        let err = check_pattern("task/{spec}/{id}").unwrap_err();
        assert!(err.contains("unknown placeholder {id}"), "{err}");
        let err = check_pattern("task/{task_id}").unwrap_err();
        assert!(err.contains("must contain {spec}"), "{err}");
    }
}
