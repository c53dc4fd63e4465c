//! The core's event appends, on a thread of their own. Each append ends with an fdatasync,
//! and on a disk those were half of the core's time waiting for syncs (W1: as many
//! `fdatasync`s of event files as `fsync`s of tasksets, each as slow), holding up the next
//! claim. Batches queued meanwhile go out together: one append, and one sync, per spec. Order
//! is kept: one thread writes everything, in the order it was handed over.

use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender};

use super::{Event, EventLog};

enum Job {
    Append(Vec<Event>),
    /// Answered once everything handed over before it is written.
    Flush(Sender<()>),
}

/// Dropping it writes what is queued and joins the thread.
pub struct EventWriter {
    jobs: Option<Sender<Job>>,
    log: EventLog,
    thread: Option<JoinHandle<()>>,
}

impl EventWriter {
    pub fn spawn(log: EventLog) -> EventWriter {
        let (jobs, inbox) = crossbeam_channel::unbounded();
        let writer_log = log.clone();
        let thread = thread::Builder::new()
            .name("event-writer".into())
            .spawn(move || write_until_closed(&writer_log, &inbox));
        match thread {
            Ok(thread) => EventWriter {
                jobs: Some(jobs),
                log,
                thread: Some(thread),
            },
            Err(err) => {
                log::warn!(
                    "cannot start the event writer thread ({err}); events are written in line"
                );
                EventWriter {
                    jobs: None,
                    log,
                    thread: None,
                }
            }
        }
    }

    /// Hands `events` over to be appended (in line when there is no writer thread).
    pub fn append(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let events = match &self.jobs {
            Some(jobs) => match jobs.send(Job::Append(events)) {
                Ok(()) => return,
                Err(unsent) => match unsent.into_inner() {
                    Job::Append(events) => events,
                    Job::Flush(_) => return,
                },
            },
            None => events,
        };
        self.log.append(&events);
    }

    /// Waits until every event handed over so far is in its file.
    pub fn flush(&self) {
        let Some(jobs) = &self.jobs else {
            return;
        };
        let (done, written) = crossbeam_channel::bounded(1);
        if jobs.send(Job::Flush(done)).is_ok() {
            let _ = written.recv();
        }
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_until_closed(log: &EventLog, inbox: &Receiver<Job>) {
    while let Ok(first) = inbox.recv() {
        let mut events = Vec::new();
        let mut flushes = Vec::new();
        for job in std::iter::once(first).chain(inbox.try_iter()) {
            match job {
                Job::Append(batch) => events.extend(batch),
                Job::Flush(done) => flushes.push(done),
            }
        }
        log.append(&events);
        for done in flushes {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::test_support::copy_fixture_registry;
    use crate::registry::Registry;

    #[test]
    fn events_handed_over_are_written_in_order_by_the_flush_and_the_drop() {
        let (tmp, root) = copy_fixture_registry();
        let registry = Registry::new(&root);
        let writer = EventWriter::spawn(EventLog::new(&registry, tmp.path().join("fallback")));
        let path = registry.events_path("tiny");
        let before = EventLog::read(&path).unwrap().len();
        for n in 0..50 {
            writer.append(vec![Event::new("Test", "tiny", Some(&format!("t{n}")))]);
        }
        writer.flush();
        let events = EventLog::read(&path).unwrap();
        let ids: Vec<String> = events[before..]
            .iter()
            .map(|e| e.task_id.clone().unwrap())
            .collect();
        assert_eq!(ids, (0..50).map(|n| format!("t{n}")).collect::<Vec<_>>());
        writer.append(vec![Event::new("Last", "tiny", None)]);
        drop(writer);
        let last = EventLog::read(&path).unwrap().pop().unwrap();
        assert_eq!(
            last.event_type, "Last",
            "dropping the writer writes what is queued"
        );
    }
}
