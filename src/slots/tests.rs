//! Slot tests against real git repositories in temp directories.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tempfile::TempDir;

use super::*;

/// Runs git in `dir` with an identity of its own, so commits work on a fresh machine.
fn git(dir: &Path, args: &[&str]) -> String {
    Git::new(dir)
        .args([
            "-c",
            "user.name=Slot Test",
            "-c",
            "user.email=slots@example.com",
        ])
        .args(args)
        .text()
        .unwrap_or_else(|err| panic!("{err}"))
}

/// An origin repository with one commit on `main`: a README and a `.gitignore` for `target/`.
fn make_origin(root: &Path) -> PathBuf {
    let origin = root.join("origin");
    fs::create_dir_all(&origin).unwrap();
    git(&origin, &["init", "--quiet", "--initial-branch=main"]);
    fs::write(origin.join("README.md"), "hello\n").unwrap();
    fs::write(origin.join(".gitignore"), "target/\n").unwrap();
    git(&origin, &["add", "--all"]);
    git(&origin, &["commit", "--quiet", "-m", "initial"]);
    origin
}

struct Fixture {
    tmp: TempDir,
    origin: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let origin = make_origin(tmp.path());
        Fixture { tmp, origin }
    }

    fn workspaces(&self) -> PathBuf {
        self.tmp.path().join("workspaces")
    }

    /// A manager for repository `app` with `slots` slots.
    fn manager(&self, slots: usize) -> SlotManager {
        SlotManager::new(&RepoPoolSettings {
            dir: self.workspaces(),
            repos: vec![RepoConfig {
                name: "app".to_owned(),
                url: self.origin.to_string_lossy().into_owned(),
                slots,
                base_branch: "main".to_owned(),
                branch_pattern: DEFAULT_BRANCH_PATTERN.to_owned(),
                bootstrap: BootstrapConfig::default(),
            }],
        })
    }

    fn slot_path(&self, number: u32) -> PathBuf {
        self.workspaces().join(format!("app/slot{number}"))
    }

    fn slot_json(&self, number: u32) -> Value {
        read_value(&self.slot_path(number).join("slot.json"))
    }
}

fn read_value(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn keys(value: &Value) -> Vec<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/necrocode/workspaces")
}

fn porcelain(dir: &Path) -> String {
    git(dir, &["status", "--porcelain", "--untracked-files=all"])
}

fn slot_dirs(pool: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(pool)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("slot"))
        .collect();
    names.sort();
    names
}

#[test]
fn sync_creates_worktrees_and_necrocode_files() {
    let fx = Fixture::new();
    let manager = fx.manager(2);
    assert!(manager.has_repo("app"));
    assert!(!manager.has_repo("other"));
    let lines = manager.sync().unwrap();
    assert!(lines.iter().any(|l| l.contains("cloned")), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("workspace-app-slot2: added")),
        "{lines:?}"
    );

    let pool_dir = fx.workspaces().join("app");
    assert_eq!(slot_dirs(&pool_dir), ["slot1", "slot2"]);
    let pool = read_value(&pool_dir.join("pool.json"));
    let necro_pool = read_value(&fixture_dir().join("chat-app/pool.json"));
    assert_eq!(keys(&pool), keys(&necro_pool));
    assert_eq!(pool["num_slots"], 2);
    assert_eq!(pool["repo_name"], "app");

    let necro_slot = read_value(&fixture_dir().join("chat-app/slot1/slot.json"));
    for number in [1, 2] {
        let slot = fx.slot_json(number);
        assert_eq!(keys(&slot), keys(&necro_slot));
        assert_eq!(slot["slot_id"], format!("workspace-app-slot{number}"));
        assert_eq!(slot["state"], "available");
        assert_eq!(slot["allocation_count"], 0);
        assert_eq!(slot["current_branch"], "main");
        let path = fx.slot_path(number);
        assert_eq!(slot["slot_path"], path.to_str().unwrap());
        assert_eq!(slot["current_commit"], git(&path, &["rev-parse", "HEAD"]));
        // A worktree of the main clone, with slot.json invisible to git.
        assert!(path.join(".git").is_file());
        assert_eq!(porcelain(&path), "");
        assert!(path.join("README.md").is_file());
    }

    assert_eq!(manager.sync().unwrap(), Vec::<String>::new(), "idempotent");
}

