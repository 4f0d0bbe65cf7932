//! Fair share of a saturated upstream pool (`upstreams.<pool>.capacity`).
//!
//! Below `max_in_flight` a request takes a slot with one compare-and-swap and goes straight
//! through. At the cap it waits in its tenant's FIFO queue; each slot that frees goes to the
//! next tenant by deficit round robin (DRR) over the tenants with waiting requests, `weight`
//! requests per turn. DRR rather than virtual-time WFQ: every request costs one slot, so the
//! deficit is a whole number of requests, dispatch is O(1) (pop the front tenant, maybe move it
//! to the back) and there is no virtual clock to renormalise as tenants come and go.
//!
//! Guarantees:
//! - work-conserving: a slot is never left free while anyone waits (a release and an enqueue
//!   that race are ordered so that one of them dispatches);
//! - no lock held across an await; the lock is taken only at the cap;
//! - cancellation-safe: a waiter that goes away (client disconnect, `queue_ms` elapsed) leaves the
//!   queue at once, and a slot granted to it in the same instant is handed on, never lost;
//! - bounded: at most `max_queued_per_tenant` waiters per tenant and `max_queued` per pool, past
//!   which a request is shed at once.
//!
//! The queue is runtime state owned by the pool's identity: a reload that keeps the pool keeps
//! its queue (waiters, order and in-flight count) and only changes its limits.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Why a request could not get a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// It waited `queue_ms` (or the queue was full).
    Saturated,
}

/// Compiled `capacity:` of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacitySettings {
    pub limit: Limit,
    pub queue: Duration,
    pub max_queued_per_tenant: usize,
    pub max_queued: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Fixed(usize),
    /// Estimated from latency between `min` and `max` (gradient, as Netflix concurrency-limits).
    Adaptive {
        min: usize,
        max: usize,
    },
}

impl Limit {
    fn initial(self) -> usize {
        match self {
            Self::Fixed(n) => n,
            Self::Adaptive { min, max } => min.max(max / 4).min(max),
        }
    }
}

/// One pool's slots and waiting tenants.
pub struct FairQueue {
    /// The current cap (fixed, or the adaptive estimate).
    limit: AtomicUsize,
    /// Whether the cap is adaptive (then slots are timed, to feed the estimate).
    adaptive_on: std::sync::atomic::AtomicBool,
    in_flight: AtomicUsize,
    /// Waiters in every tenant queue.
    queued: AtomicUsize,
    settings: Mutex<CapacitySettings>,
    state: Mutex<QueueState>,
    adaptive: Mutex<Gradient>,
    /// Requests shed (queue_ms elapsed or queue full).
    pub shed: AtomicU64,
    next_id: AtomicU64,
}

#[derive(Default)]
struct QueueState {
    tenants: HashMap<Arc<str>, TenantQueue>,
    /// Tenants with waiting requests, in turn order.
    ring: VecDeque<Arc<str>>,
}

struct TenantQueue {
    weight: u32,
    /// Requests the tenant may still take in its current turn.
    credit: u32,
    waiters: VecDeque<(u64, oneshot::Sender<()>)>,
}

impl std::fmt::Debug for FairQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FairQueue")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

