//! Scheduling decisions: the ordered queue of runnable tasks and the choice of which task
//! goes to which pool next. Pure data structures, no I/O: the core owns and drives them.
//!
//! Rules: tasks are taken in policy order; each goes to the least loaded of the pools that
//! can serve its skill; a task whose pools are all busy is skipped, never blocking the tasks
//! behind it that another pool could run; no pool and no global cap is ever exceeded.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::NaiveDateTime;

use crate::config::SchedulingPolicy;

/// A task's identity across the registry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskKey {
    pub spec: Arc<str>,
    pub id: Arc<str>,
}

impl TaskKey {
    pub fn new(spec: &str, id: &str) -> TaskKey {
        TaskKey {
            spec: spec.into(),
            id: id.into(),
        }
    }
}

impl std::fmt::Display for TaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.spec, self.id)
    }
}

/// Position in the queue: smaller goes first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    /// Negated priority under `priority`, zero under `fifo`.
    rank: i128,
    ready_at: NaiveDateTime,
    key: TaskKey,
}

/// What the scheduler needs to know about a queued task.
#[derive(Clone, Debug)]
pub struct QueuedTask {
    pub key: TaskKey,
    pub priority: i64,
    pub ready_at: NaiveDateTime,
    /// Indices of the pools that can serve the task's skill, in preference order.
    pub pools: Arc<[usize]>,
    /// The repository whose workspace slot the task needs, if any.
    pub repo: Option<Arc<str>>,
}

/// What a queued task needs besides a pool.
#[derive(Clone, Debug)]
struct Needs {
    pools: Arc<[usize]>,
    repo: Option<Arc<str>>,
}

/// The runnable tasks in policy order.
#[derive(Debug)]
pub struct Queue {
    policy: SchedulingPolicy,
    order: BTreeMap<Position, Needs>,
    /// Positions by spec, then task id, so that refreshing one spec costs that spec only.
    positions: HashMap<Arc<str>, HashMap<Arc<str>, Position>>,
}

impl Queue {
    pub fn new(policy: SchedulingPolicy) -> Queue {
        Queue {
            policy,
            order: BTreeMap::new(),
            positions: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn contains(&self, key: &TaskKey) -> bool {
        self.positions
            .get(&key.spec)
            .is_some_and(|tasks| tasks.contains_key(&key.id))
    }

    /// Adds a task, or moves it if it is already queued.
    pub fn insert(&mut self, task: QueuedTask) {
        self.remove(&task.key);
        let rank = match self.policy {
            SchedulingPolicy::Priority => -i128::from(task.priority),
            SchedulingPolicy::Fifo => 0,
        };
        let position = Position {
            rank,
            ready_at: task.ready_at,
            key: task.key.clone(),
        };
        let needs = Needs {
            pools: task.pools,
            repo: task.repo,
        };
        self.order.insert(position.clone(), needs);
        self.positions
            .entry(task.key.spec.clone())
            .or_default()
            .insert(task.key.id, position);
    }

    pub fn remove(&mut self, key: &TaskKey) -> bool {
        let Some(tasks) = self.positions.get_mut(&key.spec) else {
            return false;
        };
        let Some(position) = tasks.remove(&key.id) else {
            return false;
        };
        if tasks.is_empty() {
            self.positions.remove(&key.spec);
        }
        self.order.remove(&position);
        true
    }

    /// Removes every task of one spec (before its fresh state is queued again).
    pub fn remove_spec(&mut self, spec: &str) {
        for (_, position) in self.positions.remove(spec).into_iter().flatten() {
            self.order.remove(&position);
        }
    }

    /// Tasks in the order they would be taken, with the pools that can serve them.
    pub fn iter(&self) -> impl Iterator<Item = (&TaskKey, &[usize])> {
        self.order.iter().map(|(p, needs)| (&p.key, &*needs.pools))
    }

    /// Tasks in order with everything they need: pools and a repository's slot.
    pub fn iter_needs(&self) -> impl Iterator<Item = (&TaskKey, &[usize], Option<&str>)> {
        self.order
            .iter()
            .map(|(p, needs)| (&p.key, &*needs.pools, needs.repo.as_deref()))
    }

    /// Queued tasks that need a slot of a repository with none free.
    pub fn waiting_for_slots<'a>(
        &'a self,
        free: &'a HashMap<Arc<str>, usize>,
    ) -> impl Iterator<Item = (&'a TaskKey, &'a str)> + 'a {
        self.order.iter().filter_map(move |(p, needs)| {
            let repo = needs.repo.as_ref()?;
            (free.get(repo).copied().unwrap_or(0) == 0).then_some((&p.key, &**repo))
        })
    }
}