#[test]
fn sync_grows_and_shrinks_only_free_slots() {
    let fx = Fixture::new();
    fx.manager(2).sync().unwrap();
    let pool_dir = fx.workspaces().join("app");

    let lines = fx.manager(3).sync().unwrap();
    assert_eq!(
        lines,
        [format!(
            "workspace-app-slot3: added {}",
            fx.slot_path(3).display()
        )]
    );
    assert_eq!(slot_dirs(&pool_dir), ["slot1", "slot2", "slot3"]);
    assert_eq!(read_value(&pool_dir.join("pool.json"))["num_slots"], 3);

    let manager = fx.manager(3);
    let a = manager.allocate("app", "spec", "1").unwrap().unwrap();
    let b = manager.allocate("app", "spec", "2").unwrap().unwrap();
    assert_eq!(
        (a.slot_id.as_str(), b.slot_id.as_str()),
        ("workspace-app-slot1", "workspace-app-slot2")
    );

    // Down to one: slot3 is free and goes; slot1 and slot2 are in use and stay.
    let lines = fx.manager(1).sync().unwrap();
    assert_eq!(lines[0], "workspace-app-slot3: removed");
    assert!(
        lines[1].contains("1 slot(s) more than configured are in use"),
        "{lines:?}"
    );
    assert_eq!(slot_dirs(&pool_dir), ["slot1", "slot2"]);
    assert_eq!(read_value(&pool_dir.join("pool.json"))["num_slots"], 2);

    // Once released, the highest-numbered free slot goes.
    manager
        .release(&b.slot_id, &fx.tmp.path().join("b.patch"))
        .unwrap();
    let lines = fx.manager(1).sync().unwrap();
    assert_eq!(lines, ["workspace-app-slot2: removed"]);
    assert_eq!(slot_dirs(&pool_dir), ["slot1"]);
    assert_eq!(read_value(&pool_dir.join("pool.json"))["num_slots"], 1);
    let worktrees = git(&pool_dir.join(".repo"), &["worktree", "list"]);
    assert!(!worktrees.contains("slot2"), "{worktrees}");
}

#[test]
fn allocations_get_distinct_slots_and_branches_then_none() {
    let fx = Fixture::new();
    let manager = fx.manager(2);
    // The first allocation creates the pool on its own.
    let a = manager.allocate("app", "chat", "1.1").unwrap().unwrap();
    let b = manager.allocate("app", "chat", "1.2").unwrap().unwrap();
    assert_ne!(a.slot_id, b.slot_id);
    assert_eq!(a.branch, "task/chat/1.1");
    assert_eq!(b.branch, "task/chat/1.2");
    assert_eq!(a.repo_url, fx.origin.to_str().unwrap());
    assert_eq!(a.slot_path, fx.slot_path(1));
    assert_eq!(
        git(&a.slot_path, &["branch", "--show-current"]),
        "task/chat/1.1"
    );
    assert_eq!(
        git(&b.slot_path, &["branch", "--show-current"]),
        "task/chat/1.2"
    );

    let slot = fx.slot_json(1);
    assert_eq!(slot["state"], "allocated");
    assert_eq!(slot["allocation_count"], 1);
    assert_eq!(slot["current_branch"], "task/chat/1.1");
    assert_eq!(slot["metadata"]["task"], "chat/1.1");
    assert_eq!(slot["metadata"]["task_id"], "1.1");
    assert_eq!(slot["metadata"]["spec_name"], "chat");
    assert!(slot["last_allocated_at"].is_string());

    assert_eq!(manager.allocate("app", "chat", "1.3").unwrap(), None);
    let err = manager.allocate("nope", "chat", "1").unwrap_err();
    assert!(matches!(err, SlotError::UnknownRepo { .. }), "{err}");
    let err = manager.allocate("app", "../x", "1").unwrap_err();
    assert!(err.to_string().contains("invalid spec name"), "{err}");
}

