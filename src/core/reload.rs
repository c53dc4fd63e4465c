//! Applying a new configuration (SIGHUP) to a running dispatcher without stopping a runner:
//! pools keep their places by name, a removed pool that still runs tasks stays (switched
//! off) until they end, and the queue is rebuilt when the policy or routing changed.

use std::sync::Arc;

use super::{Core, PoolRuntime};
use crate::config::Config;
use crate::control;
use crate::registry::Event;
use crate::scheduler;

impl Core {
    pub(super) fn reload(&mut self, mut config: Config) {
        let old = self.config.clone();
        for (what, changed) in [
            (
                "task_registry.dir",
                config.task_registry.dir != old.task_registry.dir,
            ),
            (
                "dispatcher.state_dir",
                config.dispatcher.state_dir != old.dispatcher.state_dir,
            ),
            (
                "dispatcher.poll_interval",
                config.dispatcher.poll_interval != old.dispatcher.poll_interval,
            ),
            (
                "repo_pool",
                format!("{:?}", config.repo_pool) != format!("{:?}", old.repo_pool),
            ),
        ] {
            if changed {
                log::warn!("reload: {what} changed; it takes effect at the next start");
            }
        }
        // The slot manager keeps the repositories it started with; so does the bootstrap of
        // their slots (setup, copy_files), which must match the pools on disk.
        config.repo_pool = old.repo_pool.clone();
        // A pool removed while it still runs tasks stays, taking nothing new, until they end.
        for pool in &self.pools {
            let still_busy = pool.running > 0 && !config.agent_pools.contains_key(&pool.name);
            if still_busy {
                let mut retired = old.agent_pools[&pool.name].clone();
                retired.enabled = false;
                config.agent_pools.insert(pool.name.clone(), retired);
            }
            // Runners live in the engine they were started with: a pool that changes its
            // type or its engine settings (namespace, partition …) keeps the old ones until
            // its runners have ended, so that they are still watched and stopped where they run.
            let (Some(before), Some(after)) = (
                old.agent_pools.get(&pool.name),
                config.agent_pools.get(&pool.name),
            ) else {
                continue;
            };
            let moved = before.kind != after.kind || before.engine != after.engine;
            if pool.running > 0 && moved {
                log::warn!(
                    "reload: pool {} changes its type or engine settings while {} of its runners run; the change waits for a reload after they end",
                    pool.name,
                    pool.running
                );
                let mut kept = after.clone();
                kept.kind = before.kind;
                kept.engine = before.engine.clone();
                kept.command.clone_from(&before.command);
                config.agent_pools.insert(pool.name.clone(), kept);
            }
        }
        let old_pools = std::mem::take(&mut self.pools);
        self.pools = config
            .agent_pools
            .iter()
            .map(|(name, pool)| {
                match old_pools
                    .iter()
                    .find(|p| &p.name == name && old.agent_pools[name].kind == pool.kind)
                {
                    Some(p) => PoolRuntime {
                        name: name.clone(),
                        running: p.running,
                        cpu_used: p.cpu_used,
                        memory_used_mb: p.memory_used_mb,
                        quota_blocked: false,
                        switched_off: p.switched_off,
                        engine_error: p.engine_error.clone(),
                        engine_checked: p.engine_checked,
                        breaker: p.breaker.clone(),
                        budget_spent: None,
                    },
                    None => PoolRuntime::idle(name, pool),
                }
            })
            .collect();
        if let Some(engines) = &self.engines {
            for (name, pool) in &config.agent_pools {
                engines.ensure(name, pool);
            }
        }
        // Places held by running tasks and picks move to their pool's new index.
        let remap = |index: usize, pools: &[PoolRuntime]| {
            let name = &old_pools[index].name;
            pools.iter().position(|p| &p.name == name)
        };
        for run in self.running.values_mut() {
            run.pool = run.pool.and_then(|i| remap(i, &self.pools));
        }
        for pick in self.allocating.values_mut() {
            pick.pool = remap(pick.pool, &self.pools).expect("a pool with places is kept");
        }
        for (pick, _) in &mut self.allocated {
            pick.pool = remap(pick.pool, &self.pools).expect("a pool with places is kept");
        }

        let heartbeat = config.dispatcher.heartbeat_timeout;
        self.heartbeat_timeout = (!heartbeat.is_zero()).then_some(heartbeat);
        let policy_changed =
            config.dispatcher.scheduling_policy != old.dispatcher.scheduling_policy;
        self.config = Arc::new(config);
        self.routes.clear();
        self.overrides_read = false;
        self.read_pool_overrides();
        if policy_changed {
            self.queue = scheduler::Queue::new(self.config.dispatcher.scheduling_policy);
        }
        let specs: Vec<String> = self.specs.keys().cloned().collect();
        for spec in specs {
            self.requeue_spec(&spec);
        }
        // Pools or their routing changed: what can never run may have changed too.
        self.check_deadlocks(true);
        log::info!(
            "configuration reloaded: {} pools, policy {}",
            self.pools.len(),
            self.config.dispatcher.scheduling_policy.as_str()
        );
        control::append_dispatcher_event(
            &self.state,
            &Event::new("ConfigReloaded", "", None)
                .with("pools", self.pools.len())
                .with("policy", self.config.dispatcher.scheduling_policy.as_str()),
        );
        self.snapshot_dirty = true;
    }
}
