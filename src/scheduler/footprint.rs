//! Task footprints (`metadata.touches`): the paths of its repository a task may change, as
//! globs, and a static, conservative test of whether two footprints can name a common path.
//!
//! Patterns are relative to the repository root, split on `/`: `*` matches any run of
//! characters inside one segment, `?` one character, a `**` segment any number of segments
//! (zero included). Two patterns overlap when some path could match both; when that cannot
//! be decided cheaply (two wildcard segments, `[…]` or `{…}` which are not parsed) the answer
//! is "overlap", so the scheduler may serialise more than needed but never runs two tasks
//! that touch the same file side by side. A task without `touches` conflicts with nobody.

use std::sync::Arc;

/// What a task touches in one repository, parsed once when the task is queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// `metadata.repo_name`: footprints of different repositories never conflict.
    pub repo: Arc<str>,
    patterns: Box<[Pattern]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    /// As the task wrote it, for `status` and the logs.
    text: Box<str>,
    segments: Box<[Segment]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// No wildcard: matches itself only.
    Literal(Box<str>),
    /// `*` and `?` inside one segment.
    Glob(Box<str>),
    /// Syntax we do not interpret (`[…]`, `{…}`): taken to match any one segment.
    AnyOne,
    /// `**`: any number of segments.
    AnyDepth,
}

/// Why `metadata.touches` cannot be used (the task then has no footprint).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FootprintError {
    #[error("metadata.touches must be a list of path patterns, not {0}")]
    NotAList(&'static str),
    #[error("metadata.touches[{0}] must be a string")]
    NotAString(usize),
    #[error("metadata.touches[{0}] is empty")]
    Empty(usize),
    #[error(
        "metadata.touches[{0}] {1:?} is absolute; patterns are relative to the repository root"
    )]
    Absolute(usize, String),
    #[error("metadata.touches[{0}] {1:?} has a `..` segment")]
    ParentDir(usize, String),
}

/// A conflict between two footprints: the patterns of each side that overlap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overlap {
    pub mine: Vec<String>,
    pub theirs: Vec<String>,
}

impl Footprint {
    /// The footprint a task declares: `None` without `repo_name` or without `touches`
    /// (such a task conflicts with nobody), an error if `touches` is malformed.
    pub fn of_task(
        metadata: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<Footprint>, FootprintError> {
        let Some(touches) = metadata.get("touches") else {
            return Ok(None);
        };
        let patterns = parse_list(touches)?;
        let Some(repo) = metadata.get("repo_name").and_then(|r| r.as_str()) else {
            return Ok(None);
        };
        Ok(Some(Footprint {
            repo: Arc::from(repo),
            patterns,
        }))
    }

    /// The footprint learned from a task's earlier attempts: the files their patches changed
    /// (the `paths` of its `diff` artifacts), each taken as a pattern. `None` when none is
    /// known. A name git reports that is not a usable pattern is left out.
    pub fn learned(
        metadata: &serde_json::Map<String, serde_json::Value>,
        artifacts: &[serde_json::Value],
    ) -> Option<Footprint> {
        let repo = metadata.get("repo_name")?.as_str()?;
        let mut patterns: Vec<Pattern> = artifacts
            .iter()
            .filter(|a| a.get("type").and_then(|t| t.as_str()) == Some("diff"))
            .filter_map(|a| a.get("metadata")?.get("paths")?.as_array())
            .flatten()
            .filter_map(serde_json::Value::as_str)
            .filter_map(|path| parse_pattern(0, path).ok())
            .collect();
        patterns.sort_by(|a, b| a.text.cmp(&b.text));
        patterns.dedup_by(|a, b| a.text == b.text);
        (!patterns.is_empty()).then(|| Footprint {
            repo: Arc::from(repo),
            patterns: patterns.into(),
        })
    }

    /// A footprint from patterns already known to be valid (tests and benchmarks).
    pub fn new(repo: &str, patterns: &[&str]) -> Result<Footprint, FootprintError> {
        let list = serde_json::Value::from(patterns.to_vec());
        Ok(Footprint {
            repo: Arc::from(repo),
            patterns: parse_list(&list)?,
        })
    }

    /// The patterns as written.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|p| &*p.text)
    }

    /// Whether the two tasks may touch a common path: same repository and some pair of
    /// patterns overlaps. Cost: patterns × patterns × segments, all small.
    pub fn overlaps(&self, other: &Footprint) -> bool {
        (Arc::ptr_eq(&self.repo, &other.repo) || self.repo == other.repo)
            && self
                .patterns
                .iter()
                .any(|a| other.patterns.iter().any(|b| patterns_overlap(a, b)))
    }