#[test]
fn allocation_takes_the_least_recently_used_slot() {
    let fx = Fixture::new();
    let manager = fx.manager(3);
    let patch = fx.tmp.path().join("p.patch");
    let first = manager.allocate("app", "s", "1").unwrap().unwrap();
    manager.release(&first.slot_id, &patch).unwrap();
    // Never-used slots come before a used one.
    let second = manager.allocate("app", "s", "2").unwrap().unwrap();
    let third = manager.allocate("app", "s", "3").unwrap().unwrap();
    assert_eq!(second.slot_id, "workspace-app-slot2");
    assert_eq!(third.slot_id, "workspace-app-slot3");
    manager.release(&third.slot_id, &patch).unwrap();
    manager.release(&second.slot_id, &patch).unwrap();
    // slot1 was released first, then slot3, then slot2.
    let order: Vec<String> = (4..7)
        .map(|n| {
            manager
                .allocate("app", "s", &n.to_string())
                .unwrap()
                .unwrap()
                .slot_id
        })
        .collect();
    assert_eq!(
        order,
        [
            "workspace-app-slot1",
            "workspace-app-slot3",
            "workspace-app-slot2"
        ]
    );
    assert_eq!(fx.slot_json(1)["allocation_count"], 2);
}

#[test]
fn concurrent_allocations_never_share_a_slot() {
    let fx = Fixture::new();
    let manager = fx.manager(2);
    manager.sync().unwrap();
    let handles: Vec<_> = (0..3)
        .map(|n| {
            let manager = manager.clone();
            std::thread::spawn(move || manager.allocate("app", "s", &n.to_string()).unwrap())
        })
        .collect();
    let results: Vec<Option<Allocation>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut slots: Vec<String> = results
        .iter()
        .flatten()
        .map(|a| a.slot_id.clone())
        .collect();
    slots.sort();
    // A thread that finds both slots locked or taken gets None, never a shared slot.
    slots.dedup();
    assert_eq!(slots.len(), results.iter().flatten().count());
    assert!(!slots.is_empty());
}

#[test]
fn a_second_patch_under_the_same_attempt_number_is_kept_beside_the_first() {
    let fx = Fixture::new();
    let manager = fx.manager(1);
    let patch_path = fx.tmp.path().join("patches/attempt-2.patch");
    let mut saved = Vec::new();
    for text in ["first\n", "second\n", "third\n"] {
        let alloc = manager.allocate("app", "spec", "7").unwrap().unwrap();
        fs::write(alloc.slot_path.join("work.txt"), text).unwrap();
        let patch = manager
            .release(&alloc.slot_id, &patch_path)
            .unwrap()
            .expect("changes make a patch");
        let body = fs::read_to_string(&patch.path).unwrap();
        assert!(body.contains(&format!("+{text}")), "{body}");
        assert_eq!(patch.paths, ["work.txt"], "the files it changes");
        saved.push(patch.path);
    }
    let dir = fx.tmp.path().join("patches");
    assert_eq!(
        saved,
        [
            dir.join("attempt-2.patch"),
            dir.join("attempt-2-2.patch"),
            dir.join("attempt-2-3.patch")
        ]
    );
}