impl FairQueue {
    pub fn new(settings: CapacitySettings) -> Self {
        Self {
            limit: AtomicUsize::new(settings.limit.initial().max(1)),
            adaptive_on: std::sync::atomic::AtomicBool::new(matches!(
                settings.limit,
                Limit::Adaptive { .. }
            )),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            settings: Mutex::new(settings),
            state: Mutex::new(QueueState::default()),
            adaptive: Mutex::new(Gradient::default()),
            shed: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn settings(&self) -> CapacitySettings {
        *lock(&self.settings)
    }

    /// Applies new settings (a reload): waiters keep their places and order; a raised cap
    /// dispatches at once, a lowered one lets in-flight requests finish.
    pub fn reconfigure(&self, settings: CapacitySettings) {
        let old = std::mem::replace(&mut *lock(&self.settings), settings);
        self.adaptive_on.store(
            matches!(settings.limit, Limit::Adaptive { .. }),
            Ordering::Relaxed,
        );
        if old.limit != settings.limit {
            let limit = match settings.limit {
                Limit::Fixed(n) => n,
                Limit::Adaptive { min, max } => self.limit().clamp(min, max),
            };
            self.limit.store(limit.max(1), Ordering::SeqCst);
        }
        self.dispatch();
    }

    /// Takes a slot: at once below the cap, else after waiting in `tenant`'s queue for at most
    /// `queue_ms`. The slot is held until the returned [`Slot`] is dropped.
    pub async fn acquire(
        self: &Arc<Self>,
        tenant: &str,
        weight: u32,
    ) -> Result<(Slot, Duration), Shed> {
        if let Some(slot) = self.try_acquire() {
            return Ok((slot, Duration::ZERO));
        }
        let started = Instant::now();
        let mut waiting = self.enqueue(tenant, weight)?;
        let queue = lock(&self.settings).queue;
        match tokio::time::timeout(queue, &mut waiting.rx).await {
            Ok(Ok(())) => {
                waiting.granted = true;
                Ok((self.slot(), started.elapsed()))
            }
            // Timed out: `waiting` leaves the queue (or hands on a slot granted just now).
            _ => {
                self.shed.fetch_add(1, Ordering::Relaxed);
                Err(Shed::Saturated)
            }
        }
    }

    /// A slot without waiting, when one is free and nobody waits for it.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        if self.queued.load(Ordering::SeqCst) != 0 {
            return None;
        }
        let limit = self.limit.load(Ordering::Relaxed);
        let mut cur = self.in_flight.load(Ordering::Relaxed);
        while cur < limit {
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.slot()),
                Err(now) => cur = now,
            }
        }
        None
    }

    fn slot(self: &Arc<Self>) -> Slot {
        Slot {
            queue: self.clone(),
            // Timed only for the adaptive estimate.
            started: self.adaptive_on.load(Ordering::Relaxed).then(Instant::now),
        }
    }

    /// Joins `tenant`'s queue without waiting (benchmarks and synchronous callers); the place
    /// is kept until the returned [`Waiting`] is granted or dropped.
    pub fn enqueue(self: &Arc<Self>, tenant: &str, weight: u32) -> Result<Waiting, Shed> {
        let tenant: Arc<str> = Arc::from(tenant);
        let tenant = &tenant;
        let (tx, rx) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let settings = *lock(&self.settings);
        {
            let mut st = lock(&self.state);
            if self.queued.load(Ordering::Relaxed) >= settings.max_queued {
                drop(st);
                self.shed.fetch_add(1, Ordering::Relaxed);
                return Err(Shed::Saturated);
            }
            let weight = weight.max(1);
            let st = &mut *st;
            let tq = st
                .tenants
                .entry(tenant.clone())
                .or_insert_with(|| TenantQueue {
                    weight,
                    credit: weight,
                    waiters: VecDeque::new(),
                });
            if tq.waiters.len() >= settings.max_queued_per_tenant {
                self.shed.fetch_add(1, Ordering::Relaxed);
                return Err(Shed::Saturated);
            }
            tq.weight = weight;
            if tq.waiters.is_empty() {
                st.ring.push_back(tenant.clone());
            }
            tq.waiters.push_back((id, tx));
            self.queued.fetch_add(1, Ordering::SeqCst);
        }
        // A slot may have been released between the fast path and the enqueue: look again.
        self.dispatch();
        Ok(Waiting {
            queue: self.clone(),
            tenant: tenant.clone(),
            id,
            granted: false,
            rx,
        })
    }

    /// Hands free slots to waiting tenants, DRR order. Called after a release, an enqueue and a
    /// reconfiguration.
    fn dispatch(&self) {
        if self.queued.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut st = lock(&self.state);
        loop {
            let limit = self.limit.load(Ordering::SeqCst);
            let cur = self.in_flight.load(Ordering::SeqCst);
            if cur >= limit {
                return;
            }
            let Some(tenant) = st.ring.front().cloned() else {
                return;
            };
            let st_ref = &mut *st;
            let Some(tq) = st_ref.tenants.get_mut(&tenant) else {
                st_ref.ring.pop_front();
                continue;
            };
            let Some((_, tx)) = tq.waiters.pop_front() else {
                st_ref.ring.pop_front();
                st_ref.tenants.remove(&tenant);
                continue;
            };
            self.queued.fetch_sub(1, Ordering::SeqCst);
            tq.credit = tq.credit.saturating_sub(1);
            if tq.waiters.is_empty() {
                st_ref.ring.pop_front();
                st_ref.tenants.remove(&tenant);
            } else if tq.credit == 0 {
                tq.credit = tq.weight;
                st_ref.ring.rotate_left(1);
            }
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            // The receiver lives as long as the entry (see `Waiting`): the send reaches it, and
            // a waiter that is going away hands the slot on from its `Drop`.
            let _ = tx.send(());
        }
    }

    fn release(&self, held: Option<Duration>) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(held) = held
            && let Limit::Adaptive { min, max } = lock(&self.settings).limit
        {
            let mut g = lock(&self.adaptive);
            if let Some(next) = g.sample(held, self.limit(), min, max) {
                self.limit.store(next, Ordering::SeqCst);
            }
        }
        self.dispatch();
    }

    /// Removes waiter `id` of `tenant`; false when it is no longer queued (it was granted).
    fn leave(&self, tenant: &Arc<str>, id: u64) -> bool {
        let mut st = lock(&self.state);
        let st = &mut *st;
        let Some(tq) = st.tenants.get_mut(tenant) else {
            return false;
        };
        let Some(at) = tq.waiters.iter().position(|(w, _)| *w == id) else {
            return false;
        };
        tq.waiters.remove(at);
        self.queued.fetch_sub(1, Ordering::SeqCst);
        if tq.waiters.is_empty() {
            st.tenants.remove(tenant);
            st.ring.retain(|t| t != tenant);
        }
        true
    }

    /// Tenants with waiting requests (for `/stats` and tests).
    pub fn waiting_tenants(&self) -> usize {
        lock(&self.state).ring.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A held slot of a pool; released (and handed to the next waiter) when dropped.
pub struct Slot {
    queue: Arc<FairQueue>,
    /// When the slot was taken (adaptive caps only).
    started: Option<Instant>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.queue.release(self.started.map(|t| t.elapsed()));
    }
}