/// Load of one pool as the planner sees it.
#[derive(Clone, Debug)]
pub struct PoolLoad {
    pub running: usize,
    pub max: usize,
    pub enabled: bool,
}

impl PoolLoad {
    fn has_room(&self) -> bool {
        self.enabled && self.running < self.max
    }
}

/// Chooses the next assignments: `(task, pool index)` pairs, in queue order. `loads` and
/// `free_slots` (free workspace slots per repository; a repository missing from it has none)
/// are updated as if the assignments had started, so a caller that fails to start one must
/// give its capacity back.
pub fn plan(
    queue: &Queue,
    loads: &mut [PoolLoad],
    free_slots: &mut HashMap<Arc<str>, usize>,
    global_free: usize,
) -> Vec<(TaskKey, usize)> {
    let mut assignments = Vec::new();
    let mut global_free = global_free;
    let mut pools_with_room = loads.iter().filter(|l| l.has_room()).count();
    for (position, needs) in &queue.order {
        if global_free == 0 || pools_with_room == 0 {
            break;
        }
        let key = &position.key;
        let pools = &needs.pools;
        // A task whose repository has no free slot waits without holding up the others.
        if let Some(repo) = &needs.repo {
            if free_slots.get(repo).copied().unwrap_or(0) == 0 {
                continue;
            }
        }
        // Least loaded by running/max; the first listed wins a tie. Compared as
        // cross-products to stay in integers.
        let best = pools
            .iter()
            .copied()
            .filter(|&i| loads[i].has_room())
            .min_by(|&a, &b| {
                let (la, lb) = (&loads[a], &loads[b]);
                (la.running * lb.max).cmp(&(lb.running * la.max))
            });
        let Some(pool) = best else { continue };
        if let Some(free) = needs
            .repo
            .as_ref()
            .and_then(|repo| free_slots.get_mut(repo))
        {
            *free -= 1;
        }
        loads[pool].running += 1;
        if !loads[pool].has_room() {
            pools_with_room -= 1;
        }
        global_free -= 1;
        assignments.push((key.clone(), pool));
    }
    assignments
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: u32) -> NaiveDateTime {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 29)
            .unwrap()
            .and_hms_opt(10, 0, second)
            .unwrap()
    }

    fn task(id: &str, priority: i64, second: u32, pools: &[usize]) -> QueuedTask {
        QueuedTask {
            key: TaskKey::new("s", id),
            priority,
            ready_at: at(second),
            pools: pools.into(),
            repo: None,
        }
    }

    fn ids(queue: &Queue) -> Vec<String> {
        queue.iter().map(|(k, _)| k.id.to_string()).collect()
    }

    #[test]
    fn priority_orders_by_priority_then_ready_time_then_id() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        q.insert(task("low", 1, 0, &[0]));
        q.insert(task("b", 5, 3, &[0]));
        q.insert(task("a", 5, 3, &[0]));
        q.insert(task("early", 5, 1, &[0]));
        q.insert(task("negative", -7, 0, &[0]));
        assert_eq!(ids(&q), ["early", "a", "b", "low", "negative"]);
    }

    #[test]
    fn fifo_orders_by_ready_time_only() {
        let mut q = Queue::new(SchedulingPolicy::Fifo);
        q.insert(task("late-high", 100, 9, &[0]));
        q.insert(task("early-low", 0, 1, &[0]));
        assert_eq!(ids(&q), ["early-low", "late-high"]);
    }

    #[test]
    fn reinserting_moves_a_task_and_remove_spec_clears_it() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        q.insert(task("x", 1, 0, &[0]));
        q.insert(task("y", 2, 0, &[0]));
        q.insert(task("x", 3, 0, &[0]));
        assert_eq!(ids(&q), ["x", "y"]);
        assert_eq!(q.len(), 2);
        q.remove_spec("s");
        assert!(q.is_empty());
    }

    fn loads(spec: &[(usize, usize)]) -> Vec<PoolLoad> {
        spec.iter()
            .map(|&(running, max)| PoolLoad {
                running,
                max,
                enabled: true,
            })
            .collect()
    }

    #[test]
    fn busy_pool_does_not_block_tasks_of_an_idle_pool() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        q.insert(task("busy-first", 9, 0, &[0]));
        q.insert(task("idle-second", 1, 0, &[1]));
        let mut l = loads(&[(1, 1), (0, 1)]);
        let plan = plan(&q, &mut l, &mut HashMap::new(), 10);
        assert_eq!(plan, vec![(TaskKey::new("s", "idle-second"), 1)]);
    }

    #[test]
    fn least_loaded_pool_wins_and_caps_hold() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        for i in 0..10 {
            q.insert(task(&format!("t{i}"), 0, i, &[0, 1]));
        }
        // Pool 0 is half full (1/2), pool 1 empty (0/4): pool 1 first.
        let mut l = loads(&[(1, 2), (0, 4)]);
        let plan = plan(&q, &mut l, &mut HashMap::new(), 10);
        assert_eq!(
            plan.len(),
            5,
            "1 free in pool 0 plus 4 in pool 1 minus none"
        );
        assert_eq!(plan[0].1, 1);
        assert!(l[0].running <= 2 && l[1].running <= 4);
        assert_eq!(l[0].running + l[1].running, 6);
    }

    #[test]
    fn global_cap_limits_the_plan() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        for i in 0..10 {
            q.insert(task(&format!("t{i}"), 0, i, &[0]));
        }
        let mut l = loads(&[(0, 8)]);
        assert_eq!(plan(&q, &mut l, &mut HashMap::new(), 3).len(), 3);
    }

    #[test]
    fn repository_without_free_slots_does_not_block_others() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        let mut busy_repo = task("repo-a", 9, 0, &[0]);
        busy_repo.repo = Some("a".into());
        let mut other_repo = task("repo-b", 5, 0, &[0]);
        other_repo.repo = Some("b".into());
        let mut second_b = task("repo-b-2", 4, 0, &[0]);
        second_b.repo = Some("b".into());
        q.insert(busy_repo);
        q.insert(other_repo);
        q.insert(second_b);
        q.insert(task("no-repo", 1, 0, &[0]));
        let mut free: HashMap<Arc<str>, usize> = [("a".into(), 0), ("b".into(), 1)].into();
        let mut l = loads(&[(0, 8)]);
        let picked: Vec<String> = plan(&q, &mut l, &mut free, 10)
            .into_iter()
            .map(|(k, _)| k.id.to_string())
            .collect();
        assert_eq!(picked, ["repo-b", "no-repo"], "one slot of b, none of a");
        assert_eq!(free[&Arc::from("b")], 0);
        let waiting: Vec<String> = q
            .waiting_for_slots(&free)
            .map(|(k, _)| k.id.to_string())
            .collect();
        assert_eq!(waiting, ["repo-a", "repo-b", "repo-b-2"]);
    }

    #[test]
    fn disabled_pool_takes_nothing() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        q.insert(task("t", 0, 0, &[0]));
        let mut l = vec![PoolLoad {
            running: 0,
            max: 4,
            enabled: false,
        }];
        assert!(plan(&q, &mut l, &mut HashMap::new(), 10).is_empty());
    }
}
