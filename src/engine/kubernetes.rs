//! `type = "kubernetes"`: one `batch/v1` Job per attempt, created with `kubectl create -f -`
//! (so kubeconfig contexts and cloud auth plugins work). The dispatcher owns retries
//! (`backoffLimit: 0`), the pool's timeout becomes `activeDeadlineSeconds`, finished Jobs
//! are removed by `ttlSecondsAfterFinished`, the task's request becomes resource requests
//! and limits, labels allow adoption after a restart. An optional JSON manifest template
//! is the base the generated fields are merged into. All of a pool's Jobs are read with one
//! `kubectl get jobs -l dispatcher.io/pool=<pool> -o json` per tick; output is copied with
//! `kubectl logs -f`; stop is `kubectl delete job --cascade=foreground`.
//!
//! The runner's environment is in the Job's pod spec (so anyone who can read the Job can
//! read it): keep secrets of Kubernetes pools in Kubernetes Secrets referenced from the
//! template, not in `env_file`.

use std::collections::HashMap;
use std::fs::File;
use std::process::{Child, Command};
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use super::tool::{Tool, ToolError};
use super::{Ending, Engine, EngineError, JobState, Submission, RUNNER_MOUNT, WORKSPACE};
use crate::config::EngineSettings;
use crate::launcher::{LaunchSpec, RunnerView};

pub const LABEL_RUNNER: &str = "dispatcher.io/runner-id";
pub const LABEL_POOL: &str = "dispatcher.io/pool";
pub const LABEL_SPEC: &str = "dispatcher.io/spec";
pub const LABEL_TASK: &str = "dispatcher.io/task";
pub const LABEL_ATTEMPT: &str = "dispatcher.io/attempt";

pub struct Kubernetes {
    pool: String,
    settings: EngineSettings,
}

impl Kubernetes {
    pub fn new(pool: &str, settings: EngineSettings) -> Kubernetes {
        Kubernetes {
            pool: pool.to_string(),
            settings,
        }
    }

    /// `kubectl` with the pool's context and namespace.
    fn kubectl(&self) -> Tool {
        Tool::new("kubectl", self.settings.command_timeout).args(self.scope())
    }

    fn scope(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(context) = &self.settings.context {
            args.push(format!("--context={context}"));
        }
        if let Some(namespace) = &self.settings.namespace {
            args.push(format!("--namespace={namespace}"));
        }
        args
    }

    fn json(&self, tool: Tool) -> Result<Value, EngineError> {
        let command = tool.describe();
        let out = tool.output()?;
        serde_json::from_str(&out).map_err(|err| EngineError::Answer {
            command,
            message: err.to_string(),
        })
    }

    /// The exit code of the Job's (only) pod, when it has terminated.
    fn pod_exit_code(&self, job: &str) -> Option<i32> {
        let pods = self
            .json(
                self.kubectl()
                    .args(["get", "pods", "-o", "json", "-l"])
                    .arg(format!("job-name={job}")),
            )
            .ok()?;
        pods["items"].as_array()?.iter().find_map(|pod| {
            pod["status"]["containerStatuses"]
                .as_array()?
                .iter()
                .find_map(|c| c["state"]["terminated"]["exitCode"].as_i64())
                .and_then(|code| i32::try_from(code).ok())
        })
    }
}

/// A Kubernetes object name (RFC 1123 label: lowercase alphanumerics and `-`, at most 63)
/// from a runner id.
pub fn job_name(runner_id: &str) -> String {
    let mut name: String = runner_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if name.len() > 63 {
        // Keep the end: the sequence number is what tells runners apart.
        name = name[name.len() - 63..].to_string();
    }
    name.trim_matches('-').to_string()
}

