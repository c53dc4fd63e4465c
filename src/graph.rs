//! `dispatcher graph`: the dependency graph of one spec or all of them as Graphviz DOT or
//! Mermaid text, and its rendering to SVG or PNG through Graphviz's `dot`.
//!
//! Edges go from each dependency to its dependent (the order work flows in). Nodes are filled by
//! state (see [`state_colour`]); tasks and edges on a dependency cycle, as
//! [`deadlock::analyze`] reports them, are drawn red and bold; a dependency that is not in the
//! taskset is a dashed grey "ghost" node.

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::deadlock::{self, Finding, Service};
use crate::registry::{TaskState, Taskset};

/// The colour on cycles, for nodes' borders and edges.
pub const CYCLE_COLOUR: &str = "#d62728";

/// The fill colour of a task in `state`: ready blue, running yellow, blocked grey, done green,
/// failed red.
pub fn state_colour(state: TaskState) -> &'static str {
    match state {
        TaskState::Ready => "#9ecae1",
        TaskState::Running => "#fdd835",
        TaskState::Blocked => "#d9d9d9",
        TaskState::Done => "#a1d99b",
        TaskState::Failed => "#fc9272",
    }
}

/// One spec's graph, ready to print: the taskset and what lies on its cycles.
#[derive(Debug)]
pub struct SpecGraph {
    taskset: Taskset,
    cycle_nodes: HashSet<String>,
    /// `(dependency, dependent)` pairs on a cycle.
    cycle_edges: HashSet<(String, String)>,
}

impl SpecGraph {
    pub fn new(taskset: Taskset) -> SpecGraph {
        // Only cycles matter here, and they do not depend on routing: call every skill served.
        let findings = deadlock::analyze(&taskset, &|_, _| Service::Served);
        let mut cycle_nodes = HashSet::new();
        let mut cycle_edges = HashSet::new();
        for finding in findings {
            if let Finding::Cycle { path, .. } = finding {
                // The path follows "waits on": in `a, b`, a waits on b, so the edge is b -> a.
                for pair in path.windows(2) {
                    cycle_edges.insert((pair[1].clone(), pair[0].clone()));
                }
                cycle_nodes.extend(path);
            }
        }
        SpecGraph {
            taskset,
            cycle_nodes,
            cycle_edges,
        }
    }

    fn spec(&self) -> &str {
        &self.taskset.spec_name
    }

    /// Dependencies named by a task but absent from the taskset, sorted.
    fn missing(&self) -> BTreeSet<&str> {
        let known: HashSet<&str> = self.taskset.tasks.iter().map(|t| t.id.as_str()).collect();
        self.taskset
            .tasks
            .iter()
            .flat_map(|t| t.dependencies.iter().map(String::as_str))
            .filter(|d| !known.contains(d))
            .collect()
    }

    /// `(dependency, dependent, on_cycle, to_missing)` for every edge.
    fn edges(&self) -> Vec<(&str, &str, bool, bool)> {
        let missing = self.missing();
        let mut edges = Vec::new();
        for task in &self.taskset.tasks {
            for dep in &task.dependencies {
                let on_cycle = self.cycle_edges.contains(&(dep.clone(), task.id.clone()));
                edges.push((
                    dep.as_str(),
                    task.id.as_str(),
                    on_cycle,
                    missing.contains(dep.as_str()),
                ));
            }
        }
        edges
    }
}

/// A label `id: title`, or the id alone when the title is empty or just repeats it.
fn label(id: &str, title: &str) -> String {
    if title.is_empty() || title == id {
        id.to_owned()
    } else {
        format!("{id}: {title}")
    }
}

