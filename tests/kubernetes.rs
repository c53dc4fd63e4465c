//! Kubernetes pools: golden tests of the generated Job manifest (checked against the field
//! names of the batch/v1 API), and end-to-end runs against a STAND-IN `kubectl`
//! (`tests/engines/kubectl`, a test double: no Kubernetes API server runs where these tests
//! run). The stand-in records each argv, keeps the manifests it was given and answers in
//! kubectl's JSON shapes; the first container's command of each Job is a real runner script
//! of `tests/runners/`, run as a local process with the manifest's env and hostPath mounts.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dispatcher::config::EngineSettings;
use dispatcher::engine::kubernetes::manifest;
use dispatcher::engine::Submission;
use serde_json::{json, Value};
use support::engine_tests::Engine;
use support::standin::Standin;
use support::*;

const GOLDEN: &str = "tests/engines/golden/job.json";

// ----- the manifest --------------------------------------------------------------------------

/// A fixed attempt: every generated field has a known value.
fn golden_manifest(template: Value) -> Value {
    let env: BTreeMap<OsString, OsString> = [
        ("RUNNER_ID", "runner-Agents_7"),
        ("POOL_NAME", "agents"),
        ("DISPATCHER_ATTEMPT", "2"),
        ("TASK_CONTEXT_FILE", "/dispatcher/context.json"),
    ]
    .into_iter()
    .map(|(k, v)| (k.into(), v.into()))
    .collect();
    let argv = ["/opt/agent/run", "--task", "web/login"].map(String::from);
    let submission = Submission {
        runner_id: "runner-Agents_7",
        pool: "agents",
        spec: "web",
        task_id: "login",
        attempt: 2,
        argv: &argv,
        env: &env,
        workdir: Path::new("/srv/slots/web-1"),
        runner_dir: Path::new("/var/lib/dispatcher/runners/runner-Agents_7"),
        log_path: Path::new("/var/lib/dispatcher/logs/web/login/attempt-2.log"),
        timeout: Some(Duration::from_secs(900)),
        cpus: 1.5,
        memory_mb: 2048,
    };
    let settings = EngineSettings {
        image: Some("registry.example/agent:1".into()),
        namespace: Some("ci".into()),
        ttl_after_finished: Duration::from_secs(600),
        ..EngineSettings::default()
    };
    manifest(&submission, &settings, template)
}

#[test]
fn the_generated_job_manifest_matches_the_golden_file() {
    let generated = golden_manifest(json!({}));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
        fs::write(&path, text).unwrap();
    }
    let golden: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        generated,
        golden,
        "the manifest changed; if on purpose, rerun with UPDATE_GOLDEN=1 and review {GOLDEN}:\n{}",
        serde_json::to_string_pretty(&generated).unwrap()
    );
}

#[test]
fn every_field_of_the_generated_manifest_is_a_batch_v1_job_field() {
    let violations = schema_violations(&golden_manifest(json!({})));
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn a_manifest_template_keeps_its_own_fields_and_the_generated_ones_win() {
    let template = json!({
        "metadata": {"labels": {"team": "agents"}},
        "spec": {"template": {"spec": {
            "serviceAccountName": "agents",
            "restartPolicy": "OnFailure",
            "containers": [{
                "name": "main",
                "envFrom": [{"secretRef": {"name": "agent-keys"}}],
                "imagePullPolicy": "Always",
            }],
        }}},
    });
    let job = golden_manifest(template);
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "agents");
    assert_eq!(pod["restartPolicy"], "Never", "generated fields win");
    assert_eq!(pod["containers"][0]["name"], "runner");
    assert_eq!(
        pod["containers"][0]["envFrom"],
        json!([{"secretRef": {"name": "agent-keys"}}])
    );
    assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
    assert_eq!(job["metadata"]["labels"]["team"], "agents");
    assert_eq!(job["metadata"]["labels"]["dispatcher.io/task"], "login");
    let violations = schema_violations(&job);
    assert!(violations.is_empty(), "{violations:#?}");
}