#[test]
fn release_saves_a_patch_and_leaves_a_pristine_checkout() {
    let fx = Fixture::new();
    let manager = fx.manager(1);
    let alloc = manager.allocate("app", "spec", "7").unwrap().unwrap();
    let slot = &alloc.slot_path;
    // A commit made during the allocation, then uncommitted work of every kind.
    fs::write(slot.join("done.txt"), "committed\n").unwrap();
    git(slot, &["add", "done.txt"]);
    git(slot, &["commit", "--quiet", "-m", "agent work"]);
    let commit = git(slot, &["rev-parse", "HEAD"]);
    fs::write(slot.join("README.md"), "hello\nchanged\n").unwrap();
    fs::create_dir_all(slot.join("src")).unwrap();
    fs::write(slot.join("src/new.txt"), "untracked\n").unwrap();
    fs::write(slot.join("blob.bin"), [0u8, 1, 2, 255]).unwrap();
    fs::create_dir_all(slot.join("target")).unwrap();
    fs::write(slot.join("target/build.o"), "ignored\n").unwrap();
    // What a crash in the middle of writing slot.json leaves behind.
    fs::write(slot.join("slot.tmp"), "{").unwrap();
    git(slot, &["add", "README.md"]);
    let staged_before = git(slot, &["diff", "--cached", "--name-only"]);

    let patch_path = fx.tmp.path().join("artifacts/attempt-1.patch");
    let patch = manager
        .release(&alloc.slot_id, &patch_path)
        .unwrap()
        .unwrap();
    assert_eq!(patch.path, patch_path);
    assert_eq!(patch.size_bytes, fs::metadata(&patch_path).unwrap().len());
    let text = String::from_utf8_lossy(&fs::read(&patch_path).unwrap()).into_owned();
    assert!(
        text.contains("diff --git a/README.md b/README.md"),
        "{text}"
    );
    assert!(text.contains("+changed"), "{text}");
    assert!(text.contains("b/src/new.txt"), "{text}");
    assert!(text.contains("GIT binary patch"), "{text}");
    assert!(!text.contains("slot.json"), "{text}");
    assert!(!text.contains("slot.tmp"), "{text}");
    assert!(!text.contains("build.o"), "ignored files stay out: {text}");
    assert_eq!(staged_before, "README.md");

    // Pristine: nothing modified or untracked, ignored output gone, slot.json kept.
    assert_eq!(porcelain(slot), "");
    assert!(!slot.join("src/new.txt").exists());
    assert!(!slot.join("target").exists());
    assert!(!slot.join("slot.tmp").exists());
    assert!(!slot.join("done.txt").exists(), "back on the base");
    assert_eq!(
        fs::read_to_string(slot.join("README.md")).unwrap(),
        "hello\n"
    );
    let state = fx.slot_json(1);
    assert_eq!(state["state"], "available");
    assert_eq!(state["current_branch"], "main");
    assert!(state["last_released_at"].is_string());
    assert!(state["total_usage_seconds"].as_u64().is_some());
    assert!(state["metadata"].as_object().unwrap().is_empty());

    // The branch keeps its commit, and the patch applies on top of it.
    assert_eq!(git(slot, &["rev-parse", "refs/heads/task/spec/7"]), commit);
    let check = fx.tmp.path().join("check");
    git(
        fx.tmp.path(),
        &[
            "clone",
            "--quiet",
            fx.workspaces().join("app/.repo").to_str().unwrap(),
            check.to_str().unwrap(),
        ],
    );
    git(&check, &["checkout", "--quiet", "task/spec/7"]);
    git(&check, &["apply", "--check", patch_path.to_str().unwrap()]);

    // Nothing uncommitted, nothing saved; releasing a free slot is a no-op.
    let again = manager.allocate("app", "spec", "8").unwrap().unwrap();
    let clean_patch = fx.tmp.path().join("clean.patch");
    assert_eq!(manager.release(&again.slot_id, &clean_patch).unwrap(), None);
    assert!(!clean_patch.exists());
    assert_eq!(manager.release(&again.slot_id, &clean_patch).unwrap(), None);
    assert_eq!(fx.slot_json(1)["allocation_count"], 2);
    let err = manager
        .release("workspace-app-slot9", &clean_patch)
        .unwrap_err();
    assert!(matches!(err, SlotError::UnknownSlot { .. }), "{err}");
}