    /// The overlapping patterns of each side, for messages; `None` if they do not overlap.
    pub fn overlap(&self, other: &Footprint) -> Option<Overlap> {
        if !self.overlaps(other) {
            return None;
        }
        let mine = self
            .patterns
            .iter()
            .filter(|a| other.patterns.iter().any(|b| patterns_overlap(a, b)))
            .map(|a| a.text.to_string())
            .collect();
        let theirs = other
            .patterns
            .iter()
            .filter(|b| self.patterns.iter().any(|a| patterns_overlap(a, b)))
            .map(|b| b.text.to_string())
            .collect();
        Some(Overlap { mine, theirs })
    }
}

fn parse_list(touches: &serde_json::Value) -> Result<Box<[Pattern]>, FootprintError> {
    let list = match touches {
        serde_json::Value::Array(list) => list,
        serde_json::Value::Null => return Err(FootprintError::NotAList("null")),
        serde_json::Value::Bool(_) => return Err(FootprintError::NotAList("a boolean")),
        serde_json::Value::Number(_) => return Err(FootprintError::NotAList("a number")),
        serde_json::Value::String(_) => return Err(FootprintError::NotAList("a string")),
        serde_json::Value::Object(_) => return Err(FootprintError::NotAList("an object")),
    };
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let text = entry.as_str().ok_or(FootprintError::NotAString(i))?;
            parse_pattern(i, text)
        })
        .collect()
}

fn parse_pattern(index: usize, text: &str) -> Result<Pattern, FootprintError> {
    if text.trim().is_empty() {
        return Err(FootprintError::Empty(index));
    }
    if text.starts_with('/') {
        return Err(FootprintError::Absolute(index, text.to_string()));
    }
    let mut segments = Vec::new();
    // Empty and `.` segments (`a//b`, `./a`) name nothing of their own.
    for part in text.split('/').filter(|p| !p.is_empty() && *p != ".") {
        let segment = match part {
            ".." => return Err(FootprintError::ParentDir(index, text.to_string())),
            "**" => Segment::AnyDepth,
            _ if part.contains(['[', '{']) => Segment::AnyOne,
            _ if part.contains(['*', '?']) => Segment::Glob(part.into()),
            _ => Segment::Literal(part.into()),
        };
        // `**/**` means no more than `**`; keeping one keeps the search small.
        if segment == Segment::AnyDepth && segments.last() == Some(&Segment::AnyDepth) {
            continue;
        }
        segments.push(segment);
    }
    // A directory (`src/auth/`) stands for everything below it.
    if text.ends_with('/') && segments.last() != Some(&Segment::AnyDepth) {
        segments.push(Segment::AnyDepth);
    }
    if segments.is_empty() {
        return Err(FootprintError::Empty(index));
    }
    Ok(Pattern {
        text: text.into(),
        segments: segments.into(),
    })
}

fn patterns_overlap(a: &Pattern, b: &Pattern) -> bool {
    let (a, b) = (&*a.segments, &*b.segments);
    // The usual answer for paths of different subtrees, without the search.
    if let (Some(Segment::Literal(x)), Some(Segment::Literal(y))) = (a.first(), b.first()) {
        if x != y {
            return false;
        }
    }
    // Memo of the (i, j) suffix pairs already found disjoint: with `**` on both sides the
    // plain recursion revisits them exponentially often. Usual patterns fit on the stack:
    // the planner asks this for every offer of a task with a footprint.
    let cells = (a.len() + 1) * (b.len() + 1);
    if cells <= 64 {
        suffixes_overlap(a, b, 0, 0, &mut [false; 64][..cells])
    } else {
        suffixes_overlap(a, b, 0, 0, &mut vec![false; cells])
    }
}

fn suffixes_overlap(a: &[Segment], b: &[Segment], i: usize, j: usize, seen: &mut [bool]) -> bool {
    let cell = i * (b.len() + 1) + j;
    if seen[cell] {
        return false;
    }
    let found = match (a.get(i), b.get(j)) {
        (None, None) => true,
        (Some(Segment::AnyDepth), _) => {
            // `**` ends here, or absorbs b's next segment (whatever it is).
            suffixes_overlap(a, b, i + 1, j, seen)
                || (j < b.len() && suffixes_overlap(a, b, i, j + 1, seen))
        }
        (_, Some(Segment::AnyDepth)) => {
            suffixes_overlap(a, b, i, j + 1, seen)
                || (i < a.len() && suffixes_overlap(a, b, i + 1, j, seen))
        }
        (None, Some(_)) | (Some(_), None) => false,
        (Some(x), Some(y)) => segments_overlap(x, y) && suffixes_overlap(a, b, i + 1, j + 1, seen),
    };
    if !found {
        seen[cell] = true;
    }
    found
}