/// The fields of the objects a Job manifest holds, from the Kubernetes API reference
/// (v1.31: Job, JobSpec, ObjectMeta, PodTemplateSpec, PodSpec, Container, EnvVar,
/// EnvFromSource, ResourceRequirements, VolumeMount, Volume, HostPathVolumeSource).
fn fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Job" => &["apiVersion", "kind", "metadata", "spec", "status"],
        "ObjectMeta" => &[
            "annotations",
            "creationTimestamp",
            "deletionGracePeriodSeconds",
            "deletionTimestamp",
            "finalizers",
            "generateName",
            "generation",
            "labels",
            "managedFields",
            "name",
            "namespace",
            "ownerReferences",
            "resourceVersion",
            "selfLink",
            "uid",
        ],
        "JobSpec" => &[
            "activeDeadlineSeconds",
            "backoffLimit",
            "backoffLimitPerIndex",
            "completionMode",
            "completions",
            "managedBy",
            "manualSelector",
            "maxFailedIndexes",
            "parallelism",
            "podFailurePolicy",
            "podReplacementPolicy",
            "selector",
            "successPolicy",
            "suspend",
            "template",
            "ttlSecondsAfterFinished",
        ],
        "PodTemplateSpec" => &["metadata", "spec"],
        "PodSpec" => &[
            "activeDeadlineSeconds",
            "affinity",
            "automountServiceAccountToken",
            "containers",
            "dnsConfig",
            "dnsPolicy",
            "enableServiceLinks",
            "ephemeralContainers",
            "hostAliases",
            "hostIPC",
            "hostNetwork",
            "hostPID",
            "hostUsers",
            "hostname",
            "imagePullSecrets",
            "initContainers",
            "nodeName",
            "nodeSelector",
            "os",
            "overhead",
            "preemptionPolicy",
            "priority",
            "priorityClassName",
            "readinessGates",
            "resourceClaims",
            "restartPolicy",
            "runtimeClassName",
            "schedulerName",
            "schedulingGates",
            "securityContext",
            "serviceAccount",
            "serviceAccountName",
            "setHostnameAsFQDN",
            "shareProcessNamespace",
            "subdomain",
            "terminationGracePeriodSeconds",
            "tolerations",
            "topologySpreadConstraints",
            "volumes",
        ],
        "Container" => &[
            "args",
            "command",
            "env",
            "envFrom",
            "image",
            "imagePullPolicy",
            "lifecycle",
            "livenessProbe",
            "name",
            "ports",
            "readinessProbe",
            "resizePolicy",
            "resources",
            "restartPolicy",
            "securityContext",
            "startupProbe",
            "stdin",
            "stdinOnce",
            "terminationMessagePath",
            "terminationMessagePolicy",
            "tty",
            "volumeDevices",
            "volumeMounts",
            "workingDir",
        ],
        "EnvVar" => &["name", "value", "valueFrom"],
        "EnvFromSource" => &["configMapRef", "prefix", "secretRef"],
        "ResourceRequirements" => &["claims", "limits", "requests"],
        "VolumeMount" => &[
            "mountPath",
            "mountPropagation",
            "name",
            "readOnly",
            "recursiveReadOnly",
            "subPath",
            "subPathExpr",
        ],
        // Only the volume sources the dispatcher generates are checked further.
        "Volume" => &[
            "name",
            "hostPath",
            "emptyDir",
            "secret",
            "configMap",
            "persistentVolumeClaim",
            "projected",
            "nfs",
            "csi",
            "ephemeral",
            "downwardAPI",
            "image",
        ],
        "HostPathVolumeSource" => &["path", "type"],
        other => panic!("no field list for {other}"),
    }
}

/// Which object the value of `key` in a `parent` object is, when it is one we check.
fn child_kind(parent: &str, key: &str) -> Option<&'static str> {
    Some(match (parent, key) {
        ("Job", "metadata") | ("PodTemplateSpec", "metadata") => "ObjectMeta",
        ("Job", "spec") => "JobSpec",
        ("JobSpec", "template") => "PodTemplateSpec",
        ("PodTemplateSpec", "spec") => "PodSpec",
        ("PodSpec", "containers") | ("PodSpec", "initContainers") => "Container",
        ("PodSpec", "volumes") => "Volume",
        ("Container", "env") => "EnvVar",
        ("Container", "envFrom") => "EnvFromSource",
        ("Container", "resources") => "ResourceRequirements",
        ("Container", "volumeMounts") => "VolumeMount",
        ("Volume", "hostPath") => "HostPathVolumeSource",
        _ => return None,
    })
}