#[test]
fn a_checkpoint_saves_the_worktree_without_moving_index_or_head() {
    let fx = Fixture::new();
    let manager = fx.manager(2);
    let alloc = manager.allocate("app", "spec", "7").unwrap().unwrap();
    let path = &alloc.slot_path;
    fs::write(path.join("done.txt"), "committed\n").unwrap();
    git(path, &["add", "done.txt"]);
    git(path, &["commit", "--quiet", "-m", "agent work"]);
    let head = git(path, &["rev-parse", "HEAD"]);
    fs::write(path.join("README.md"), "hello\nchanged\n").unwrap();
    git(path, &["add", "README.md"]);
    fs::create_dir_all(path.join("src")).unwrap();
    fs::write(path.join("src/new.txt"), "untracked\n").unwrap();
    fs::create_dir_all(path.join("target")).unwrap();
    fs::write(path.join("target/build.o"), "ignored\n").unwrap();
    let status_before = porcelain(path);

    let refname = checkpoint_ref("spec", "7", 1, 1);
    let slot = manager.slot(&alloc.slot_id).unwrap();
    save_patch(&slot, &fx.tmp.path().join("p.patch"), Some(&refname)).unwrap();
    // The slot's own state is untouched: same HEAD, same staged and unstaged changes.
    assert_eq!(git(path, &["rev-parse", "HEAD"]), head);
    assert_eq!(porcelain(path), status_before);
    assert_eq!(git(path, &["diff", "--cached", "--name-only"]), "README.md");

    // The checkpoint sits on HEAD and holds every change but ignored files and slot.json.
    assert_eq!(git(path, &["rev-parse", &format!("{refname}^")]), head);
    let files = git(path, &["ls-tree", "-r", "--name-only", &refname]);
    let files: Vec<&str> = files.lines().collect();
    assert_eq!(
        files,
        [".gitignore", "README.md", "done.txt", "src/new.txt"],
        "{files:?}"
    );
    assert_eq!(
        git(path, &["show", &format!("{refname}:README.md")]),
        "hello\nchanged"
    );
    // Refs live in the main clone: another slot of the pool sees it.
    let other = fx.slot_path(2);
    assert_eq!(
        git(&other, &["show", &format!("{refname}:src/new.txt")]),
        "untracked"
    );
    assert_eq!(manager.checkpoint_exists("app", &refname), Some(true));
    let missing = checkpoint_ref("spec", "7", 9, 1);
    assert_eq!(manager.checkpoint_exists("app", &missing), Some(false));
    assert_eq!(manager.checkpoint_exists("nope", &refname), None);

    // Through a release: saved, then cleaned as ever.
    let second = checkpoint_ref("spec", "7", 1, 2);
    let released = manager
        .release_held(
            &alloc.slot_id,
            Some("spec/7"),
            &fx.tmp.path().join("r.patch"),
            Some(&second),
        )
        .unwrap();
    assert!(matches!(released, Release::Released(Some(_))));
    assert_eq!(porcelain(path), "");
    assert_eq!(
        git(&other, &["show", &format!("{second}:src/new.txt")]),
        "untracked"
    );
}

#[test]
fn copy_files_are_hidden_from_git_in_every_slot() {
    let fx = Fixture::new();
    let mut settings = RepoPoolSettings {
        dir: fx.workspaces(),
        repos: vec![RepoConfig {
            name: "app".to_owned(),
            url: fx.origin.to_string_lossy().into_owned(),
            slots: 1,
            base_branch: "main".to_owned(),
            branch_pattern: DEFAULT_BRANCH_PATTERN.to_owned(),
            bootstrap: BootstrapConfig::default(),
        }],
    };
    settings.repos[0].bootstrap.copy_files = vec![".env".into(), "conf/local[1].json".into()];
    let manager = SlotManager::new(&settings);
    let alloc = manager.allocate("app", "spec", "7").unwrap().unwrap();
    let path = &alloc.slot_path;
    fs::write(path.join(".env"), "SECRET=1\n").unwrap();
    fs::create_dir_all(path.join("conf")).unwrap();
    fs::write(path.join("conf/local[1].json"), "{}\n").unwrap();
    fs::write(path.join("conf/local1.json"), "{}\n").unwrap();
    // Only the named files are hidden: the pattern's brackets are not a glob.
    assert_eq!(porcelain(path), "?? conf/local1.json");
}

#[test]
fn exclude_patterns_match_only_the_file() {
    assert_eq!(exclude_pattern(".env"), "/.env");
    assert_eq!(exclude_pattern("./a/b.txt"), "/a/b.txt");
    assert_eq!(exclude_pattern("x*?[y]\\z"), "/x\\*\\?\\[y]\\\\z");
    assert_eq!(exclude_pattern("!keep"), "/!keep");
    assert_eq!(exclude_pattern("trailing "), "/trailing\\ ");
}

