//! A session's inbox: a bounded queue with many senders and one receiver that owns no memory
//! while it is empty.
//!
//! tokio's `mpsc` channel allocates a block of 32 slots when it is created; for a server holding
//! mostly idle sessions that block was the largest part of each one. Here the slots live in a
//! `VecDeque` that grows while stanzas wait and is given back when the receiver has drained it.
//! Capacity is a semaphore (senders wait for room: back-pressure), wake-ups a `Notify`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, Semaphore, TryAcquireError};

struct Shared<T> {
    items: Mutex<Items<T>>,
    /// One permit per free slot; closed when the receiver is gone or closed.
    room: Semaphore,
    /// Wakes the receiver: an item arrived or the last sender left.
    ready: Notify,
    senders: AtomicUsize,
}

struct Items<T> {
    queue: VecDeque<T>,
    closed: bool,
    /// How many of the queued items were pushed beyond the capacity (`push_beyond`): taking one
    /// out frees no slot until these are gone.
    beyond: usize,
}

impl<T> Items<T> {
    /// Takes the next item, and whether a slot came free with it.
    fn pop(&mut self) -> Option<(T, bool)> {
        let item = self.queue.pop_front()?;
        let freed = self.beyond == 0;
        self.beyond = self.beyond.saturating_sub(1);
        Some((item, freed))
    }
}

impl<T> Shared<T> {
    fn items(&self) -> MutexGuard<'_, Items<T>> {
        // A panic while holding this lock leaves a consistent queue (push/pop are atomic).
        self.items
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts an item in, having taken a slot; gives it back if the receiver closed meanwhile.
    fn push(&self, item: T) -> Result<(), T> {
        {
            let mut items = self.items();
            if items.closed {
                return Err(item);
            }
            items.queue.push_back(item);
        }
        self.ready.notify_one();
        Ok(())
    }
}

/// Why an item could not be queued without waiting.
#[derive(Debug)]
pub enum TrySendError<T> {
    Full(T),
    Closed(T),
}

/// Creates a queue holding at most `capacity` items.
pub fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        items: Mutex::new(Items {
            queue: VecDeque::new(),
            closed: false,
            beyond: 0,
        }),
        room: Semaphore::new(capacity.max(1)),
        ready: Notify::new(),
        senders: AtomicUsize::new(1),
    });
    (Sender(shared.clone()), Receiver(shared))
}

pub struct Sender<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        match self.0.room.try_acquire() {
            Ok(permit) => {
                permit.forget();
                self.0.push(item).map_err(TrySendError::Closed)
            }
            Err(TryAcquireError::NoPermits) => Err(TrySendError::Full(item)),
            Err(TryAcquireError::Closed) => Err(TrySendError::Closed(item)),
        }
    }

    /// Queues an item now, in order with everything else, even when the queue is full: up to
    /// `extra` items beyond its capacity. For fan-outs that must not wait on one slow receiver
    /// (a room's message to its occupants) nor reorder what it gets. `Full` past that.
    pub fn push_beyond(&self, item: T, extra: usize) -> Result<(), TrySendError<T>> {
        let item = match self.try_send(item) {
            Err(TrySendError::Full(item)) => item,
            other => return other,
        };
        {
            let mut items = self.0.items();
            if items.closed {
                return Err(TrySendError::Closed(item));
            }
            if items.beyond >= extra {
                return Err(TrySendError::Full(item));
            }
            items.beyond += 1;
            items.queue.push_back(item);
        }
        self.0.ready.notify_one();
        Ok(())
    }

    /// Waits for room, then queues; gives the item back if the receiver is gone.
    pub async fn send(&self, item: T) -> Result<(), T> {
        match self.0.room.acquire().await {
            Ok(permit) => {
                permit.forget();
                self.0.push(item)
            }
            Err(_) => Err(item),
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.senders.fetch_add(1, Ordering::Relaxed);
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.0.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The receiver may be waiting: it now learns that nothing more can come.
            self.0.ready.notify_one();
        }
    }
}