/// A label value (at most 63 of `A-Za-z0-9._-`, alphanumeric at both ends); the exact value
/// is kept in an annotation.
fn label_value(text: &str) -> String {
    let mut cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.len() > 63 {
        // Keep the end, as job names do: a runner id's sequence number tells runners apart.
        cleaned = cleaned[cleaned.len() - 63..].to_string();
    }
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The Job of one attempt: `template` (a Job manifest, or `{}`) with the generated fields
/// merged in; generated fields win, everything else of the template is kept.
pub fn manifest(job: &Submission<'_>, settings: &EngineSettings, template: Value) -> Value {
    let name = job_name(job.runner_id);
    let labels = json!({
        LABEL_RUNNER: label_value(job.runner_id),
        LABEL_POOL: label_value(job.pool),
        LABEL_SPEC: label_value(job.spec),
        LABEL_TASK: label_value(job.task_id),
        LABEL_ATTEMPT: job.attempt.to_string(),
    });
    let env: Vec<Value> = job
        .env
        .iter()
        .map(|(k, v)| json!({"name": k.to_string_lossy(), "value": v.to_string_lossy()}))
        .collect();
    let mut quantities = Map::new();
    if job.cpus > 0.0 {
        quantities.insert(
            "cpu".into(),
            json!(format!("{}m", (job.cpus * 1000.0).ceil() as u64)),
        );
    }
    if job.memory_mb > 0 {
        quantities.insert("memory".into(), json!(format!("{}Mi", job.memory_mb)));
    }
    let mut container = json!({
        "name": "runner",
        "image": settings.image,
        "env": env,
    });
    if !job.argv.is_empty() {
        container["command"] = json!(job.argv);
    }
    if !quantities.is_empty() {
        container["resources"] = json!({"requests": quantities, "limits": quantities});
    }
    let mut pod = json!({"restartPolicy": "Never", "containers": [container]});
    if settings.shared_workspaces {
        pod["containers"][0]["workingDir"] = json!(WORKSPACE);
        pod["containers"][0]["volumeMounts"] = json!([
            {"name": "workspace", "mountPath": WORKSPACE},
            {"name": "dispatcher", "mountPath": RUNNER_MOUNT},
        ]);
        pod["volumes"] = json!([
            {"name": "workspace", "hostPath": {"path": job.workdir.to_string_lossy(), "type": "Directory"}},
            {"name": "dispatcher", "hostPath": {"path": job.runner_dir.to_string_lossy(), "type": "Directory"}},
        ]);
    }
    let mut spec = json!({
        "backoffLimit": 0,
        "ttlSecondsAfterFinished": settings.ttl_after_finished.as_secs(),
        "template": {"metadata": {"labels": labels}, "spec": pod},
    });
    if let Some(timeout) = job.timeout {
        spec["activeDeadlineSeconds"] = json!(timeout.as_secs().max(1));
    }
    let mut metadata = json!({
        "name": name,
        "labels": labels,
        "annotations": {
            "dispatcher.io/runner-id": job.runner_id,
            "dispatcher.io/spec": job.spec,
            "dispatcher.io/task-id": job.task_id,
        },
    });
    if let Some(namespace) = &settings.namespace {
        metadata["namespace"] = json!(namespace);
    }
    let generated = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": spec,
    });
    let mut merged = template;
    merge(&mut merged, generated);
    merged
}

/// Deep merge of objects; arrays of containers are merged element by element so that a
/// template's container settings (ports, secrets) stay; any other value is replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (Value::Array(base), Value::Array(over)) if base.iter().all(Value::is_object) => {
            for (i, value) in over.into_iter().enumerate() {
                match base.get_mut(i) {
                    Some(slot) if value.is_object() => merge(slot, value),
                    Some(slot) => *slot = value,
                    None => base.push(value),
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// A Job's state from its `status`: a terminal condition, else whether a pod is ready.
fn job_state(job: &Value) -> JobState {
    let conditions = job["status"]["conditions"].as_array();
    let holds = |kind: &str| {
        conditions.is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == kind && c["status"] == "True")
        })
    };
    let name = job["metadata"]["name"].as_str().unwrap_or("?");
    if holds("Complete") || holds("SuccessCriteriaMet") {
        return JobState::Finished(Ending::exited(0, None));
    }
    if holds("Failed") || holds("FailureTarget") {
        let reason = conditions
            .and_then(|cs| {
                cs.iter()
                    .filter(|c| c["type"] == "Failed" || c["type"] == "FailureTarget")
                    .find_map(|c| c["reason"].as_str())
            })
            .unwrap_or("Failed");
        return JobState::Finished(Ending {
            exit_code: None,
            signal: None,
            reason: Some(format!("kubernetes job {name}: {reason}")),
            // `activeDeadlineSeconds` is the pool's timeout. The Job controller counts it
            // from the Job's start, so it passes before the watcher's own clock (counted
            // from the first time it saw the pod run) and is what ends a slow attempt.
            timed_out: reason == "DeadlineExceeded",
        });
    }
    let ready = job["status"]["ready"].as_u64();
    let active = job["status"]["active"].as_u64().unwrap_or(0);
    match ready {
        Some(n) if n > 0 => JobState::Running,
        None if active > 0 => JobState::Running,
        _ => JobState::Queued,
    }
}

