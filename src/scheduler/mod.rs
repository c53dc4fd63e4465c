//! Scheduling decisions: the ordered queue of runnable tasks ([`Queue`]) and the choice of
//! which task goes to which pool next ([`plan`]). Pure data structures, no I/O: the core owns
//! and drives them.

pub mod footprint;
mod plan;

pub use footprint::Footprint;
pub use plan::{plan, Plan, PlanInput, PoolLoad};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::NaiveDateTime;

use crate::config::SchedulingPolicy;
use crate::registry::Task;

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
    /// Negated priority, except under `fifo` (zero: ready time alone decides).
    rank: i128,
    ready_at: NaiveDateTime,
    key: TaskKey,
}

/// What a task asks of its pool's quotas (`metadata.resources`, else the pool's defaults).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Resources {
    pub cpu: f64,
    pub memory_mb: u64,
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
    /// Whether `pools` are mapped to the task's skill (rather than reached through
    /// `default`): the `skill-based` policy serves those first.
    pub direct: bool,
    /// Its own resource request; `None`, or a part it leaves out, takes each pool's default.
    pub resources: Option<Request>,
    /// The paths it declares it touches (`metadata.touches`), parsed when it was queued.
    pub footprint: Option<Arc<Footprint>>,
}

/// A task's own request (`metadata.resources`): a part it leaves out takes the default of
/// the pool it goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Request {
    pub cpu: Option<f64>,
    pub memory_mb: Option<u64>,
}

impl Request {
    /// A task's own request, `metadata.resources = {cpu, memory_mb}`; a missing or unusable
    /// part takes the pool's default ([`Request::or`]).
    pub fn of_task(task: &Task) -> Option<Request> {
        let resources = task.metadata.get("resources")?.as_object()?;
        let cpu = resources
            .get("cpu")
            .and_then(serde_json::Value::as_f64)
            .filter(|cpu| cpu.is_finite() && *cpu >= 0.0);
        let memory_mb = resources
            .get("memory_mb")
            .and_then(serde_json::Value::as_u64);
        if cpu.is_none() && memory_mb.is_none() {
            return None;
        }
        Some(Request { cpu, memory_mb })
    }

    /// The request as a pool whose default is `default` counts it.
    pub fn or(self, default: Resources) -> Resources {
        Resources {
            cpu: self.cpu.unwrap_or(default.cpu),
            memory_mb: self.memory_mb.unwrap_or(default.memory_mb),
        }
    }
}

/// What a task asks of its pool: its own `metadata.resources`, the rest from the pool's
/// `default_resources` (or the built-in default when the pool is unknown).
pub fn task_resources(task: &Task, pool: Option<&crate::config::PoolConfig>) -> Resources {
    let default = pool
        .map(|config| Resources {
            cpu: config.default_cpu,
            memory_mb: config.default_memory_mb,
        })
        .unwrap_or_default();
    Request::of_task(task).map_or(default, |r| r.or(default))
}

impl From<Resources> for Request {
    fn from(full: Resources) -> Request {
        Request {
            cpu: Some(full.cpu),
            memory_mb: Some(full.memory_mb),
        }
    }
}

/// What a queued task needs besides its place in line.
#[derive(Clone, Debug)]
pub(crate) struct Needs {
    pub(crate) pools: Arc<[usize]>,
    pub(crate) repo: Option<Arc<str>>,
    pub(crate) direct: bool,
    pub(crate) resources: Option<Request>,
    pub(crate) footprint: Option<Arc<Footprint>>,
}

/// Footprints of the tasks that run (or are on their way to), by repository: a queued task
/// whose footprint overlaps one of them waits.
pub type HeldFootprints = HashMap<Arc<str>, Vec<(TaskKey, Arc<Footprint>)>>;

/// The first task other than `key` whose held footprint overlaps `footprint`, if any.
pub fn footprint_conflict<'a>(
    held: &'a HeldFootprints,
    key: &TaskKey,
    footprint: &Footprint,
) -> Option<&'a (TaskKey, Arc<Footprint>)> {
    held.get(&footprint.repo)?
        .iter()
        .find(|(holder, other)| footprint.overlaps(other) && holder != key)
}

/// Where a task can go: the pools that can serve it and whether they are mapped to its skill.
/// Tasks of one skill share a route, so there are few.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Route {
    pools: Arc<[usize]>,
    direct: bool,
}

impl Route {
    fn of(needs: &Needs) -> Route {
        Route {
            pools: needs.pools.clone(),
            direct: needs.direct,
        }
    }
}

