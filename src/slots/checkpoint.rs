//! Checkpoints of failed attempts: the slot's whole worktree (uncommitted changes included,
//! ignored files excepted) as a commit on top of the attempt's HEAD, kept under
//! `refs/dispatcher/<spec>/<task_id>/attempt-<n>` so that a later attempt can continue from it.
//!
//! The commit is built in a scratch index (`git add -A`, `write-tree`, `commit-tree -p HEAD`,
//! `update-ref`), so the slot's own index, HEAD and branch never move. In a pool of worktrees
//! the ref lives in the main clone, which every slot of the repository shares.

use std::path::Path;

use super::branch;
use super::git::{Git, GitError};

/// The namespace of every checkpoint ref.
pub const REF_PREFIX: &str = "refs/dispatcher";

/// Who the checkpoint commits are by: fixed, so a machine without a git identity still
/// makes them, and a person can tell them from their own commits.
const IDENTITY: (&str, &str) = ("dispatcher", "dispatcher@localhost");

/// The ref of the `nth` (from 1) ended attempt numbered `attempt`: attempts that did not
/// count share their number with the next, so the second and later get `-<nth>`. Spec and
/// task id are made valid ref components the way branch names are.
pub fn checkpoint_ref(spec: &str, task_id: &str, attempt: u32, nth: usize) -> String {
    let suffix = if nth > 1 {
        format!("-{nth}")
    } else {
        String::new()
    };
    format!(
        "{REF_PREFIX}/{}/{}/attempt-{attempt}{suffix}",
        component(spec),
        component(task_id)
    )
}

/// One path component of a ref: sanitized as a branch name, with `/` (which safe names never
/// hold, but sanitizing must not split one name in two) made `-`.
fn component(name: &str) -> String {
    branch::sanitize(&name.replace('/', "-"))
}

/// Commits what `git add -A` staged into `index` (a scratch index of the slot) on top of
/// HEAD and points `refname` at it. Returns the commit.
pub(super) fn commit(slot: &Path, index: &Path, refname: &str) -> Result<String, GitError> {
    let git = || {
        Git::new(slot)
            .env_path("GIT_INDEX_FILE", index)
            .env("GIT_AUTHOR_NAME", IDENTITY.0)
            .env("GIT_AUTHOR_EMAIL", IDENTITY.1)
            .env("GIT_COMMITTER_NAME", IDENTITY.0)
            .env("GIT_COMMITTER_EMAIL", IDENTITY.1)
    };
    let tree = git().arg("write-tree").text()?;
    let head = git()
        .args(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"])
        .text()
        .ok();
    let mut commit_tree = git()
        .args(["commit-tree", &tree, "-m"])
        .arg(format!("dispatcher checkpoint {refname}"));
    if let Some(head) = &head {
        commit_tree = commit_tree.args(["-p", head]);
    }
    let commit = commit_tree.text()?;
    git()
        .args([
            "update-ref",
            "-m",
            "dispatcher checkpoint",
            refname,
            &commit,
        ])
        .run()?;
    Ok(commit)
}

/// Whether `refname` names a commit in the repository at `dir`.
pub(super) fn exists(dir: &Path, refname: &str) -> Result<bool, GitError> {
    Git::new(dir)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{refname}^{{commit}}"))
        .succeeds()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git_accepts(name: &str) -> bool {
        Git::new(&std::env::temp_dir())
            .args(["check-ref-format", name])
            .succeeds()
            .unwrap()
    }

    #[test]
    fn ordinary_names_are_kept() {
        assert_eq!(
            checkpoint_ref("chat-app", "1.2", 3, 1),
            "refs/dispatcher/chat-app/1.2/attempt-3"
        );
        assert_eq!(
            checkpoint_ref("chat-app", "1.2", 3, 2),
            "refs/dispatcher/chat-app/1.2/attempt-3-2"
        );
    }

    #[test]
    fn awkward_names_become_valid_refs() {
        // Safe names (no `/`, no leading `.`, no `..`) may still hold what refs refuse.
        let cases = [
            (
                "my spec",
                "t~1^2:x",
                "refs/dispatcher/my-spec/t-1-2-x/attempt-1",
            ),
            ("s.lock", "a?b*[c]", "refs/dispatcher/s/a-b--c]/attempt-1"),
            ("s", "x@{1}", "refs/dispatcher/s/x-{1}/attempt-1"),
            ("-s", "t.", "refs/dispatcher/s/t/attempt-1"),
            ("s", "a/b", "refs/dispatcher/s/a-b/attempt-1"),
            ("日本", "Äpfel", "refs/dispatcher/日本/Äpfel/attempt-1"),
        ];
        for (spec, task, expected) in cases {
            let name = checkpoint_ref(spec, task, 1, 1);
            assert_eq!(name, expected, "{spec:?} {task:?}");
            assert!(git_accepts(&name), "{name:?}");
        }
    }
}