/// Whether some one segment (a file or directory name) matches both.
fn segments_overlap(a: &Segment, b: &Segment) -> bool {
    match (a, b) {
        (Segment::Literal(x), Segment::Literal(y)) => x == y,
        (Segment::Literal(name), Segment::Glob(glob))
        | (Segment::Glob(glob), Segment::Literal(name)) => {
            glob_matches(glob.as_bytes(), name.as_bytes())
        }
        // Two globs: a common name must start with both literal prefixes and end with both
        // literal suffixes; past that we do not decide and assume they overlap.
        (Segment::Glob(x), Segment::Glob(y)) => {
            let (px, py) = (literal_prefix(x), literal_prefix(y));
            let (sx, sy) = (literal_suffix(x), literal_suffix(y));
            (px.starts_with(py) || py.starts_with(px)) && (sx.ends_with(sy) || sy.ends_with(sx))
        }
        _ => true,
    }
}

fn literal_prefix(glob: &str) -> &str {
    glob.find(['*', '?']).map_or(glob, |end| &glob[..end])
}

fn literal_suffix(glob: &str) -> &str {
    glob.rfind(['*', '?'])
        .map_or(glob, |start| &glob[start + 1..])
}

/// `*` / `?` matching of one segment, by bytes except that `?` takes one whole character.
fn glob_matches(glob: &[u8], name: &[u8]) -> bool {
    // The classic greedy matcher with one backtrack point: linear in practice.
    let (mut g, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match glob.get(g) {
            Some(b'*') => {
                star = Some((g, n));
                g += 1;
            }
            Some(b'?') => {
                g += 1;
                n += utf8_len(name[n]);
            }
            Some(&c) if c == name[n] => {
                g += 1;
                n += 1;
            }
            _ => match star {
                Some((sg, sn)) => {
                    g = sg + 1;
                    n = sn + utf8_len(name[sn]);
                    star = Some((sg, n));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

/// Length of the UTF-8 character that starts with `first`.
fn utf8_len(first: u8) -> usize {
    match first {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlap(a: &str, b: &str) -> bool {
        let fa = Footprint::new("r", &[a]).unwrap();
        let fb = Footprint::new("r", &[b]).unwrap();
        let forward = fa.overlaps(&fb);
        assert_eq!(
            forward,
            fb.overlaps(&fa),
            "overlap is symmetric: {a} vs {b}"
        );
        forward
    }

    #[test]
    fn a_directory_glob_overlaps_a_file_inside_it() {
        assert!(overlap("src/auth/**", "src/auth/login.rs"));
        assert!(overlap("src/auth/**", "src/auth/deep/er/x.rs"));
        assert!(overlap("src/auth/", "src/auth/login.rs"));
        assert!(overlap("./", "x/y"), "the whole repository");
        assert!(!overlap("src/auth/**", "src/billing/x.rs"));
    }

    #[test]
    fn a_star_stays_inside_its_segment() {
        assert!(!overlap("src/a*", "src/b/**"));
        assert!(overlap("src/a*", "src/auth/**"), "src/auth itself");
        assert!(!overlap("docs/*.md", "docs/api/x.md"));
        assert!(overlap("docs/*.md", "docs/x.md"));
        assert!(!overlap("docs/*.md", "docs/x.rs"));
        assert!(overlap("src/?.rs", "src/a.rs"));
        assert!(!overlap("src/?.rs", "src/ab.rs"));
        assert!(overlap("src/é?.rs", "src/éb.rs"));
        assert!(
            overlap("src/?b.rs", "src/éb.rs"),
            "? takes a whole character"
        );
    }

    #[test]
    fn double_star_overlaps_anything() {
        for other in ["a", "src/a/b/c.rs", "*", "x/**", "**/y", "*.md", "[ab]/c"] {
            assert!(overlap("**", other), "** vs {other}");
        }
        assert!(overlap("**/test.rs", "src/a/test.rs"));
        assert!(overlap("**/test.rs", "test.rs"), "** may be empty");
        assert!(!overlap("**/test.rs", "src/a/main.rs"));
        assert!(overlap("src/**/mod.rs", "src/**/x/mod.rs"));
        assert!(overlap("a/**/b/**/c", "a/b/c"));
        assert!(!overlap("a/**/b/**/c", "a/x/y"));
    }

    #[test]
    fn two_wildcard_segments_overlap_unless_their_fixed_ends_differ() {
        assert!(overlap("src/*.rs", "src/main*"));
        assert!(overlap("src/a*", "src/*b"), "e.g. ab");
        assert!(!overlap("src/*.md", "src/*.rs"), "suffixes differ");
        assert!(!overlap("src/a*", "src/b*"), "prefixes differ");
        assert!(
            overlap("src/[ab].rs", "src/c.rs"),
            "brackets are not parsed: assumed"
        );
        assert!(
            overlap("src/{a,b}/**", "src/c/x"),
            "braces are not parsed: assumed"
        );
    }

    #[test]
    fn literals_must_be_equal_and_lengths_must_agree() {
        assert!(overlap("src/lib.rs", "src/lib.rs"));
        assert!(overlap("./src//lib.rs", "src/lib.rs"));
        assert!(!overlap("src/lib.rs", "src/main.rs"));
        assert!(!overlap("src", "src/lib.rs"));
        assert!(!overlap("src/*", "src/a/b"));
    }

    #[test]
    fn many_double_stars_stay_fast() {
        // Without the memo this pair takes exponential time.
        let a = format!("{}/b", ["**/a"; 30].join("/"));
        let b = format!("**/{}/c", ["a"; 40].join("/"));
        assert!(!overlap(&a, &b));
    }

    #[test]
    fn different_repositories_never_conflict() {
        let a = Footprint::new("one", &["**"]).unwrap();
        let b = Footprint::new("two", &["**"]).unwrap();
        assert!(!a.overlaps(&b));
    }

    #[test]
    fn overlap_names_the_patterns_of_each_side() {
        let a = Footprint::new("r", &["docs/**", "src/auth/**"]).unwrap();
        let b = Footprint::new("r", &["src/auth/login.rs", "Cargo.toml"]).unwrap();
        let found = a.overlap(&b).unwrap();
        assert_eq!(found.mine, ["src/auth/**"]);
        assert_eq!(found.theirs, ["src/auth/login.rs"]);
    }

    fn of(metadata: &serde_json::Value) -> Result<Option<Footprint>, FootprintError> {
        Footprint::of_task(metadata.as_object().unwrap())
    }

    #[test]
    fn tasks_without_touches_or_repo_have_no_footprint() {
        assert_eq!(of(&serde_json::json!({"repo_name": "r"})), Ok(None));
        assert_eq!(of(&serde_json::json!({"touches": ["src/**"]})), Ok(None));
        let some = of(&serde_json::json!({"repo_name": "r", "touches": ["src/**"]})).unwrap();
        assert_eq!(some.unwrap().paths().collect::<Vec<_>>(), ["src/**"]);
        let empty = of(&serde_json::json!({"repo_name": "r", "touches": []}))
            .unwrap()
            .unwrap();
        assert!(
            !empty.overlaps(&Footprint::new("r", &["**"]).unwrap()),
            "touches nothing"
        );
    }

    #[test]
    fn a_footprint_is_learned_from_the_paths_of_earlier_patches() {
        let meta = serde_json::json!({"repo_name": "r"});
        let meta = meta.as_object().unwrap();
        let artifacts = [
            serde_json::json!({"type": "diff", "uri": "file:///p/attempt-1.patch",
                               "metadata": {"paths": ["src/auth/login.rs", "Cargo.lock"]}}),
            serde_json::json!({"type": "diff", "uri": "file:///p/attempt-2.patch",
                               "metadata": {"paths": ["src/auth/login.rs", "/abs", 7]}}),
            serde_json::json!({"type": "log", "metadata": {"paths": ["docs/x.md"]}}),
            serde_json::json!({"type": "diff", "uri": "file:///old.patch", "metadata": {}}),
        ];
        let learned = Footprint::learned(meta, &artifacts).unwrap();
        assert_eq!(
            learned.paths().collect::<Vec<_>>(),
            ["Cargo.lock", "src/auth/login.rs"]
        );
        assert!(learned.overlaps(&Footprint::new("r", &["src/auth/**"]).unwrap()));
        assert!(!learned.overlaps(&Footprint::new("r", &["docs/**"]).unwrap()));
        assert_eq!(
            Footprint::learned(meta, &artifacts[2..]),
            None,
            "nothing to learn from"
        );
        let no_repo = serde_json::json!({});
        assert_eq!(
            Footprint::learned(no_repo.as_object().unwrap(), &artifacts),
            None
        );
    }

    #[test]
    fn malformed_touches_are_errors_that_say_what_is_wrong() {
        let err = |touches: serde_json::Value| {
            of(&serde_json::json!({"repo_name": "r", "touches": touches}))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(serde_json::json!("src/**")),
            "metadata.touches must be a list of path patterns, not a string"
        );
        assert_eq!(
            err(serde_json::json!(["a", 3])),
            "metadata.touches[1] must be a string"
        );
        assert_eq!(
            err(serde_json::json!(["a", " "])),
            "metadata.touches[1] is empty"
        );
        assert_eq!(
            err(serde_json::json!(["."])),
            "metadata.touches[0] is empty"
        );
        assert!(err(serde_json::json!(["/etc/passwd"])).contains("is absolute"));
        assert!(err(serde_json::json!(["src/../x"])).contains("`..` segment"));
        // Even without a repository the list is checked, so the mistake is reported.
        assert!(of(&serde_json::json!({"touches": {"a": 1}})).is_err());
    }
}