/// Unknown fields and ill-typed values of a Job manifest, as `kubectl create` would reject
/// them (`strict decoding error: unknown field …`).
fn schema_violations(job: &Value) -> Vec<String> {
    let mut found = Vec::new();
    check_object("Job", job, "", &mut found);
    let spec = &job["spec"];
    for key in [
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        if !spec[key].is_null() && !spec[key].is_u64() {
            found.push(format!(
                "spec.{key} is not a non-negative integer: {}",
                spec[key]
            ));
        }
    }
    let pod = &spec["template"]["spec"];
    if !matches!(pod["restartPolicy"].as_str(), Some("Never" | "OnFailure")) {
        found.push(format!(
            "a Job's restartPolicy must be Never or OnFailure: {}",
            pod["restartPolicy"]
        ));
    }
    for meta in [&job["metadata"], &spec["template"]["metadata"]] {
        for (key, value) in meta["labels"].as_object().into_iter().flatten() {
            if !value.as_str().is_some_and(label_value_ok) {
                found.push(format!("label {key} has an invalid value {value}"));
            }
        }
    }
    if !job["metadata"]["name"].as_str().is_some_and(dns_label_ok) {
        found.push(format!(
            "metadata.name is not an RFC 1123 label: {}",
            job["metadata"]["name"]
        ));
    }
    for container in pod["containers"].as_array().into_iter().flatten() {
        for var in container["env"].as_array().into_iter().flatten() {
            if !var["value"].is_null() && !var["value"].is_string() {
                found.push(format!(
                    "env {} has a value that is not a string",
                    var["name"]
                ));
            }
        }
        for (_, quantities) in container["resources"].as_object().into_iter().flatten() {
            for (name, quantity) in quantities.as_object().into_iter().flatten() {
                if !quantity.as_str().is_some_and(quantity_ok) {
                    found.push(format!(
                        "resource {name} has an invalid quantity {quantity}"
                    ));
                }
            }
        }
    }
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        let kind = volume["hostPath"]["type"].as_str().unwrap_or("");
        let known = [
            "",
            "DirectoryOrCreate",
            "Directory",
            "FileOrCreate",
            "File",
            "Socket",
            "CharDevice",
            "BlockDevice",
        ];
        if !known.contains(&kind) {
            found.push(format!("hostPath type {kind:?} is not one of {known:?}"));
        }
    }
    found
}

fn check_object(kind: &str, value: &Value, at: &str, found: &mut Vec<String>) {
    let Some(object) = value.as_object() else {
        found.push(format!("{at} should be a {kind} object: {value}"));
        return;
    };
    let allowed: BTreeSet<&str> = fields(kind).iter().copied().collect();
    for (key, child) in object {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        if !allowed.contains(key.as_str()) {
            found.push(format!("unknown field {path} in {kind}"));
            continue;
        }
        let Some(child_kind) = child_kind(kind, key) else {
            continue;
        };
        match child {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    check_object(child_kind, item, &format!("{path}[{i}]"), found);
                }
            }
            _ => check_object(child_kind, child, &path, found),
        }
    }
}

fn dns_label_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn label_value_ok(value: &str) -> bool {
    value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && (value.is_empty()
            || (value.as_bytes()[0].is_ascii_alphanumeric()
                && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric()))
}