/// The runnable tasks in policy order.
#[derive(Debug)]
pub struct Queue {
    policy: SchedulingPolicy,
    order: BTreeMap<Position, Needs>,
    /// Positions by spec, then task id, so that refreshing one spec costs that spec only.
    positions: HashMap<Arc<str>, HashMap<Arc<str>, Position>>,
    /// The same tasks oldest first, to find those waiting past `starvation_after`.
    by_age: BTreeSet<(NaiveDateTime, TaskKey)>,
    /// The same tasks by route, each in queue order: a decision walks only the routes that
    /// lead to a pool with room, so tasks bound for full pools cost it nothing.
    by_route: HashMap<Route, BTreeSet<Position>>,
}

impl Queue {
    pub fn new(policy: SchedulingPolicy) -> Queue {
        Queue {
            policy,
            order: BTreeMap::new(),
            positions: HashMap::new(),
            by_age: BTreeSet::new(),
            by_route: HashMap::new(),
        }
    }

    pub fn policy(&self) -> SchedulingPolicy {
        self.policy
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
            SchedulingPolicy::Fifo => 0,
            SchedulingPolicy::Priority
            | SchedulingPolicy::SkillBased
            | SchedulingPolicy::FairShare => -i128::from(task.priority),
        };
        let position = Position {
            rank,
            ready_at: task.ready_at,
            key: task.key.clone(),
        };
        let needs = Needs {
            pools: task.pools,
            repo: task.repo,
            direct: task.direct,
            resources: task.resources,
            footprint: task.footprint,
        };
        self.by_age.insert((position.ready_at, task.key.clone()));
        self.by_route
            .entry(Route::of(&needs))
            .or_default()
            .insert(position.clone());
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
        self.forget(&position);
        true
    }

    /// Removes every task of one spec (before its fresh state is queued again).
    pub fn remove_spec(&mut self, spec: &str) {
        for (_, position) in self.positions.remove(spec).into_iter().flatten() {
            self.forget(&position);
        }
    }

    /// Drops a task from every index but `positions`.
    fn forget(&mut self, position: &Position) {
        self.by_age
            .remove(&(position.ready_at, position.key.clone()));
        if let Some(needs) = self.order.remove(position) {
            let route = Route::of(&needs);
            if let Some(tasks) = self.by_route.get_mut(&route) {
                tasks.remove(position);
                if tasks.is_empty() {
                    self.by_route.remove(&route);
                }
            }
        }
    }

    /// Tasks in the order they would be taken, with the pools that can serve them.
    pub fn iter(&self) -> impl Iterator<Item = (&TaskKey, &[usize])> {
        self.order.iter().map(|(p, needs)| (&p.key, &*needs.pools))
    }

    /// Tasks in policy order with their needs (for the planner).
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&TaskKey, &Needs)> {
        self.order.iter().map(|(p, needs)| (&p.key, needs))
    }

    /// The routes of the queued tasks with their tasks in queue order, and each task's needs.
    fn routes(&self) -> impl Iterator<Item = (&Route, &BTreeSet<Position>)> {
        self.by_route.iter()
    }

    fn needs_at(&self, position: &Position) -> Option<&Needs> {
        self.order.get(position)
    }

    /// Tasks that became ready before `before`, oldest first, with their needs.
    pub(crate) fn waiting_since_before(
        &self,
        before: NaiveDateTime,
    ) -> impl Iterator<Item = (&TaskKey, &Needs)> {
        self.by_age
            .iter()
            .take_while(move |(at, _)| *at < before)
            .filter_map(|(_, key)| {
                let position = self.positions.get(&key.spec)?.get(&key.id)?;
                Some((&position.key, self.order.get(position)?))
            })
    }

    /// The footprint of a queued task, if it has one.
    pub fn footprint_of(&self, key: &TaskKey) -> Option<Arc<Footprint>> {
        let position = self.positions.get(&key.spec)?.get(&key.id)?;
        self.order.get(position)?.footprint.clone()
    }

    /// Queued tasks whose footprint overlaps a held one: `(task, its footprint, holder)`.
    pub fn waiting_for_footprints<'a>(
        &'a self,
        held: &'a HeldFootprints,
    ) -> impl Iterator<Item = (&'a TaskKey, &'a Footprint, &'a (TaskKey, Arc<Footprint>))> + 'a
    {
        self.order.iter().filter_map(move |(p, needs)| {
            let footprint = needs.footprint.as_deref()?;
            Some((
                &p.key,
                footprint,
                footprint_conflict(held, &p.key, footprint)?,
            ))
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A ready time `second` seconds into a fixed minute.
    pub(super) fn at(second: u32) -> NaiveDateTime {
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
            direct: true,
            resources: None,
            footprint: None,
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
}
