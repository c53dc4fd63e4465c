//! The settings of pools whose runners an external engine runs (`type = "slurm"`,
//! `"docker"`, `"kubernetes"`): where and how jobs are submitted, and how often they are
//! watched.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tree::{Item, Problem, Table};
use super::PoolKind;

/// Keys of `[agent_pools.X]` that only engine pools read.
pub(super) const ENGINE_KEYS: &[&str] = &[
    "partition",
    "account",
    "qos",
    "extra_args",
    "image",
    "namespace",
    "context",
    "manifest_template",
    "shared_workspaces",
    "engine_poll_interval",
    "engine_command_timeout",
    "ttl_after_finished",
];

/// How an engine pool reaches its engine. Fields that do not apply to a pool's type are
/// rejected when the file is read, so none is ever silently ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Slurm `--partition`, `--account`, `--qos`.
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Added to `sbatch` / `docker run` before the program (never through a shell).
    pub extra_args: Vec<String>,
    /// The container image (docker, kubernetes).
    pub image: Option<String>,
    /// Kubernetes namespace and kubeconfig context; `None`: kubectl's own defaults.
    pub namespace: Option<String>,
    pub context: Option<String>,
    /// A Job manifest (JSON) that the generated fields are merged into.
    pub manifest_template: Option<PathBuf>,
    /// Whether the engine's nodes see this machine's files, so a runner can work in its
    /// workspace slot (mounted at `/workspace` for containers). When false, the runner gets the
    /// repository URL and branch in TASK_CONTEXT and clones itself.
    pub shared_workspaces: bool,
    /// How often all of the pool's jobs are looked at (one batched call).
    pub poll_interval: Duration,
    /// How long one engine command may take before it is killed and counted as failed.
    pub command_timeout: Duration,
    /// Kubernetes `ttlSecondsAfterFinished`.
    pub ttl_after_finished: Duration,
}

impl Default for EngineSettings {
    fn default() -> EngineSettings {
        EngineSettings {
            partition: None,
            account: None,
            qos: None,
            extra_args: Vec::new(),
            image: None,
            namespace: None,
            context: None,
            manifest_template: None,
            shared_workspaces: true,
            poll_interval: Duration::from_secs(1),
            command_timeout: Duration::from_secs(30),
            ttl_after_finished: Duration::from_secs(3600),
        }
    }
}

/// Which engine keys each pool type reads.
fn keys_of(kind: PoolKind) -> &'static [&'static str] {
    const COMMON: [&str; 3] = [
        "shared_workspaces",
        "engine_poll_interval",
        "engine_command_timeout",
    ];
    match kind {
        PoolKind::LocalProcess => &[],
        PoolKind::Slurm => &[
            "partition",
            "account",
            "qos",
            "extra_args",
            COMMON[0],
            COMMON[1],
            COMMON[2],
        ],
        PoolKind::Docker => &["image", "extra_args", COMMON[0], COMMON[1], COMMON[2]],
        PoolKind::Kubernetes => &[
            "image",
            "namespace",
            "context",
            "manifest_template",
            "ttl_after_finished",
            COMMON[0],
            COMMON[1],
            COMMON[2],
        ],
    }
}

/// Reads the engine keys of one pool table (already checked against the full key list).
pub(super) fn decode(
    table: &Table<'_>,
    section: &Item<'_>,
    kind: PoolKind,
    base_dir: &Path,
) -> Result<EngineSettings, Problem> {
    let allowed = keys_of(kind);
    for key in ENGINE_KEYS {
        if let Some(item) = table.get(key) {
            if !allowed.contains(key) {
                return Err(item.problem(format!(
                    "does not apply to a pool of type {:?}",
                    kind.as_str()
                )));
            }
        }
    }
    let mut settings = EngineSettings::default();
    let text = |key: &str| -> Result<Option<String>, Problem> {
        match table.get(key) {
            None => Ok(None),
            Some(item) => match item.str()? {
                "" => Err(item.problem("must not be empty")),
                value => Ok(Some(value.to_owned())),
            },
        }
    };
    settings.partition = text("partition")?;
    settings.account = text("account")?;
    settings.qos = text("qos")?;
    settings.image = text("image")?;
    settings.namespace = text("namespace")?;
    settings.context = text("context")?;
    if let Some(item) = table.get("extra_args") {
        settings.extra_args = item
            .string_list()?
            .into_iter()
            .map(|(_, arg)| arg.to_owned())
            .collect();
    }
    if let Some(item) = table.get("manifest_template") {
        settings.manifest_template = Some(super::path_value(&item, base_dir)?);
    }
    if let Some(item) = table.get("shared_workspaces") {
        settings.shared_workspaces = item.bool()?;
    }
    if let Some(item) = table.get("engine_poll_interval") {
        settings.poll_interval = item.duration()?;
        if settings.poll_interval.is_zero() {
            return Err(item.problem("must be greater than zero"));
        }
    }
    if let Some(item) = table.get("engine_command_timeout") {
        settings.command_timeout = item.duration()?;
        if settings.command_timeout.is_zero() {
            return Err(item.problem("must be greater than zero"));
        }
    }
    if let Some(item) = table.get("ttl_after_finished") {
        settings.ttl_after_finished = item.duration()?;
        // A finished Job is how its end is read: gone too soon, a success looks vanished.
        if settings.ttl_after_finished < std::time::Duration::from_secs(600) {
            return Err(item.problem(
                "must be at least 10m: the dispatcher reads a Job's end from the Job, also after a restart",
            ));
        }
    }
    let needs_image = matches!(kind, PoolKind::Docker | PoolKind::Kubernetes);
    if needs_image && settings.image.is_none() {
        return Err(section.problem(format!(
            "missing key \"image\" (the container image a {} pool runs)",
            kind.as_str()
        )));
    }
    Ok(settings)
}