/// A resource quantity as the generator writes them: an integer with an optional suffix.
fn quantity_ok(text: &str) -> bool {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &text[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && ["", "m", "k", "M", "G", "Ki", "Mi", "Gi"].contains(&suffix)
}

// ----- end to end against the stand-in kubectl ----------------------------------------------

/// A value that the runner must see (it is in the manifest's env: see the module doc of
/// `engine::kubernetes` on why secrets of Kubernetes pools belong in Secrets).
const TOKEN: &str = "k8s-visible-token";

/// The kubernetes pool `kube` of these tests: context `test-cluster`, namespace `ci`.
const KUBE: Engine = Engine {
    kind: "kubernetes",
    pool: "kube",
    keys: "image = \"registry.example/agent:1\"\nnamespace = \"ci\"\n\
           context = \"test-cluster\"\n",
    token: TOKEN,
    noun: "job",
    start: &["create"],
    only_id: |standin| only_job(standin).0,
    // `kubectl --context=… --namespace=… logs --follow --pod-running-timeout=24h --since=… job/NAME`
    since_at: 6,
    log_target: |name| format!("job/{name}"),
};

/// The Jobs the stand-in was given, by name.
fn jobs(standin: &Standin) -> BTreeMap<String, PathBuf> {
    standin
        .dirs("kubernetes/ci")
        .into_iter()
        .map(|d| {
            let manifest = Standin::read(&d, "manifest.json");
            (
                manifest["metadata"]["name"].as_str().unwrap().to_string(),
                d,
            )
        })
        .collect()
}

fn only_job(standin: &Standin) -> (String, PathBuf) {
    let jobs = jobs(standin);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    jobs.into_iter().next().unwrap()
}

#[test]
fn a_task_runs_as_a_job_whose_manifest_carries_its_labels_resources_and_env() {
    let (case, runner_id, _) = KUBE.run_t1_with_resources();
    let standin = &case.standin;
    let (_, dir) = only_job(standin);

    let creates = standin.calls_of(&["create"]);
    assert_eq!(
        creates,
        [vec![
            "kubectl",
            "--context=test-cluster",
            "--namespace=ci",
            "create",
            "-f",
            "-",
            "-o",
            "name"
        ]]
    );
    let job = Standin::read(&dir, "manifest.json");
    assert!(
        schema_violations(&job).is_empty(),
        "{:#?}",
        schema_violations(&job)
    );
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["metadata"]["namespace"], "ci");
    assert_eq!(
        job["metadata"]["annotations"]["dispatcher.io/runner-id"],
        runner_id.as_str()
    );
    let labels = &job["metadata"]["labels"];
    assert_eq!(labels["dispatcher.io/pool"], "kube");
    assert_eq!(labels["dispatcher.io/spec"], "web");
    assert_eq!(labels["dispatcher.io/task"], "t1");
    assert_eq!(labels["dispatcher.io/attempt"], "1");
    assert_eq!(job["spec"]["template"]["metadata"]["labels"], *labels);
    assert_eq!(job["spec"]["backoffLimit"], 0);
    assert_eq!(job["spec"]["ttlSecondsAfterFinished"], 3600);
    assert!(
        job["spec"].get("activeDeadlineSeconds").is_none(),
        "no pool timeout"
    );
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "registry.example/agent:1");
    assert_eq!(container["command"], json!([runner("args.sh"), "t1"]));
    assert_eq!(container["workingDir"], "/workspace");
    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}})
    );
    let env_value = |name: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .map(|v| v["value"].clone())
    };
    assert_eq!(env_value("API_TOKEN"), Some(json!(TOKEN)));
    assert_eq!(
        env_value("DISPATCHER_HEARTBEAT_FILE"),
        Some(json!("/dispatcher/heartbeat"))
    );
    assert_eq!(env_value("RUNNER_ID"), Some(json!(runner_id)));
    // The runner ran with that environment and its task id as argument.
    case.assert_runner_got_the_token_and_t1(&KUBE, &runner_id);
    // Every call names the pool's context and namespace first.
    for call in standin.calls() {
        assert_eq!(
            call[1..3],
            ["--context=test-cluster", "--namespace=ci"],
            "{call:?}"
        );
    }
    assert!(!standin
        .calls_of(&["get", "jobs", "-o", "json", "-l", "dispatcher.io/pool=kube"])
        .is_empty());
}

#[test]
fn a_manifest_template_file_keeps_its_service_account_and_env_from() {
    let env = Env::new();
    let standin = Standin::install(&env);
    let template = env.path().join("job-template.json");
    fs::write(
        &template,
        json!({"spec": {"template": {"spec": {
            "serviceAccountName": "agents",
            "containers": [{"name": "agent", "envFrom": [{"secretRef": {"name": "agent-keys"}}]}]
        }}}})
        .to_string(),
    )
    .unwrap();
    KUBE.config(
        &env,
        1,
        &cmd("args.sh", &["{task_id}"]),
        &format!(
            "manifest_template = {}",
            toml_str(&template.display().to_string())
        ),
        "",
    );
    env.taskset("web", &[json!({"id": "t1"})]);

    let (status, log) = env.run_until_idle();
    assert_exit(status, 0, &log);
    let (_, dir) = only_job(&standin);
    let job = Standin::read(&dir, "manifest.json");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "agents");
    assert_eq!(
        pod["containers"][0]["envFrom"],
        json!([{"secretRef": {"name": "agent-keys"}}])
    );
    assert_eq!(pod["containers"][0]["name"], "runner");
    assert!(
        schema_violations(&job).is_empty(),
        "{:#?}",
        schema_violations(&job)
    );
}