#[test]
fn broken_slot_goes_to_error_and_is_skipped_then_repaired_by_sync() {
    // The workspaces live inside another repository, as they would under a project's config
    // dir: a slot without its .git must never make git act on the enclosing repository.
    let fx = Fixture::new();
    git(fx.tmp.path(), &["init", "--quiet"]);
    fs::write(fx.tmp.path().join("precious.txt"), "keep me\n").unwrap();
    let manager = fx.manager(2);
    manager.sync().unwrap();

    let dot_git = fx.slot_path(1).join(".git");
    let saved = fs::read(&dot_git).unwrap();
    fs::remove_file(&dot_git).unwrap();
    let err = manager.allocate("app", "s", "1").unwrap_err();
    assert!(err.to_string().contains("workspace-app-slot1"), "{err}");
    assert!(err.to_string().contains("not a git checkout"), "{err}");
    let state = fx.slot_json(1);
    assert_eq!(state["state"], "error");
    assert!(state["metadata"]["error"]
        .as_str()
        .unwrap()
        .contains("not a git checkout"));

    // The next allocation skips it.
    let next = manager.allocate("app", "s", "1").unwrap().unwrap();
    assert_eq!(next.slot_id, "workspace-app-slot2");

    // A release whose git commands fail also ends in error, and says which command.
    fs::write(fx.slot_path(2).join("work.txt"), "x").unwrap();
    let objects = fx.workspaces().join("app/.repo/.git/worktrees/slot2");
    let moved = fx.tmp.path().join("moved-admin");
    fs::rename(&objects, &moved).unwrap();
    let err = manager
        .release(&next.slot_id, &fx.tmp.path().join("p.patch"))
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("slot workspace-app-slot2: `git "),
        "{err}"
    );
    assert_eq!(fx.slot_json(2)["state"], "error");
    assert_eq!(manager.allocate("app", "s", "2").unwrap(), None);
    assert_eq!(
        fs::read_to_string(fx.tmp.path().join("precious.txt")).unwrap(),
        "keep me\n"
    );

    // Once the checkouts are whole again, sync repairs both slots, saving slot2's work.
    fs::write(&dot_git, saved).unwrap();
    fs::rename(&moved, &objects).unwrap();
    let lines = manager.sync().unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("workspace-app-slot1: error slot cleaned and available"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("uncommitted changes saved to"),
        "{lines:?}"
    );
    assert_eq!(fx.slot_json(1)["state"], "available");
    assert!(fx.slot_json(1)["metadata"].get("error").is_none());
    assert_eq!(fx.slot_json(2)["state"], "available");
    assert_eq!(porcelain(&fx.slot_path(2)), "");
}

