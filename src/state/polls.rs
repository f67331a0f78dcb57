//! The reading side of a session: its status, the long-polls that wait for a turn or
//! for its end, and the tombstone of an ended one.

use super::*;

impl Shared {
    /// `GET /session/{id}`: refreshes the session and reports its place.
    pub fn session_status(&self, id: &SessionId, now: Instant) -> Option<(Status, usize)> {
        self.lock()
            .queue
            .touch(id, now)
            .map(|v| (v.status, v.position))
    }

    /// `GET /session/{id}?wait=N`: answers once the session is ACTIVE or gone, or when
    /// `wait` is over, whichever comes first (§7 long-poll). Woken only by a change to
    /// this session's answer: its promotion or its end.
    pub async fn wait_for_turn(&self, id: &SessionId, wait: Duration) -> Option<(Status, usize)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (status, wake) = {
                let mut core = self.lock();
                let status = core
                    .queue
                    .touch(id, Instant::now())
                    .map(|v| (v.status, v.position))?;
                let wake = core.meta.get(id).map(|m| m.wake.clone());
                (status, wake)
            };
            if status.0 == Status::Active || tokio::time::Instant::now() >= deadline {
                return Some(status);
            }
            let Some(wake) = wake else {
                return Some(status);
            };
            let woken = wake.notified();
            tokio::pin!(woken);
            // Registered before looking again, so a change in between is not missed.
            woken.as_mut().enable();
            let again = self.session_status(id, Instant::now())?;
            if again.0 == Status::Active {
                return Some(again);
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                // Timed out: answer as things are.
                return self.session_status(id, Instant::now());
            }
            #[cfg(test)]
            self.poll_wakeups.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// `GET /session/{id}?wait=N&while=active`: answers as soon as the session is no
    /// longer ACTIVE (`None` once it is gone), or when `wait` is over. The holder's way
    /// to notice a kick, expiry or reap at once. Refreshes nothing: the holder's
    /// heartbeats keep it alive, not its watch.
    pub async fn wait_while_active(
        &self,
        id: &SessionId,
        wait: Duration,
    ) -> Option<(Status, usize)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // A peek, not a touch: the watch is not a sign of life (heartbeats are), so a
            // holder whose client died is still reaped while a watch is parked here.
            let (status, wake) = {
                let core = self.lock();
                let status = core.queue.view(id).map(|v| (v.status, v.position))?;
                let wake = core.meta.get(id).map(|m| m.wake.clone());
                (status, wake)
            };
            if status.0 != Status::Active || tokio::time::Instant::now() >= deadline {
                return Some(status);
            }
            let Some(wake) = wake else {
                return Some(status);
            };
            // An ACTIVE session leaves that state only by ending, which wakes its `wake`.
            let woken = wake.notified();
            tokio::pin!(woken);
            // Registered before looking again, so an end in between is not missed.
            woken.as_mut().enable();
            let again = self.peek(id)?;
            if again.0 != Status::Active {
                return Some(again);
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return self.peek(id);
            }
            #[cfg(test)]
            self.poll_wakeups.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// One session's status and place; refreshes nothing.
    fn peek(&self, id: &SessionId) -> Option<(Status, usize)> {
        self.lock().queue.view(id).map(|v| (v.status, v.position))
    }

    /// How `id` ended, if it ended recently; in identity mode only its owner learns it.
    pub fn tombstone(
        &self,
        id: &SessionId,
        caller: Option<&Identity>,
        now: Instant,
    ) -> Option<Tombstone> {
        let core = self.lock();
        let t = core.tombstones.get(id, now)?;
        match (&t.owner, caller) {
            (Some(owner), Some(caller)) if owner != caller => None,
            (Some(_), None) if self.config().identity.is_some() => None,
            _ => Some(t.clone()),
        }
    }
}