#[test]
fn a_failing_pod_exit_code_is_a_failed_attempt_and_is_retried() {
    let case = KUBE.a_failing_exit_code_is_retried();
    assert_eq!(jobs(&case.standin).len(), 2);
    assert!(!case
        .standin
        .calls_of(&["get", "pods", "-o", "json", "-l"])
        .is_empty());
}

#[test]
fn the_execution_timeout_deletes_the_job_and_counts_as_timed_out() {
    // A Job controller that has not enforced activeDeadlineSeconds yet: the dispatcher's
    // own clock ends the attempt.
    let case = KUBE.a_hanging_runner_times_out(&["no-deadlines"]);
    let (name, dir) = only_job(&case.standin);
    assert_eq!(
        Standin::read(&dir, "manifest.json")["spec"]["activeDeadlineSeconds"],
        1
    );
    let deletes = case.standin.calls_of(&["delete"]);
    assert_eq!(
        deletes,
        [vec![
            "kubectl",
            "--context=test-cluster",
            "--namespace=ci",
            "delete",
            "job",
            name.as_str(),
            "--cascade=foreground",
            "--wait=false",
            "--grace-period=1"
        ]]
    );
}

#[test]
fn pod_output_reaches_the_attempt_log() {
    let case = KUBE.output_reaches_the_attempt_log(1);
    let (name, _) = only_job(&case.standin);
    let follows = case.standin.calls_of(&["logs"]);
    assert_eq!(
        follows,
        [vec![
            "kubectl",
            "--context=test-cluster",
            "--namespace=ci",
            "logs",
            "--follow",
            "--pod-running-timeout=24h",
            &format!("job/{name}")
        ]]
    );
}

#[test]
fn status_json_shows_the_job_name_of_a_running_runner() {
    KUBE.status_json_shows_the_engine_id(1);
}

#[test]
fn an_unreachable_cluster_takes_no_tasks_while_a_local_pool_runs_its_own() {
    let (_case, mut run) = KUBE.a_silent_engine_takes_no_tasks_while_a_local_pool_runs(
        "unreachable",
        "The connection to the server",
        1,
    );
    run.terminate();
}

#[test]
fn a_user_who_may_not_create_jobs_is_reported_as_the_pools_engine_error() {
    let env = Env::new();
    let standin = Standin::install(&env);
    standin.set("forbidden");
    KUBE.config(&env, 1, &cmd("args.sh", &["{task_id}"]), "", "");
    env.taskset("web", &[json!({"id": "t1"})]);

    let mut run = env.spawn_run(&[]);
    wait_for("status to report that Jobs may not be created", || {
        status_json(&env)["pools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| {
                p["name"] == "kube"
                    && p["engine_error"].as_str()
                        == Some("kubectl says this user may not create Jobs (no)")
            })
    });
    assert_eq!(env.state_of("web", "t1"), "ready");
    assert!(standin.calls_of(&["create"]).is_empty());
    run.terminate();
}

#[test]
fn a_job_outlives_a_sigkilled_dispatcher_and_is_adopted_by_the_next() {
    KUBE.a_runner_outlives_a_sigkilled_dispatcher_and_is_adopted();
}

/// Regression: a Job the cluster ended at `activeDeadlineSeconds` (the pool's timeout) was
/// counted as an ordinary failure ("kubernetes job …: DeadlineExceeded") instead of a
/// timeout, because the Job controller's deadline, counted from the Job's start, always
/// passes before the dispatcher's own clock, counted from when it first saw the pod run.
#[test]
fn a_job_ended_at_its_active_deadline_counts_as_timed_out() {
    let case = KUBE.a_hanging_runner_times_out(&[]);
    let standin = &case.standin;
    let timed_out = case.env.events_of_type("web", "RunnerTimedOut");
    assert_eq!(timed_out[0]["details"]["reason"], "timed_out");
    // The cluster ended it: the dispatcher had nothing to delete.
    let (_, dir) = only_job(standin);
    assert!(
        dir.join("deadline").exists(),
        "the stand-in did not enforce the deadline"
    );
    assert!(
        standin.calls_of(&["delete"]).is_empty(),
        "{:?}",
        standin.calls()
    );
}
