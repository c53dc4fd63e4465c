//! Writing a big taskset without serialising the tasks a write did not change: the JSON text
//! of each task as last written is kept and spliced into the next document.
//!
//! A claim or an end changes one or a few tasks, but the format makes every write rewrite the
//! whole file; with a thousand tasks, serialising them all was a third of the core thread's
//! time in W1. The kept text is used only when the taskset being written is exactly the one
//! rendered last (the file still has the fingerprint of that write) and the task is not among
//! those the change lists; debug builds render the whole document as well and check that
//! both are the same bytes.

use std::collections::HashSet;
use std::io::IoSlice;

use serde::ser::{Serialize, Serializer};

use super::json;
use super::store::Fingerprint;
use super::{Task, Taskset};

/// How deep a task sits in a taskset document: `{"tasks": [ {...} ]}`.
const TASK_DEPTH: usize = 2;

/// The top-level `tasks` entry of a document rendered with no tasks. Unique: keys one level
/// deep follow a newline and two spaces, and no string holds a raw newline or an unescaped
/// quote.
const EMPTY_TASKS: &[u8] = b"\n  \"tasks\": []";

/// The JSON text of each task of one taskset, as its last write rendered it.
#[derive(Default, Debug)]
pub struct RenderedTasks {
    /// The file that write produced; the texts describe that version and no other.
    written: Option<Fingerprint>,
    /// In the order of the tasks, with their ids: a task is matched by position and id, so
    /// no hashing is spent on the thousands of tasks a write leaves alone.
    texts: Vec<(String, Vec<u8>)>,
    /// What `texts` holds, in bytes (for the caller's memory budget).
    size: usize,
}

impl RenderedTasks {
    /// The document for `taskset`, which was the file with fingerprint `read` before a change
    /// that touched (at most) the tasks `changed`. Every other task's text is reused when this
    /// cache holds the rendering of that very file.
    ///
    /// The document comes as pieces to write in order: joined into one buffer, a thousand-task
    /// document was a megabyte allocated, faulted in and copied on every write.
    pub fn render(
        &mut self,
        taskset: &Taskset,
        read: Option<Fingerprint>,
        changed: &[String],
    ) -> Document<'_> {
        let current = read.is_some() && read == self.written;
        let mut kept = std::mem::take(&mut self.texts).into_iter();
        if !current {
            kept = Vec::new().into_iter();
        }
        let changed: HashSet<&str> = changed.iter().map(String::as_str).collect();
        let mut texts = Vec::with_capacity(taskset.tasks.len());
        for task in &taskset.tasks {
            let reusable = kept
                .next()
                .filter(|(id, _)| *id == task.id && !changed.contains(id.as_str()));
            texts.push(match reusable {
                Some(kept) => kept,
                None => (task.id.clone(), render_task(task)),
            });
        }
        self.size = texts.iter().map(|(id, text)| id.len() + text.len()).sum();
        self.texts = texts;
        self.written = None;
        let document = Document::new(taskset, &self.texts);
        debug_assert!(
            document.to_vec() == taskset.to_json_bytes(),
            "a kept task text is stale: a write changed a task it did not list"
        );
        document
    }

    /// Records the fingerprint of the file the last [`RenderedTasks::render`] went to, once it
    /// is written (without it, the next render starts from scratch).
    pub fn written_as(&mut self, fingerprint: Option<Fingerprint>) {
        self.written = fingerprint;
    }

    /// The bytes of text kept.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Drops the kept texts (the next write renders every task).
    pub fn clear(&mut self) {
        *self = RenderedTasks::default();
    }
}

fn render_task(task: &Task) -> Vec<u8> {
    json::to_pretty_bytes_at(task, TASK_DEPTH).expect("a task serializes to JSON")
}

/// A rendered document: the taskset rendered without its tasks, with the tasks' texts put in
/// the empty list as the pretty printer lays out a list's items.
pub struct Document<'a> {
    frame: Vec<u8>,
    /// Where the frame's empty list `[]` starts; `None` when there are no tasks to put in.
    list: Option<usize>,
    texts: &'a [(String, Vec<u8>)],
}