#[test]
fn sync_rebuilds_a_slot_that_is_no_checkout_any_more_and_keeps_its_files() {
    let fx = Fixture::new();
    let manager = fx.manager(1);
    manager.sync().unwrap();
    fs::remove_file(fx.slot_path(1).join(".git")).unwrap();
    fs::write(fx.slot_path(1).join("notes.txt"), "unsaved work\n").unwrap();
    manager.allocate("app", "s", "1").unwrap_err();
    assert_eq!(fx.slot_json(1)["state"], "error");

    let lines = manager.sync().unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("workspace-app-slot1: not a checkout any more; rebuilt"),
        "{lines:?}"
    );
    assert_eq!(fx.slot_json(1)["state"], "available");
    assert!(fx.slot_json(1)["metadata"].get("error").is_none());
    // The old directory, with what was left in it, is kept aside.
    let recovered: Vec<PathBuf> = fs::read_dir(fx.workspaces().join("app/recovered"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert_eq!(
        fs::read_to_string(recovered[0].join("notes.txt")).unwrap(),
        "unsaved work\n"
    );
    // The slot is a working checkout again and is lent out.
    let alloc = manager.allocate("app", "s", "1").unwrap().unwrap();
    assert_eq!(alloc.slot_id, "workspace-app-slot1");
    assert_eq!(porcelain(&fx.slot_path(1)), "");
    assert!(!fx.slot_path(1).join("notes.txt").exists());
}

#[test]
fn recover_frees_slots_of_dead_tasks_and_finishes_cleaning() {
    let fx = Fixture::new();
    let manager = fx.manager(3);
    let dead = manager.allocate("app", "s", "dead").unwrap().unwrap();
    let alive = manager.allocate("app", "s", "alive").unwrap().unwrap();
    let cleaning = manager.allocate("app", "s", "cleaning").unwrap().unwrap();
    fs::write(dead.slot_path.join("unsaved.txt"), "work\n").unwrap();
    // A crash in the middle of a clean leaves the slot in `cleaning`.
    let mut state = fx.slot_json(3);
    state["state"] = "cleaning".into();
    fs::write(cleaning.slot_path.join("slot.json"), state.to_string()).unwrap();
    fs::write(cleaning.slot_path.join("half.txt"), "x").unwrap();

    let lines = manager.recover(&|id| id == alive.slot_id).unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let dead_line = "workspace-app-slot1: allocated slot cleaned and available (task s/dead); \
                     uncommitted changes saved to ";
    assert!(lines[0].starts_with(dead_line), "{lines:?}");
    assert_eq!(
        lines[1],
        "workspace-app-slot3: cleaning slot cleaned and available (task s/cleaning)"
    );
    let recovered: Vec<_> = fs::read_dir(fx.workspaces().join("app/recovered"))
        .unwrap()
        .collect();
    assert_eq!(recovered.len(), 1);
    let patch = fs::read_to_string(recovered[0].as_ref().unwrap().path()).unwrap();
    assert!(patch.contains("unsaved.txt"), "{patch}");

    assert_eq!(fx.slot_json(1)["state"], "available");
    assert_eq!(fx.slot_json(2)["state"], "allocated");
    assert_eq!(fx.slot_json(3)["state"], "available");
    assert!(!cleaning.slot_path.join("half.txt").exists());
    assert_eq!(porcelain(&dead.slot_path), "");
    assert_eq!(manager.recover(&|_| true).unwrap(), Vec::<String>::new());
}

/// The fixture workspace with each slot made a real clone of a fresh origin, its `slot.json`
/// kept as NecroCode wrote it.
fn necrocode_workspace(root: &Path, origin: &Path) -> PathBuf {
    let workspaces = root.join("necro");
    let pool = workspaces.join("chat-app");
    fs::create_dir_all(&pool).unwrap();
    fs::copy(
        fixture_dir().join("chat-app/pool.json"),
        pool.join("pool.json"),
    )
    .unwrap();
    for slot in ["slot1", "slot2"] {
        let path = pool.join(slot);
        git(
            root,
            &[
                "clone",
                "--quiet",
                origin.to_str().unwrap(),
                path.to_str().unwrap(),
            ],
        );
        fs::copy(
            fixture_dir().join("chat-app").join(slot).join("slot.json"),
            path.join("slot.json"),
        )
        .unwrap();
    }
    workspaces
}

#[test]
fn necrocode_workspace_is_listed_and_used_as_it_is() {
    let fx = Fixture::new();
    let workspaces = necrocode_workspace(fx.tmp.path(), &fx.origin);
    let manager = SlotManager::new(&RepoPoolSettings {
        dir: workspaces.clone(),
        repos: Vec::new(),
    });
    assert!(manager.has_repo("chat-app"));

    let pools = manager.list().unwrap();
    assert_eq!(pools.len(), 1);
    let pool = &pools[0];
    assert_eq!(pool.repo_name, "chat-app");
    assert_eq!(pool.repo_url, "https://example.com/team/chat-app.git");
    assert!(!pool.configured && pool.synced);
    assert_eq!(pool.main_clone_bytes, None);
    let ids: Vec<&str> = pool.slots.iter().map(|s| s.slot_id.as_str()).collect();
    assert_eq!(
        ids,
        ["workspace-chat-app-slot1", "workspace-chat-app-slot2"]
    );
    let (slot1, slot2) = (&pool.slots[0], &pool.slots[1]);
    assert_eq!(slot1.state, SlotState::Available);
    assert_eq!(slot1.task, None);
    assert_eq!(slot2.state, SlotState::Allocated);
    assert_eq!(slot2.task.as_deref(), Some("chat-app/1.1"));
    assert_eq!(slot2.allocation_count, 1);
    assert_eq!(
        slot2.last_allocated_at.as_deref(),
        Some("2026-11-29T09:07:12.819127")
    );
    assert_eq!(slot2.slot_path, workspaces.join("chat-app/slot2"));
    assert!(slot1.disk_bytes > 0);
    let text = render(&pools);
    assert!(
        text.contains("workspace-chat-app-slot2  allocated  chat-app/1.1"),
        "{text}"
    );
    let json = serde_json::to_value(&pools).unwrap();
    assert_eq!(json[0]["slots"][1]["state"], "allocated");

    // The free clone takes a task and comes back clean, slot.json in place.
    let alloc = manager
        .allocate("chat-app", "chat-app", "2")
        .unwrap()
        .unwrap();
    assert_eq!(alloc.slot_id, "workspace-chat-app-slot1");
    assert_eq!(alloc.branch, "task/chat-app/2");
    fs::write(alloc.slot_path.join("x.txt"), "x").unwrap();
    let patch = manager
        .release(&alloc.slot_id, &fx.tmp.path().join("x.patch"))
        .unwrap();
    assert!(patch.is_some());
    assert_eq!(porcelain(&alloc.slot_path), "");
    let state = read_value(&alloc.slot_path.join("slot.json"));
    assert_eq!(state["state"], "available");
    assert_eq!(state["created_at"], "2026-11-29T09:07:12.770776");
    assert_eq!(state["slot_path"], alloc.slot_path.to_str().unwrap());

    // NecroCode's own allocation of slot2 is stale once its task is gone.
    let lines = manager.recover(&|_| false).unwrap();
    assert_eq!(
        lines,
        ["workspace-chat-app-slot2: allocated slot cleaned and available (task chat-app/1.1)"]
    );
}

#[test]
fn necrocode_pool_grows_by_clones() {
    let fx = Fixture::new();
    let workspaces = necrocode_workspace(fx.tmp.path(), &fx.origin);
    let manager = SlotManager::new(&RepoPoolSettings {
        dir: workspaces.clone(),
        repos: vec![RepoConfig {
            name: "chat-app".to_owned(),
            url: fx.origin.to_string_lossy().into_owned(),
            slots: 3,
            base_branch: "main".to_owned(),
            branch_pattern: DEFAULT_BRANCH_PATTERN.to_owned(),
            bootstrap: BootstrapConfig::default(),
        }],
    });
    let lines = manager.sync().unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let slot3 = workspaces.join("chat-app/slot3");
    assert!(
        slot3.join(".git").is_dir(),
        "a full clone like its siblings"
    );
    assert!(!workspaces.join("chat-app/.repo").exists());
    assert_eq!(porcelain(&slot3), "");
    assert_eq!(
        read_value(&workspaces.join("chat-app/pool.json"))["num_slots"],
        3
    );
}

#[test]
fn manager_is_shareable_across_threads() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<SlotManager>();
}

#[test]
fn slot_ids_name_existing_slots_only() {
    let fx = Fixture::new();
    let manager = fx.manager(1);
    manager.sync().unwrap();
    for id in [
        "workspace-app-slot2",
        "workspace-app-slot01",
        "app-slot1",
        "workspace-.app-slot1",
        "workspace-app-slot0",
    ] {
        let err = manager.release(id, &fx.tmp.path().join("p")).unwrap_err();
        assert!(matches!(err, SlotError::UnknownSlot { .. }), "{id}: {err}");
    }
    let err = manager
        .release("workspace-app/../slot1", &fx.tmp.path().join("p"))
        .unwrap_err();
    assert!(matches!(err, SlotError::Name(_)), "{err}");
    assert_eq!(
        manager
            .release("workspace-app-slot1", &fx.tmp.path().join("p"))
            .unwrap(),
        None
    );
}
