//! Choosing the next assignments under the scheduling policy.
//!
//! Rules every policy keeps: each task goes to the least loaded (running/max) of the enabled
//! pools that can serve its skill and have room for it (concurrency, CPU and memory quotas,
//! a free workspace slot of its repository, no footprint overlap with a task of the same
//! repository that runs or was picked before it); a task that fits nowhere is skipped, never
//! holding up the tasks behind it; neither a pool cap, a quota nor the global cap is ever
//! exceeded. What the policies change is the order in which tasks are offered:
//!
//! - `priority` / `fifo`: queue order (priority then ready time, or ready time alone);
//! - `skill-based`: first every task that its skill maps to a pool directly, then those that
//!   reach a pool only through `default`, each in priority order;
//! - `fair-share`: the next place goes to the spec with the lowest running/weight among the
//!   specs with a task that fits; priority orders tasks inside a spec;
//! - with `starvation_after`, tasks that became ready before the cut-off come first, oldest
//!   first, under every policy.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use chrono::NaiveDateTime;

use super::{
    footprint_conflict, HeldFootprints, Needs, Position, Queue, Resources, Route, TaskKey,
};
use crate::config::SchedulingPolicy;

/// Load and limits of one pool as the planner sees it.
#[derive(Clone, Debug, Default)]
pub struct PoolLoad {
    pub running: usize,
    pub max: usize,
    pub enabled: bool,
    pub cpu_used: f64,
    pub cpu_quota: Option<f64>,
    pub memory_used_mb: u64,
    pub memory_quota_mb: Option<u64>,
    /// What a task without its own request asks of this pool.
    pub default_resources: Resources,
}

impl PoolLoad {
    fn has_room(&self) -> bool {
        self.enabled && self.running < self.max
    }

    /// Whether `request` fits under the quotas as they stand.
    fn fits(&self, request: Resources) -> bool {
        // A tiny tolerance so that 0.1 + 0.2 CPUs fit under a quota of 0.3.
        let cpu_ok = self
            .cpu_quota
            .is_none_or(|quota| self.cpu_used + request.cpu <= quota + 1e-9);
        let memory_ok = self
            .memory_quota_mb
            .is_none_or(|quota| self.memory_used_mb + request.memory_mb <= quota);
        cpu_ok && memory_ok
    }

    fn take(&mut self, request: Resources) {
        self.running += 1;
        self.cpu_used += request.cpu;
        self.memory_used_mb += request.memory_mb;
    }
}

/// Everything the planner reads and updates besides the queue.
pub struct PlanInput<'a> {
    pub loads: &'a mut [PoolLoad],
    /// Free workspace slots per repository; a repository missing from it has none.
    pub free_slots: &'a mut HashMap<Arc<str>, usize>,
    pub global_free: usize,
    /// Running tasks per spec, for `fair-share`.
    pub spec_running: &'a mut HashMap<Arc<str>, usize>,
    /// `[fair_share] weights`; a spec not listed weighs 1.
    pub weights: &'a BTreeMap<String, f64>,
    /// Tasks ready before this instant are starving and go first.
    pub starving_before: Option<NaiveDateTime>,
    /// Footprints of the running tasks; each task placed adds its own.
    pub held: &'a mut HeldFootprints,
}

/// What the planner decided, and what held tasks back.
#[derive(Debug, Default)]
pub struct Plan {
    /// `(task, pool index)` in the order they were chosen.
    pub assignments: Vec<(TaskKey, usize)>,
    /// Pools that had room for more runners but not in their CPU or memory quota.
    pub quota_blocked: HashSet<usize>,
    /// `(task, holder)`: tasks passed over because their footprint overlaps the holder's
    /// (a running task or one placed earlier in this plan). A task may appear twice.
    pub footprint_waits: Vec<(TaskKey, TaskKey)>,
}