impl<'a> Document<'a> {
    fn new(taskset: &Taskset, texts: &'a [(String, Vec<u8>)]) -> Document<'a> {
        let frame = json::to_pretty_bytes(&Frame(taskset)).expect("a taskset serializes to JSON");
        let list = (!texts.is_empty()).then(|| {
            frame
                .windows(EMPTY_TASKS.len())
                .position(|w| w == EMPTY_TASKS)
                .expect("a taskset document has a tasks entry")
                + EMPTY_TASKS.len()
                - b"[]".len()
        });
        Document { frame, list, texts }
    }

    /// The pieces of the document, in order, for one vectored write.
    pub fn pieces(&self) -> Vec<IoSlice<'_>> {
        let Some(list) = self.list else {
            return vec![IoSlice::new(&self.frame)];
        };
        let mut pieces = Vec::with_capacity(2 * self.texts.len() + 4);
        pieces.push(IoSlice::new(&self.frame[..list]));
        pieces.push(IoSlice::new(b"["));
        for (n, (_, text)) in self.texts.iter().enumerate() {
            let open: &[u8] = if n == 0 { b"\n    " } else { b",\n    " };
            pieces.push(IoSlice::new(open));
            pieces.push(IoSlice::new(text));
        }
        pieces.push(IoSlice::new(b"\n  ]"));
        pieces.push(IoSlice::new(&self.frame[list + b"[]".len()..]));
        pieces
    }

    /// The document in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        self.pieces()
            .iter()
            .flat_map(|piece| piece.iter().copied())
            .collect()
    }
}

/// A taskset with an empty task list.
struct Frame<'a>(&'a Taskset);

impl Serialize for Frame<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_with_tasks(serializer, &[] as &[Task])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_support::copy_fixture_registry;
    use crate::registry::{Registry, TaskState};

    /// The fixture's biggest taskset and the fingerprint of its file.
    fn chat_app() -> (tempfile::TempDir, Registry, Taskset, Fingerprint) {
        let (tmp, root) = copy_fixture_registry();
        let registry = Registry::new(&root);
        let taskset = registry.load("chat-app").unwrap();
        let fingerprint = registry.fingerprint("chat-app").unwrap().unwrap();
        (tmp, registry, taskset, fingerprint)
    }

    #[test]
    fn a_first_render_is_the_whole_document() {
        let (_tmp, _registry, taskset, fingerprint) = chat_app();
        let mut rendered = RenderedTasks::default();
        let bytes = rendered.render(&taskset, Some(fingerprint), &[]).to_vec();
        assert_eq!(bytes, taskset.to_json_bytes());
        assert_eq!(rendered.texts.len(), taskset.tasks.len());
    }

    #[test]
    fn listed_changes_are_rendered_anew_and_the_rest_reused() {
        let (_tmp, _registry, mut taskset, fingerprint) = chat_app();
        let mut rendered = RenderedTasks::default();
        rendered.render(&taskset, None, &[]);
        rendered.written_as(Some(fingerprint));
        let id = taskset.tasks[1].id.clone();
        taskset.task_mut(&id).unwrap().state = TaskState::Failed;
        taskset.version += 1;
        let bytes = rendered
            .render(&taskset, Some(fingerprint), std::slice::from_ref(&id))
            .to_vec();
        assert_eq!(bytes, taskset.to_json_bytes());
        assert!(String::from_utf8(bytes)
            .unwrap()
            .contains("\"state\": \"failed\""));
    }

    #[test]
    fn size_counts_the_kept_text_and_clear_drops_it() {
        let (_tmp, _registry, taskset, fingerprint) = chat_app();
        let mut rendered = RenderedTasks::default();
        let bytes = rendered.render(&taskset, None, &[]).to_vec();
        rendered.written_as(Some(fingerprint));
        assert!(rendered.size() > 0 && rendered.size() < bytes.len());
        rendered.clear();
        assert_eq!((rendered.size(), rendered.texts.len()), (0, 0));
        // Nothing kept, nothing trusted: the next render is whole and right.
        assert_eq!(
            rendered.render(&taskset, Some(fingerprint), &[]).to_vec(),
            taskset.to_json_bytes()
        );
    }

    #[test]
    fn texts_of_another_file_are_not_used() {
        let (_tmp, _registry, mut taskset, fingerprint) = chat_app();
        let mut rendered = RenderedTasks::default();
        rendered.render(&taskset, None, &[]);
        rendered.written_as(Some(fingerprint));
        // Read again after someone else's write: an unlisted change, another fingerprint.
        let other = Fingerprint::for_tests(1, 2, 3);
        taskset.tasks[0].title = "changed by hand".into();
        let bytes = rendered.render(&taskset, Some(other), &[]).to_vec();
        assert_eq!(bytes, taskset.to_json_bytes());
        // And a render that was never recorded as written is not trusted either.
        taskset.tasks[0].title = "changed again".into();
        let bytes = rendered.render(&taskset, Some(other), &[]).to_vec();
        assert_eq!(bytes, taskset.to_json_bytes());
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "a kept task text is stale")]
    fn an_unlisted_change_is_caught_in_debug_builds() {
        let (_tmp, _registry, mut taskset, fingerprint) = chat_app();
        let mut rendered = RenderedTasks::default();
        rendered.render(&taskset, None, &[]);
        rendered.written_as(Some(fingerprint));
        taskset.tasks[0].title = "not listed".into();
        rendered.render(&taskset, Some(fingerprint), &[]);
    }
}
