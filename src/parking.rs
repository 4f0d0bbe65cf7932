//! Where parked connections wait: one shared sweep per listener instead of a timer (and a drain
//! future) per connection. A parked connection registers its waker and its idle deadline in a
//! [`Parking`] slot (a few dozen bytes); [`Parking::sweep`] wakes the slots whose deadline has
//! passed a few times per idle period, and every slot when the drain begins. A woken connection
//! decides for itself (its idle clock, its drain receiver) whether it ends or waits on.

use std::sync::Mutex;
use std::task::Waker;
use std::time::Duration;

use slab::Slab;
use tokio::sync::watch;
use tokio::time::Instant;

/// The parked connections of one listener.
#[derive(Default)]
pub struct Parking {
    slots: Mutex<Slab<Slot>>,
}

struct Slot {
    waker: Waker,
    deadline: Instant,
}

impl Parking {
    fn slots(&self) -> std::sync::MutexGuard<'_, Slab<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes every slot whose deadline is at or before `now`; returns how many.
    fn wake_due(&self, now: Instant, all: bool) -> usize {
        // Wakers are cloned out and woken after the lock is released: a woken task may be
        // polled at once on another worker and update its slot.
        let due: Vec<Waker> = self
            .slots()
            .iter()
            .filter(|(_, s)| all || s.deadline <= now)
            .map(|(_, s)| s.waker.clone())
            .collect();
        let n = due.len();
        due.into_iter().for_each(Waker::wake);
        n
    }

    /// Runs until the drain begins: every `tick()` wakes the connections whose idle deadline
    /// has passed; when `drain` changes (or its sender is gone) wakes them all and returns,
    /// dropping its receiver so the drain does not wait for it.
    pub async fn sweep(
        &self,
        tick: impl Fn() -> Duration,
        mut drain: watch::Receiver<()>,
    ) -> usize {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick()) => {
                    self.wake_due(Instant::now(), false);
                }
                _ = drain.changed() => return self.wake_due(Instant::now(), true),
            }
        }
    }

    /// A place for one connection; registered on its first [`Spot::wait_until`].
    pub fn spot(&self) -> Spot<'_> {
        Spot {
            parking: self,
            key: None,
        }
    }
}

/// One connection's slot in a [`Parking`]; gone when dropped.
pub struct Spot<'a> {
    parking: &'a Parking,
    key: Option<usize>,
}

impl Spot<'_> {
    /// Asks to be woken by `waker` once `deadline` has passed (or at the drain).
    pub fn wait_until(&mut self, waker: &Waker, deadline: Instant) {
        let mut slots = self.parking.slots();
        match self.key.and_then(|k| slots.get_mut(k)) {
            Some(slot) => {
                if !slot.waker.will_wake(waker) {
                    slot.waker = waker.clone();
                }
                slot.deadline = deadline;
            }
            None => {
                self.key = Some(slots.insert(Slot {
                    waker: waker.clone(),
                    deadline,
                }));
            }
        }
    }
}

impl Drop for Spot<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            self.parking.slots().try_remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Poll;

    /// A parked waiter: pending until `deadline`, counting its polls.
    async fn park(parking: &Parking, deadline: Instant, polls: &AtomicUsize) {
        let mut spot = parking.spot();
        poll_fn(|cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            spot.wait_until(cx.waker(), deadline);
            Poll::Pending
        })
        .await
    }

    #[tokio::test]
    async fn the_sweep_wakes_a_slot_once_its_deadline_has_passed_and_not_before() {
        let parking = Arc::new(Parking::default());
        let (tx, rx) = watch::channel(());
        let p = parking.clone();
        let sweeper = tokio::spawn(async move { p.sweep(|| Duration::from_millis(20), rx).await });
        let polls = Arc::new(AtomicUsize::new(0));
        let (p, n) = (parking.clone(), polls.clone());
        let deadline = Instant::now() + Duration::from_millis(150);
        let waiter = tokio::spawn(async move {
            park(&p, deadline, &n).await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(parking.len(), 1, "registered on its first poll");
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "not woken by the sweeps before it is due"
        );
        let woke = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken by a sweep")
            .expect("waiter");
        assert!(woke >= deadline);
        assert_eq!(
            polls.load(Ordering::Relaxed),
            2,
            "polled at park and once when due"
        );
        assert!(parking.is_empty(), "the slot is freed when the waiter ends");
        drop(tx);
        assert_eq!(sweeper.await.expect("sweeper"), 0);
    }

    #[tokio::test]
    async fn the_drain_wakes_every_slot_and_ends_the_sweep() {
        let parking = Arc::new(Parking::default());
        let (tx, rx) = watch::channel(());
        let p = parking.clone();
        let sweeper = tokio::spawn(async move { p.sweep(|| Duration::from_secs(3600), rx).await });
        let polls = Arc::new(AtomicUsize::new(0));
        let far = Instant::now() + Duration::from_secs(3600);
        for _ in 0..3 {
            let (p, n) = (parking.clone(), polls.clone());
            tokio::spawn(async move { park(&p, far, &n).await });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(parking.len(), 3);
        tx.send(()).expect("drain");
        assert_eq!(sweeper.await.expect("sweeper"), 3, "all three woken");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            polls.load(Ordering::Relaxed),
            6,
            "each polled again after the drain"
        );
    }

    #[test]
    fn a_spot_updates_its_slot_in_place() {
        let parking = Parking::default();
        let waker = Waker::noop();
        let mut spot = parking.spot();
        let now = Instant::now();
        spot.wait_until(waker, now + Duration::from_secs(5));
        spot.wait_until(waker, now);
        assert_eq!(parking.len(), 1, "one slot however often it waits");
        assert_eq!(parking.wake_due(now, false), 1, "its deadline moved to now");
        drop(spot);
        assert!(parking.is_empty());
    }
}
