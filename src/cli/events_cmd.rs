//! `dispatcher events` and `dispatcher graph`: read-only views of the registry, apart from the
//! commands that change it.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;

use super::{emit, GraphFormat};
use dispatcher::config::Config;
use dispatcher::events_view::{EventFiles, Filter};
use dispatcher::graph::{self, SpecGraph};
use dispatcher::registry::Registry;
use dispatcher::statedir::StateDir;

/// How often `events --follow` looks at the files' sizes.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// A mistyped registry path would otherwise look like a registry with nothing in it.
fn registry(config: &Config) -> anyhow::Result<Registry> {
    let root = &config.task_registry.dir;
    if !root.is_dir() {
        anyhow::bail!("registry directory {} does not exist", root.display());
    }
    Ok(Registry::new(root))
}

pub fn events(
    config: &Config,
    spec: &Option<String>,
    task: &Option<String>,
    follow: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let registry = registry(config)?;
    if let Some(spec) = spec {
        dispatcher::names::validate("spec name", spec)?;
    }
    let state = StateDir::new(&config.dispatcher.state_dir);
    let filter = Filter {
        spec: spec.clone(),
        task: task.clone(),
    };
    let mut files = EventFiles::new(registry.root(), state.dispatcher_events_path(), filter);
    loop {
        let (records, warnings) = files.poll();
        for warning in warnings {
            eprintln!("dispatcher: warning: {warning}");
        }
        let mut text = String::new();
        for record in &records {
            if json {
                text.push_str(&record.line);
            } else {
                text.push_str(&record.render());
            }
            text.push('\n');
        }
        if !write_or_closed(&text)? || !follow || stdout_closed() {
            return Ok(0);
        }
        // Nothing to react to between polls but Ctrl-C, whose default action ends the
        // process: a plain wait is the timer here.
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// Whether stdout is a pipe whose reader went away. Checked between polls so that
/// `events --follow | head` ends even when no new event comes to fail a write.
fn stdout_closed() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: poll(2) on one valid pollfd with no timeout; it only writes `revents`.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    ready > 0 && fd.revents & libc::POLLERR != 0
}

/// Writes to stdout; `false` once the reader went away (`events --follow | head`).
fn write_or_closed(text: &str) -> anyhow::Result<bool> {
    use std::io::Write;
    if text.is_empty() {
        return Ok(true);
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(err) => Err(err).context("cannot write to stdout"),
    }
}

pub fn graph(
    config: &Config,
    spec: Option<&str>,
    format: GraphFormat,
    output: Option<&Path>,
) -> anyhow::Result<u8> {
    if output.is_some() && format == GraphFormat::Mermaid {
        anyhow::bail!(
            "--output renders DOT through Graphviz and cannot render Mermaid; \
             drop --output to print the Mermaid text"
        );
    }
    let registry = registry(config)?;
    let mut graphs = Vec::new();
    if let Some(spec) = spec {
        graphs.push(SpecGraph::new(registry.load(spec)?));
    } else {
        for spec in registry.list_specs()? {
            // One broken taskset should not hide the others' graphs.
            match registry.load(&spec) {
                Ok(taskset) => graphs.push(SpecGraph::new(taskset)),
                Err(err) => eprintln!("dispatcher: warning: skipping {spec}: {err}"),
            }
        }
    }
    match (format, output) {
        (GraphFormat::Dot, Some(path)) => {
            graph::render(&graph::to_dot(&graphs), path)?;
            log::info!("wrote {}", path.display());
        }
        (GraphFormat::Dot, None) => emit(&graph::to_dot(&graphs))?,
        (GraphFormat::Mermaid, _) => emit(&graph::to_mermaid(&graphs))?,
    }
    Ok(0)
}