/// A DOT double-quoted string.
fn dot_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The graph in Graphviz DOT: one cluster per spec; node ids are `spec/task`.
pub fn to_dot(graphs: &[SpecGraph]) -> String {
    let mut out = String::from(
        "digraph tasks {\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\", \
         fontname=\"Helvetica\"];\n  edge [color=\"#555555\"];\n",
    );
    for (i, graph) in graphs.iter().enumerate() {
        let spec = graph.spec();
        let node = |id: &str| dot_quote(&format!("{spec}/{id}"));
        out.push_str(&format!(
            "  subgraph cluster_{i} {{\n    label={};\n",
            dot_quote(spec)
        ));
        for task in &graph.taskset.tasks {
            let mut attrs = format!(
                "label={}, fillcolor={}, tooltip={}",
                dot_quote(&label(&task.id, &task.title)),
                dot_quote(state_colour(task.state)),
                dot_quote(task.state.as_str()),
            );
            if graph.cycle_nodes.contains(&task.id) {
                attrs.push_str(&format!(", color={}, penwidth=3", dot_quote(CYCLE_COLOUR)));
            }
            out.push_str(&format!("    {} [{attrs}];\n", node(&task.id)));
        }
        for id in graph.missing() {
            out.push_str(&format!(
                "    {} [label={}, style=dashed, color=\"#999999\", fontcolor=\"#999999\"];\n",
                node(id),
                dot_quote(&format!("{id} (missing)"))
            ));
        }
        for (from, to, on_cycle, to_missing) in graph.edges() {
            let attrs = if on_cycle {
                format!(
                    " [color={}, penwidth=3, style=bold]",
                    dot_quote(CYCLE_COLOUR)
                )
            } else if to_missing {
                " [style=dashed]".to_owned()
            } else {
                String::new()
            };
            out.push_str(&format!("    {} -> {}{attrs};\n", node(from), node(to)));
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

/// Mermaid's labels go inside `"…"`; it has entity codes for quotes, and a newline would end
/// the statement.
fn mermaid_label(text: &str) -> String {
    text.replace('"', "#quot;").replace(['\n', '\r'], " ")
}

/// The graph as a Mermaid flowchart: one subgraph per spec. Mermaid ids must be plain words,
/// so nodes are numbered (`s0_t1`) and the task ids only appear in labels.
pub fn to_mermaid(graphs: &[SpecGraph]) -> String {
    let mut out = String::from("flowchart LR\n");
    let mut styles = String::new();
    let mut link = 0usize;
    let mut cycle_links = Vec::new();
    for (i, graph) in graphs.iter().enumerate() {
        let missing = graph.missing();
        let mut ids: Vec<&str> = graph.taskset.tasks.iter().map(|t| t.id.as_str()).collect();
        ids.extend(missing.iter().copied());
        let node = |id: &str| {
            let n = ids.iter().position(|x| *x == id).unwrap_or(0);
            format!("s{i}_t{n}")
        };
        out.push_str(&format!(
            "  subgraph s{i}[\"{}\"]\n",
            mermaid_label(graph.spec())
        ));
        for task in &graph.taskset.tasks {
            let name = node(&task.id);
            out.push_str(&format!(
                "    {name}[\"{}\"]\n",
                mermaid_label(&label(&task.id, &task.title))
            ));
            styles.push_str(&format!("  class {name} {}\n", task.state.as_str()));
            if graph.cycle_nodes.contains(&task.id) {
                styles.push_str(&format!(
                    "  style {name} stroke:{CYCLE_COLOUR},stroke-width:4px\n"
                ));
            }
        }
        for id in &missing {
            let name = node(id);
            out.push_str(&format!(
                "    {name}[\"{} (missing)\"]\n",
                mermaid_label(id)
            ));
            styles.push_str(&format!("  class {name} missing\n"));
        }
        for (from, to, on_cycle, to_missing) in graph.edges() {
            let arrow = if to_missing { "-.->" } else { "-->" };
            out.push_str(&format!("    {} {arrow} {}\n", node(from), node(to)));
            if on_cycle {
                cycle_links.push(link.to_string());
            }
            link += 1;
        }
        out.push_str("  end\n");
    }
    for state in [
        TaskState::Ready,
        TaskState::Running,
        TaskState::Blocked,
        TaskState::Done,
        TaskState::Failed,
    ] {
        out.push_str(&format!(
            "  classDef {} fill:{}\n",
            state.as_str(),
            state_colour(state)
        ));
    }
    out.push_str("  classDef missing fill:#ffffff,stroke:#999999,stroke-dasharray:5 5\n");
    out.push_str(&styles);
    if !cycle_links.is_empty() {
        out.push_str(&format!(
            "  linkStyle {} stroke:{CYCLE_COLOUR},stroke-width:4px\n",
            cycle_links.join(",")
        ));
    }
    out
}

/// Why rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(
        "--output needs Graphviz's dot, which is not installed (apt-get install graphviz); \
         use --format dot to get the text"
    )]
    DotMissing,
    #[error("--output must name a .svg or .png file, not {0}")]
    Extension(String),
    #[error("cannot run dot: {0}")]
    Spawn(std::io::Error),
    #[error("dot failed to render {path}: {detail}")]
    Failed { path: String, detail: String },
}

/// Renders `dot_text` to `output` (SVG or PNG by its extension) with `dot` from `PATH`.
///
/// `dot` is not a runner, so it does not go through the launcher: it is a short filter fed on
/// stdin, with arguments passed as such (no shell).
pub fn render(dot_text: &str, output: &Path) -> Result<(), RenderError> {
    let format = match output.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("svg") => "-Tsvg",
        Some(ext) if ext.eq_ignore_ascii_case("png") => "-Tpng",
        _ => return Err(RenderError::Extension(output.display().to_string())),
    };
    let mut child = Command::new("dot")
        .arg(format)
        .arg("-o")
        .arg(output)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => RenderError::DotMissing,
            _ => RenderError::Spawn(err),
        })?;
    // A write error (dot exited early) shows up in its status and stderr below.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(dot_text.as_bytes());
    }
    let result = child.wait_with_output().map_err(RenderError::Spawn)?;
    if result.status.success() {
        Ok(())
    } else {
        Err(RenderError::Failed {
            path: output.display().to_string(),
            detail: format!(
                "{}: {}",
                result.status,
                String::from_utf8_lossy(&result.stderr).trim()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_newlines_are_escaped() {
        assert_eq!(dot_quote("a \"b\"\nc\\"), "\"a \\\"b\\\"\\nc\\\\\"");
        assert_eq!(mermaid_label("a \"b\"\nc"), "a #quot;b#quot; c");
    }
}