/// Chooses the next assignments. `loads`, `free_slots` and `spec_running` are updated as if
/// the assignments had started, so a caller that fails to start one must give its capacity
/// back.
pub fn plan(queue: &Queue, input: PlanInput<'_>) -> Plan {
    let pools_with_room = input.loads.iter().filter(|l| l.has_room()).count();
    let mut planner = Planner {
        input,
        plan: Plan::default(),
        taken: HashSet::new(),
        pools_with_room,
    };
    if let Some(before) = planner.input.starving_before {
        for (key, needs) in queue.waiting_since_before(before) {
            if planner.full() {
                break;
            }
            planner.offer(key, needs);
        }
    }
    match queue.policy() {
        SchedulingPolicy::Priority | SchedulingPolicy::Fifo => planner.in_order(queue, |_| true),
        SchedulingPolicy::SkillBased => {
            for direct in [true, false] {
                planner.in_order(queue, |route| route.direct == direct);
            }
        }
        SchedulingPolicy::FairShare => planner.fair_share(queue),
    }
    planner.plan
}

struct Planner<'a> {
    input: PlanInput<'a>,
    plan: Plan,
    /// Tasks placed so far; only a task offered twice (starving, then in policy order)
    /// needs the check, so it stays empty and free in the common case.
    taken: HashSet<TaskKey>,
    pools_with_room: usize,
}