/// A place in a tenant queue; leaves the queue when dropped before it was granted. It owns the
/// receiving end, so a dispatch that finds the entry always finds the receiver alive: the
/// slot is then counted for this waiter, and handed on here.
pub struct Waiting {
    queue: Arc<FairQueue>,
    tenant: Arc<str>,
    id: u64,
    granted: bool,
    rx: oneshot::Receiver<()>,
}

impl Waiting {
    /// The slot, if one has been dispatched to this place.
    pub fn try_granted(&mut self) -> Option<Slot> {
        self.rx.try_recv().ok()?;
        self.granted = true;
        Some(self.queue.slot())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        if !self.queue.leave(&self.tenant, self.id) {
            // Dispatched while we were going away: the slot was counted for us; hand it on.
            self.queue.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.queue.dispatch();
        }
    }
}

// === impl Gradient ===

/// The adaptive limit: the gradient between the best recent latency and the current one
/// (Netflix concurrency-limits' Gradient2, Envoy's adaptive concurrency): when latency grows
/// over its floor the limit shrinks, when it stays at the floor the limit grows by about
/// `sqrt(limit)` per window.
#[derive(Default)]
struct Gradient {
    /// The lowest latency of the last windows, µs (the no-queue floor).
    min_us: Option<f64>,
    window_sum_us: f64,
    window_n: u32,
    windows: u32,
    smoothed: Option<f64>,
}

impl Gradient {
    const WINDOW: u32 = 64;