impl Kubernetes {
    /// A failed Job's end: the program's own exit code when the pod ran to an end (the
    /// attempt failed by itself), the Job's reason otherwise (deadline, eviction …).
    fn failed_end(&self, name: &str, state: JobState) -> JobState {
        let JobState::Finished(ending) = state else {
            return state;
        };
        if ending.reason.is_none() {
            return JobState::Finished(ending);
        }
        let program_failed = ending.reason.as_deref().is_some_and(|r| {
            r.ends_with("BackoffLimitExceeded") || r.ends_with("PodFailurePolicy")
        });
        match self.pod_exit_code(name) {
            Some(code) if program_failed && code != 0 => {
                JobState::Finished(Ending::exited(code, None))
            }
            code => JobState::Finished(Ending {
                exit_code: code.filter(|c| *c != 0),
                ..ending
            }),
        }
    }
}

impl Engine for Kubernetes {
    fn check(&self) -> Result<(), EngineError> {
        let out = self
            .kubectl()
            .args(["auth", "can-i", "create", "jobs.batch"])
            .output();
        match out {
            Ok(answer) if answer.trim() == "yes" => Ok(()),
            Ok(answer) => Err(EngineError::Setup(format!(
                "kubectl says this user may not create Jobs ({})",
                answer.trim()
            ))),
            // `can-i` answers "no" with exit status 1.
            Err(ToolError::Failed { stdout, .. }) if stdout.trim() == "no" => Err(
                EngineError::Setup("kubectl says this user may not create Jobs (no)".into()),
            ),
            Err(err) => Err(err.into()),
        }
    }

    fn view(&self, _req: &LaunchSpec) -> RunnerView {
        super::container_view(&self.settings)
    }