pub struct Receiver<T>(Arc<Shared<T>>);

impl<T> Receiver<T> {
    /// The next item; `None` once the queue is empty and closed or without senders. Cancel-safe.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut items = self.0.items();
                if let Some((item, freed)) = items.pop() {
                    drop(items);
                    if freed {
                        self.0.room.add_permits(1);
                    }
                    return Some(item);
                }
                if items.closed || self.0.senders.load(Ordering::Acquire) == 0 {
                    return None;
                }
                // About to wait: an idle session keeps no slots.
                if items.queue.capacity() > 0 {
                    items.queue = VecDeque::new();
                }
            }
            // A notification sent after the check above is kept for this wait (Notify's permit).
            self.0.ready.notified().await;
        }
    }

    pub fn try_recv(&mut self) -> Option<T> {
        let (item, freed) = self.0.items().pop()?;
        if freed {
            self.0.room.add_permits(1);
        }
        Some(item)
    }

    /// Refuses further items; those already queued can still be taken with `try_recv`.
    pub fn close(&self) {
        self.0.items().closed = true;
        self.0.room.close();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn items_pushed_beyond_the_capacity_keep_their_order_and_free_no_slot() {
        let (tx, mut rx) = bounded(2);
        for i in 0..2 {
            tx.push_beyond(i, 2).unwrap();
        }
        assert!(matches!(tx.try_send(9), Err(TrySendError::Full(9))));
        tx.push_beyond(2, 2).unwrap();
        tx.push_beyond(3, 2).unwrap();
        assert!(matches!(tx.push_beyond(4, 2), Err(TrySendError::Full(4))));
        // The two taken first were beyond: the queue is still full.
        assert_eq!(rx.recv().await, Some(0));
        assert_eq!(rx.try_recv(), Some(1));
        assert!(matches!(tx.try_send(9), Err(TrySendError::Full(9))));
        assert_eq!(rx.try_recv(), Some(2));
        tx.try_send(5).unwrap();
        assert_eq!(rx.try_recv(), Some(3));
        assert_eq!(rx.try_recv(), Some(5));
        assert_eq!(rx.try_recv(), None);
    }

    #[tokio::test]
    async fn delivers_in_order_and_applies_back_pressure() {
        let (tx, mut rx) = bounded(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(3).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a full queue makes senders wait");
        assert_eq!(rx.recv().await, Some(1));
        assert!(waiting.await.unwrap().is_ok());
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
        drop(tx);
        assert_eq!(rx.recv().await, None, "no senders left");
    }

    #[tokio::test]
    async fn a_closed_queue_refuses_new_items_but_keeps_queued_ones() {
        let (tx, mut rx) = bounded(4);
        tx.try_send("a").unwrap();
        rx.close();
        assert!(matches!(tx.try_send("b"), Err(TrySendError::Closed("b"))));
        assert_eq!(tx.send("c").await, Err("c"));
        assert_eq!(rx.try_recv(), Some("a"));
        assert_eq!(rx.try_recv(), None);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_an_item_and_frees_its_slots_when_idle() {
        let (tx, mut rx) = bounded(8);
        let receiving = tokio::spawn(async move {
            let first = rx.recv().await;
            let capacity = rx.0.items().queue.capacity();
            (first, rx, capacity)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(7).unwrap();
        let (first, mut rx, _) = receiving.await.unwrap();
        assert_eq!(first, Some(7));
        tx.try_send(8).unwrap();
        assert_eq!(rx.recv().await, Some(8));
        // Empty now: the next wait gives the slots back.
        let waiting = tokio::time::timeout(Duration::from_millis(20), rx.recv()).await;
        assert!(waiting.is_err());
        assert_eq!(rx.0.items().queue.capacity(), 0);
    }
}