    fn sample(&mut self, held: Duration, limit: usize, min: usize, max: usize) -> Option<usize> {
        self.window_sum_us += held.as_micros() as f64;
        self.window_n += 1;
        if self.window_n < Self::WINDOW {
            return None;
        }
        let avg = self.window_sum_us / f64::from(self.window_n);
        self.window_sum_us = 0.0;
        self.window_n = 0;
        self.windows += 1;
        let floor = match self.min_us {
            Some(m) if !self.windows.is_multiple_of(100) => m.min(avg),
            // Forget the floor now and then, so a slower-but-healthy backend is relearned.
            _ => avg,
        };
        self.min_us = Some(floor);
        let gradient = (floor / avg.max(1.0)).clamp(0.5, 1.0);
        let limit_f = limit as f64;
        let target = limit_f * gradient + limit_f.sqrt();
        let smoothed = match self.smoothed {
            Some(s) => s * 0.8 + target * 0.2,
            None => target,
        };
        self.smoothed = Some(smoothed);
        Some((smoothed.round() as usize).clamp(min.max(1), max.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(limit: usize) -> Arc<FairQueue> {
        Arc::new(FairQueue::new(CapacitySettings {
            limit: Limit::Fixed(limit),
            queue: Duration::from_secs(10),
            max_queued_per_tenant: 100,
            max_queued: 1000,
        }))
    }

    #[tokio::test]
    async fn below_the_cap_slots_are_taken_at_once_and_returned_on_drop() {
        let q = queue(2);
        let a = q.try_acquire().expect("first");
        let _b = q.try_acquire().expect("second");
        assert!(q.try_acquire().is_none());
        drop(a);
        assert_eq!(q.in_flight(), 1);
        assert!(q.try_acquire().is_some());
    }

    #[tokio::test]
    async fn freed_slots_go_round_robin_by_weight() {
        let q = queue(1);
        let held = q.try_acquire().expect("slot");
        let heavy: Arc<str> = "heavy".into();
        let light: Arc<str> = "light".into();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // heavy (weight 2) queues 6 requests, then light (weight 1) queues 3.
        for (t, w, n) in [(&heavy, 2, 6), (&light, 1, 3)] {
            for _ in 0..n {
                let (q, t, order) = (q.clone(), t.clone(), order.clone());
                tasks.push(tokio::spawn(async move {
                    let (slot, _) = q.acquire(&t, w).await.expect("slot");
                    lock(&order).push(t.to_string());
                    tokio::task::yield_now().await;
                    drop(slot);
                }));
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(q.queued(), 9);
        drop(held);
        for t in tasks {
            t.await.expect("task");
        }
        let order = lock(&order).clone();
        assert_eq!(
            order,
            [
                "heavy", "heavy", "light", "heavy", "heavy", "light", "heavy", "heavy", "light"
            ]
        );
        assert_eq!((q.in_flight(), q.queued()), (0, 0));
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_leaves_the_queue_at_once() {
        let q = queue(1);
        let held = q.try_acquire().expect("slot");
        let t: Arc<str> = "t".into();
        let gone = {
            let (q, t) = (q.clone(), t.clone());
            tokio::spawn(async move { q.acquire(&t, 1).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert_eq!(q.queued(), 1);
        gone.abort();
        let _ = gone.await;
        assert_eq!(q.queued(), 0, "the aborted waiter left");
        drop(held);
        assert_eq!(q.in_flight(), 0, "no slot leaked");
        assert!(q.try_acquire().is_some());
    }

    #[tokio::test]
    async fn waiting_past_queue_ms_is_shed_and_counted() {
        let q = Arc::new(FairQueue::new(CapacitySettings {
            limit: Limit::Fixed(1),
            queue: Duration::from_millis(100),
            max_queued_per_tenant: 1,
            max_queued: 10,
        }));
        let _held = q.try_acquire().expect("slot");
        let t: Arc<str> = "t".into();
        let first = {
            let (q, t) = (q.clone(), t.clone());
            tokio::spawn(async move { q.acquire(&t, 1).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        // The tenant's queue is full: shed at once.
        assert_eq!(q.acquire(&t, 1).await.map(|_| ()), Err(Shed::Saturated));
        assert_eq!(first.await.expect("task"), Err(Shed::Saturated));
        assert_eq!(q.shed.load(Ordering::Relaxed), 2);
        assert_eq!(q.queued(), 0);
    }

    #[tokio::test]
    async fn a_raised_cap_dispatches_and_keeps_the_order() {
        let q = queue(1);
        let _held = q.try_acquire().expect("slot");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (q, order) = (q.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let t: Arc<str> = "t".into();
                let (slot, _) = q.acquire(&t, 1).await.expect("slot");
                lock(&order).push(i);
                slot
            }));
            tokio::task::yield_now().await;
        }
        q.reconfigure(CapacitySettings {
            limit: Limit::Fixed(4),
            ..q.settings()
        });
        let mut slots = Vec::new();
        for t in tasks {
            slots.push(t.await.expect("task"));
        }
        assert_eq!(*lock(&order), [0, 1, 2]);
        assert_eq!(q.in_flight(), 4);
    }

    #[test]
    fn the_gradient_shrinks_under_queueing_and_grows_when_latency_is_flat() {
        let mut g = Gradient::default();
        let mut limit = 20;
        for _ in 0..20 {
            for _ in 0..Gradient::WINDOW {
                if let Some(n) = g.sample(Duration::from_millis(10), limit, 4, 100) {
                    limit = n;
                }
            }
        }
        assert!(limit > 40, "flat latency grows the limit: {limit}");
        for _ in 0..20 {
            for _ in 0..Gradient::WINDOW {
                if let Some(n) = g.sample(Duration::from_millis(40), limit, 4, 100) {
                    limit = n;
                }
            }
        }
        assert!(
            limit < 40,
            "latency four times the floor shrinks it: {limit}"
        );
    }
}