    fn submit(&self, job: &Submission<'_>) -> Result<String, EngineError> {
        let template = match &self.settings.manifest_template {
            None => json!({}),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|err| {
                    EngineError::Setup(format!(
                        "cannot read manifest_template {}: {err}",
                        path.display()
                    ))
                })?;
                serde_json::from_str(&text).map_err(|err| {
                    EngineError::Setup(format!(
                        "manifest_template {} is not a JSON Job manifest: {err}",
                        path.display()
                    ))
                })?
            }
        };
        let manifest = manifest(job, &self.settings, template);
        let bytes = serde_json::to_vec(&manifest).unwrap_or_default();
        let out = self
            .kubectl()
            .args(["create", "-f", "-", "-o", "name"])
            .stdin(bytes)
            .output()?;
        // `job.batch/<name>`
        let name = out
            .trim()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(EngineError::Answer {
                command: "kubectl create -f - -o name".into(),
                message: format!("expected the Job's name, got {:?}", out.trim()),
            });
        }
        Ok(name)
    }

    fn poll(&self, ids: &[String]) -> Result<HashMap<String, JobState>, EngineError> {
        let list = self.json(
            self.kubectl()
                .args(["get", "jobs", "-o", "json", "-l"])
                .arg(format!("{LABEL_POOL}={}", label_value(&self.pool))),
        )?;
        let mut states = HashMap::new();
        for job in list["items"].as_array().into_iter().flatten() {
            let Some(name) = job["metadata"]["name"].as_str() else {
                continue;
            };
            if !ids.iter().any(|id| id == name) {
                continue;
            }
            match job_state(job) {
                // Left out: `final_state` reads the pod's exit code.
                JobState::Finished(Ending {
                    reason: Some(_), ..
                }) => {}
                state => {
                    states.insert(name.to_string(), state);
                }
            }
        }
        Ok(states)
    }

    fn final_state(&self, id: &str) -> Result<Option<JobState>, EngineError> {
        match self.json(self.kubectl().args(["get", "job", id, "-o", "json"])) {
            Ok(job) => Ok(Some(self.failed_end(id, job_state(&job)))),
            Err(EngineError::Tool(err)) if err.stderr().contains("NotFound") => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        let answer = self
            .kubectl()
            .args(["delete", "job", id, "--cascade=foreground", "--wait=false"])
            .arg(format!("--grace-period={}", grace.as_secs().max(1)))
            .output();
        match answer {
            Ok(_) => Ok(()),
            Err(err) if err.stderr().contains("NotFound") => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    fn find(&self, runner_id: &str) -> Result<Option<String>, EngineError> {
        let out = self
            .kubectl()
            .args(["get", "jobs", "-o", "name", "-l"])
            .arg(format!("{LABEL_RUNNER}={}", label_value(runner_id)))
            .output()?;
        Ok(super::first_line(&out).and_then(|l| l.rsplit('/').next().map(str::to_owned)))
    }

    fn follow_logs(&self, id: &str, log: File, since: Option<SystemTime>) -> Option<Child> {
        let mut logs = Command::new("kubectl");
        logs.args(self.scope())
            .args(["logs", "--follow", "--pod-running-timeout=24h"]);
        if let Some(since) = since {
            let age = SystemTime::now().duration_since(since).unwrap_or_default();
            logs.arg(format!("--since={}s", age.as_secs().max(1)));
        }
        logs.arg(format!("job/{id}"));
        super::spawn_follower(logs, log, &self.pool, &format!("job {id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_rfc1123_labels() {
        assert_eq!(job_name("runner-Agents_X-1a2b-7"), "runner-agents-x-1a2b-7");
        let long = format!("runner-{}-9", "p".repeat(80));
        let name = job_name(&long);
        assert!(name.len() <= 63 && name.ends_with("-9"), "{name}");
    }

    #[test]
    fn conditions_decide_the_end() {
        let job = |status: Value| json!({"metadata": {"name": "j"}, "status": status});
        assert_eq!(
            job_state(&job(
                json!({"conditions": [{"type": "Complete", "status": "True"}]})
            )),
            JobState::Finished(Ending::exited(0, None))
        );
        assert_eq!(
            job_state(&job(
                json!({"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]})
            )),
            JobState::Finished(Ending::exited(0, None))
        );
        let JobState::Finished(failed) = job_state(&job(json!({"conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded"}
        ]}))) else {
            panic!()
        };
        assert_eq!(
            failed.reason.as_deref(),
            Some("kubernetes job j: DeadlineExceeded")
        );
        assert!(failed.timed_out, "the pool's timeout ended it");
        let JobState::Finished(failed) = job_state(&job(json!({"conditions": [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
        ]}))) else {
            panic!()
        };
        assert!(!failed.timed_out);
        assert_eq!(
            job_state(&job(json!({"active": 1, "ready": 1}))),
            JobState::Running
        );
        assert_eq!(
            job_state(&job(json!({"active": 1, "ready": 0}))),
            JobState::Queued
        );
    }

    #[test]
    fn merge_keeps_template_fields_and_generated_ones_win() {
        let mut base = json!({"spec": {"template": {"spec": {
            "serviceAccountName": "agents",
            "containers": [{"name": "x", "envFrom": [{"secretRef": {"name": "keys"}}]}]
        }}}, "spec2": 1});
        merge(
            &mut base,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "runner", "image": "i"}]}}}}),
        );
        let pod = &base["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "agents");
        assert_eq!(pod["containers"][0]["name"], "runner");
        assert_eq!(
            pod["containers"][0]["envFrom"][0]["secretRef"]["name"],
            "keys"
        );
        assert_eq!(base["spec2"], 1);
    }
}