impl Planner<'_> {
    /// Nothing more can be placed: a decision stops at once when capacity runs out, so its
    /// cost follows the free places, not the length of the queue.
    fn full(&self) -> bool {
        self.input.global_free == 0 || self.pools_with_room == 0
    }

    /// Places the task if some pool can take it now. Returns whether it was placed.
    fn offer(&mut self, key: &TaskKey, needs: &Needs) -> bool {
        if !self.taken.is_empty() && self.taken.contains(key) {
            return false;
        }
        // A task whose repository has no free slot waits without holding up the others.
        if let Some(repo) = &needs.repo {
            if self.input.free_slots.get(repo).copied().unwrap_or(0) == 0 {
                return false;
            }
        }
        let loads = &*self.input.loads;
        let request = |pool: usize| {
            let default = loads[pool].default_resources;
            needs.resources.map_or(default, |r| r.or(default))
        };
        let mut best: Option<usize> = None;
        for &pool in needs.pools.iter() {
            let load = &loads[pool];
            if !load.has_room() {
                continue;
            }
            if !load.fits(request(pool)) {
                self.plan.quota_blocked.insert(pool);
                continue;
            }
            // Least loaded by running/max; the first listed wins a tie. Compared as
            // cross-products to stay in integers.
            let better = best.is_none_or(|b| {
                let other = &loads[b];
                load.running * other.max < other.running * load.max
            });
            if better {
                best = Some(pool);
            }
        }
        let Some(pool) = best else {
            return false;
        };
        // Last, so only a task that could start now pays for it (against the few held
        // footprints of its repository), and a wait reported is a wait for the footprint
        // alone. A task without a footprint pays one branch.
        if let Some(footprint) = &needs.footprint {
            if let Some((holder, _)) = footprint_conflict(self.input.held, key, footprint) {
                self.plan
                    .footprint_waits
                    .push((key.clone(), holder.clone()));
                return false;
            }
        }
        let request = request(pool);
        if let Some(free) = needs
            .repo
            .as_ref()
            .and_then(|r| self.input.free_slots.get_mut(r))
        {
            *free -= 1;
        }
        self.input.loads[pool].take(request);
        if !self.input.loads[pool].has_room() {
            self.pools_with_room -= 1;
        }
        self.input.global_free -= 1;
        if let Some(footprint) = &needs.footprint {
            self.input
                .held
                .entry(footprint.repo.clone())
                .or_default()
                .push((key.clone(), footprint.clone()));
        }
        *self.input.spec_running.entry(key.spec.clone()).or_default() += 1;
        if self.input.starving_before.is_some() {
            self.taken.insert(key.clone());
        }
        self.plan.assignments.push((key.clone(), pool));
        true
    }

    /// Offers the queued tasks of the routes `wanted` accepts in queue order, as a walk of
    /// the whole queue would, but merging only the routes that lead to a pool with room: a
    /// task none of whose pools has room cannot be placed (and leaves no trace when offered),
    /// and a pool never gains room during a decision, so a route is dropped for good once its
    /// pools are full. The cost follows the tasks that could go somewhere, not the queue.
    fn in_order(&mut self, queue: &Queue, wanted: impl Fn(&Route) -> bool) {
        let mut routes: Vec<(&Route, std::collections::btree_set::Iter<'_, Position>)> = queue
            .routes()
            .filter(|(route, _)| wanted(route) && self.has_room_on(route))
            .map(|(route, tasks)| (route, tasks.iter()))
            .collect();
        let mut heads = BinaryHeap::new();
        for (at, (_, tasks)) in routes.iter_mut().enumerate() {
            if let Some(position) = tasks.next() {
                heads.push(Reverse((position, at)));
            }
        }
        while let Some(Reverse((position, at))) = heads.pop() {
            if self.full() {
                break;
            }
            if !self.has_room_on(routes[at].0) {
                continue;
            }
            if let Some(needs) = queue.needs_at(position) {
                self.offer(&position.key, needs);
            }
            if let Some(next) = routes[at].1.next() {
                heads.push(Reverse((next, at)));
            }
        }
    }

    fn has_room_on(&self, route: &Route) -> bool {
        route
            .pools
            .iter()
            .any(|&pool| self.input.loads[pool].has_room())
    }

    /// Repeatedly gives the next place to the spec with the lowest running/weight that has a
    /// task that fits somewhere; a task that fits nowhere now is passed over for this round.
    fn fair_share(&mut self, queue: &Queue) {
        let mut by_spec: BTreeMap<Arc<str>, Vec<(&TaskKey, &Needs)>> = BTreeMap::new();
        for (key, needs) in queue.entries() {
            by_spec
                .entry(key.spec.clone())
                .or_default()
                .push((key, needs));
        }
        let mut cursors: BTreeMap<Arc<str>, usize> =
            by_spec.keys().map(|spec| (spec.clone(), 0)).collect();
        while !self.full() {
            // The spec furthest below its share; ties by name, so the order is stable.
            let share = |spec: &Arc<str>, planner: &Self| {
                let running = planner.input.spec_running.get(spec).copied().unwrap_or(0);
                let weight = planner.input.weights.get(&**spec).copied().unwrap_or(1.0);
                running as f64 / weight.max(f64::MIN_POSITIVE)
            };
            let Some(spec) = cursors
                .keys()
                .min_by(|a, b| share(a, self).total_cmp(&share(b, self)).then(a.cmp(b)))
                .cloned()
            else {
                break;
            };
            let tasks = &by_spec[&spec];
            let mut placed = false;
            let mut cursor = cursors[&spec];
            while cursor < tasks.len() {
                let (key, needs) = tasks[cursor];
                cursor += 1;
                if self.offer(key, needs) {
                    placed = true;
                    break;
                }
            }
            if placed && cursor < tasks.len() {
                cursors.insert(spec, cursor);
            } else {
                // Nothing more of this spec fits in this round.
                cursors.remove(&spec);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::at;
    use super::super::QueuedTask;
    use super::*;

    fn task(spec: &str, id: &str, priority: i64, second: u32, pools: &[usize]) -> QueuedTask {
        QueuedTask {
            key: TaskKey::new(spec, id),
            priority,
            ready_at: at(second),
            pools: pools.into(),
            repo: None,
            direct: true,
            resources: None,
            footprint: None,
        }
    }

    fn loads(spec: &[(usize, usize)]) -> Vec<PoolLoad> {
        spec.iter()
            .map(|&(running, max)| PoolLoad {
                running,
                max,
                enabled: true,
                ..PoolLoad::default()
            })
            .collect()
    }

    struct World {
        loads: Vec<PoolLoad>,
        free_slots: HashMap<Arc<str>, usize>,
        spec_running: HashMap<Arc<str>, usize>,
        weights: BTreeMap<String, f64>,
        global_free: usize,
        starving_before: Option<NaiveDateTime>,
        held: HeldFootprints,
    }

    impl World {
        fn new(pools: &[(usize, usize)]) -> World {
            World {
                loads: loads(pools),
                free_slots: HashMap::new(),
                spec_running: HashMap::new(),
                weights: BTreeMap::new(),
                global_free: 100,
                starving_before: None,
                held: HeldFootprints::new(),
            }
        }

        /// The whole plan, for tests that look past the assignments.
        fn full_plan(&mut self, queue: &Queue) -> Plan {
            plan(
                queue,
                PlanInput {
                    loads: &mut self.loads,
                    free_slots: &mut self.free_slots,
                    global_free: self.global_free,
                    spec_running: &mut self.spec_running,
                    weights: &self.weights,
                    starving_before: self.starving_before,
                    held: &mut self.held,
                },
            )
        }

        fn plan(&mut self, queue: &Queue) -> Vec<String> {
            self.full_plan(queue)
                .assignments
                .into_iter()
                .map(|(k, p)| format!("{}/{}@{p}", k.spec, k.id))
                .collect()
        }
    }

    #[test]
    fn busy_pool_does_not_block_tasks_of_an_idle_pool() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        q.insert(task("s", "busy-first", 9, 0, &[0]));
        q.insert(task("s", "idle-second", 1, 0, &[1]));
        assert_eq!(World::new(&[(1, 1), (0, 1)]).plan(&q), ["s/idle-second@1"]);
    }

    #[test]
    fn tasks_of_several_routes_are_offered_in_queue_order_and_full_routes_drop_out() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        q.insert(task("s", "a", 9, 0, &[0]));
        q.insert(task("s", "b", 8, 0, &[2]));
        q.insert(task("s", "c", 7, 0, &[0, 1]));
        q.insert(task("s", "d", 6, 0, &[1]));
        q.insert(task("s", "e", 5, 0, &[0]));
        q.insert(task("s", "f", 4, 0, &[1]));
        q.insert(task("s", "gone", 3, 0, &[1]));
        q.remove(&TaskKey::new("s", "gone"));
        q.insert(task("s", "g", 2, 0, &[0, 1]));
        // Pool 0 has one place, pool 1 two, pool 2 none: b never goes; once pool 0 is full,
        // c and g still reach pool 1, e does not.
        let mut world = World::new(&[(0, 1), (0, 2), (1, 1)]);
        assert_eq!(world.plan(&q), ["s/a@0", "s/c@1", "s/d@1"]);
        let mut world = World::new(&[(0, 1), (0, 4), (1, 1)]);
        assert_eq!(
            world.plan(&q),
            ["s/a@0", "s/c@1", "s/d@1", "s/f@1", "s/g@1"]
        );
    }

    #[test]
    fn least_loaded_pool_wins_and_caps_hold() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        for i in 0..10 {
            q.insert(task("s", &format!("t{i}"), 0, i, &[0, 1]));
        }
        // Pool 0 is half full (1/2), pool 1 empty (0/4): pool 1 first.
        let mut world = World::new(&[(1, 2), (0, 4)]);
        let plan = world.plan(&q);
        assert_eq!(plan.len(), 5, "1 free in pool 0 plus 4 in pool 1");
        assert!(plan[0].ends_with("@1"));
        assert_eq!(world.loads[0].running, 2);
        assert_eq!(world.loads[1].running, 4);
    }

    #[test]
    fn global_cap_limits_the_plan() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        for i in 0..10 {
            q.insert(task("s", &format!("t{i}"), 0, i, &[0]));
        }
        let mut world = World::new(&[(0, 8)]);
        world.global_free = 3;
        assert_eq!(world.plan(&q).len(), 3);
    }

    #[test]
    fn disabled_pool_takes_nothing() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        q.insert(task("s", "t", 0, 0, &[0]));
        let mut world = World::new(&[(0, 4)]);
        world.loads[0].enabled = false;
        assert!(world.plan(&q).is_empty());
    }

    #[test]
    fn repository_without_free_slots_does_not_block_others() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        let mut busy_repo = task("s", "repo-a", 9, 0, &[0]);
        busy_repo.repo = Some("a".into());
        let mut other_repo = task("s", "repo-b", 5, 0, &[0]);
        other_repo.repo = Some("b".into());
        let mut second_b = task("s", "repo-b-2", 4, 0, &[0]);
        second_b.repo = Some("b".into());
        q.insert(busy_repo);
        q.insert(other_repo);
        q.insert(second_b);
        q.insert(task("s", "no-repo", 1, 0, &[0]));
        let mut world = World::new(&[(0, 8)]);
        world.free_slots = [("a".into(), 0), ("b".into(), 1)].into();
        assert_eq!(
            world.plan(&q),
            ["s/repo-b@0", "s/no-repo@0"],
            "one slot of b, none of a"
        );
        assert_eq!(world.free_slots[&Arc::from("b")], 0);
        let waiting: Vec<String> = q
            .waiting_for_slots(&world.free_slots)
            .map(|(k, _)| k.id.to_string())
            .collect();
        assert_eq!(waiting, ["repo-a", "repo-b", "repo-b-2"]);
    }

    #[test]
    fn skill_based_serves_mapped_tasks_before_default_ones_unlike_priority() {
        // Pool 0 serves skill "backend" directly and is also the default pool; one place.
        let fill = |policy| {
            let mut q = Queue::new(policy);
            let mut via_default = task("s", "misc-high", 10, 0, &[0]);
            via_default.direct = false;
            q.insert(via_default);
            q.insert(task("s", "backend-low", 1, 0, &[0]));
            q
        };
        let mut world = World::new(&[(0, 1)]);
        assert_eq!(
            world.plan(&fill(SchedulingPolicy::Priority)),
            ["s/misc-high@0"]
        );
        let mut world = World::new(&[(0, 1)]);
        assert_eq!(
            world.plan(&fill(SchedulingPolicy::SkillBased)),
            ["s/backend-low@0"]
        );
        // With room for both, nothing is left idle.
        let mut world = World::new(&[(0, 2)]);
        assert_eq!(
            world.plan(&fill(SchedulingPolicy::SkillBased)),
            ["s/backend-low@0", "s/misc-high@0"]
        );
    }

    #[test]
    fn fair_share_alternates_between_specs_and_honours_weights() {
        let mut q = Queue::new(SchedulingPolicy::FairShare);
        for i in 0..10 {
            q.insert(task("a", &format!("a{i}"), 100, i, &[0]));
            q.insert(task("b", &format!("b{i}"), 0, i, &[0]));
        }
        let mut world = World::new(&[(0, 4)]);
        let plan = world.plan(&q);
        let count = |spec: &str| plan.iter().filter(|p| p.starts_with(spec)).count();
        assert_eq!((count("a/"), count("b/")), (2, 2), "{plan:?}");

        // b already runs 2 of 4: the next two places both go to a.
        let mut world = World::new(&[(2, 4)]);
        world.spec_running.insert("b".into(), 2);
        let plan = world.plan(&q);
        assert_eq!(plan, ["a/a0@0", "a/a1@0"]);

        // Weight 3 for a: of 4 places, a gets 3.
        let mut world = World::new(&[(0, 4)]);
        world.weights.insert("a".into(), 3.0);
        let plan = world.plan(&q);
        let count = |spec: &str| plan.iter().filter(|p| p.starts_with(spec)).count();
        assert_eq!((count("a/"), count("b/")), (3, 1), "{plan:?}");
    }

    #[test]
    fn fair_share_never_leaves_a_pool_idle_for_the_sake_of_fairness() {
        // Spec a's tasks only fit pool 0 (full); b's fit pool 1.
        let mut q = Queue::new(SchedulingPolicy::FairShare);
        q.insert(task("a", "a0", 0, 0, &[0]));
        for i in 0..3 {
            q.insert(task("b", &format!("b{i}"), 0, i, &[1]));
        }
        let mut world = World::new(&[(1, 1), (0, 3)]);
        world.spec_running.insert("b".into(), 5);
        assert_eq!(world.plan(&q).len(), 3);
    }

    #[test]
    fn starving_tasks_go_first_under_every_policy() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        q.insert(task("s", "old-low", 0, 1, &[0]));
        q.insert(task("s", "new-high", 99, 50, &[0]));
        let mut world = World::new(&[(0, 1)]);
        assert_eq!(world.plan(&q), ["s/new-high@0"]);
        let mut world = World::new(&[(0, 1)]);
        world.starving_before = Some(at(10));
        assert_eq!(world.plan(&q), ["s/old-low@0"]);
    }

    #[test]
    fn quotas_cap_the_sum_of_requests_and_are_reported() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        let mut big = task("s", "big", 9, 0, &[0]);
        big.resources = Some(
            Resources {
                cpu: 3.0,
                memory_mb: 1024,
            }
            .into(),
        );
        q.insert(big);
        for i in 0..4 {
            q.insert(task("s", &format!("small{i}"), 0, i, &[0]));
        }
        let mut world = World::new(&[(0, 10)]);
        world.loads[0].cpu_quota = Some(4.0);
        world.loads[0].memory_quota_mb = Some(2048);
        world.loads[0].default_resources = Resources {
            cpu: 0.5,
            memory_mb: 256,
        };
        world.global_free = 10;
        let result = world.full_plan(&q);
        // big (3 CPU, 1 GiB) then two smalls (0.5 each): 4 CPUs, 1.5 GiB; a third would not fit.
        assert_eq!(result.assignments.len(), 3);
        assert!(result.quota_blocked.contains(&0));
        assert!(world.loads[0].cpu_used <= 4.0);
        assert!(world.loads[0].memory_used_mb <= 2048);
    }

    fn touching(id: &str, priority: i64, repo: &str, paths: &[&str]) -> QueuedTask {
        let mut t = task("s", id, priority, 0, &[0]);
        t.footprint = Some(Arc::new(super::super::Footprint::new(repo, paths).unwrap()));
        t
    }

    #[test]
    fn overlapping_footprints_are_skipped_without_blocking_the_queue() {
        let mut q = Queue::new(SchedulingPolicy::Priority);
        q.insert(touching("auth", 9, "r", &["src/auth/**"]));
        q.insert(touching("login", 8, "r", &["src/auth/login.rs"]));
        q.insert(touching("docs", 7, "r", &["docs/**"]));
        q.insert(touching("other-repo", 6, "q", &["src/auth/**"]));
        q.insert(task("s", "free", 5, 0, &[0]));
        let mut world = World::new(&[(0, 8)]);
        assert_eq!(
            world.plan(&q),
            ["s/auth@0", "s/docs@0", "s/other-repo@0", "s/free@0"],
            "login overlaps auth, picked in the same pass"
        );
        assert_eq!(world.held[&Arc::from("r")].len(), 2);

        // auth runs; login still waits, and says for whom.
        let mut q = Queue::new(SchedulingPolicy::Priority);
        q.insert(touching("login", 8, "r", &["src/auth/login.rs"]));
        q.insert(touching("docs", 7, "r", &["docs/**"]));
        let mut world = World::new(&[(1, 8)]);
        let running = Arc::new(super::super::Footprint::new("r", &["src/auth/**"]).unwrap());
        world.held = [(Arc::from("r"), vec![(TaskKey::new("s", "auth"), running)])].into();
        world.global_free = 10;
        let result = world.full_plan(&q);
        let picked: Vec<&str> = result.assignments.iter().map(|(k, _)| &*k.id).collect();
        assert_eq!(picked, ["docs"]);
        assert_eq!(
            result.footprint_waits,
            [(TaskKey::new("s", "login"), TaskKey::new("s", "auth"))]
        );
        let waiting: Vec<String> = q
            .waiting_for_footprints(&world.held)
            .map(|(k, _, (holder, _))| format!("{}<{}", k.id, holder.id))
            .collect();
        assert_eq!(waiting, ["login<auth"]);
    }

    #[test]
    fn footprints_hold_under_fair_share_and_starvation() {
        let mut q = Queue::new(SchedulingPolicy::FairShare);
        q.insert(touching("a", 0, "r", &["**"]));
        q.insert(touching("b", 0, "r", &["x"]));
        let mut world = World::new(&[(0, 8)]);
        world.starving_before = Some(at(10));
        assert_eq!(world.plan(&q), ["s/a@0"]);
    }
}
