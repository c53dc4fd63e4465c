//! `dispatcher attempts SPEC/ID`: a task's attempt history, with whether each checkpoint ref
//! still exists in its repository.

use anyhow::Context;

use super::emit;
use dispatcher::attempts;
use dispatcher::config::Config;
use dispatcher::control::{self, ControlError};
use dispatcher::registry::Registry;
use dispatcher::slots::SlotManager;

pub fn attempts(config: &Config, task_ref: &str, json: bool) -> anyhow::Result<u8> {
    let (spec, id) = control::parse_task_ref(task_ref)?;
    let registry = Registry::new(&config.task_registry.dir);
    let no_task = || ControlError::NoSuchTask {
        spec: spec.clone(),
        id: id.clone(),
    };
    let taskset = match registry.load(&spec) {
        Ok(taskset) => taskset,
        Err(err) if err.is_missing() => return Err(no_task().into()),
        Err(err) => return Err(err.into()),
    };
    let task = taskset.task(&id).ok_or_else(no_task)?;
    let repo = task
        .metadata
        .get("repo_name")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let slots = SlotManager::new(&config.repo_pool);
    let records: Vec<_> = task
        .dispatcher_meta()
        .history
        .into_iter()
        .map(|record| {
            let exists = match (&record.checkpoint_ref, &repo) {
                (Some(name), Some(repo)) => slots.checkpoint_exists(repo, name),
                _ => None,
            };
            (record, exists)
        })
        .collect();
    if json {
        let list: Vec<_> = records
            .iter()
            .map(|(record, exists)| attempts::listing(record, *exists))
            .collect();
        let text = serde_json::to_string_pretty(&list).context("cannot encode the attempts")?;
        emit(&format!("{text}\n"))?;
    } else if records.is_empty() {
        emit(&format!("{spec}/{id}: no attempts yet\n"))?;
    } else {
        emit(&attempts::render(&records))?;
    }
    Ok(0)
}
