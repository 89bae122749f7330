//! One async lock per job, taken while an event is applied and delivered, so
//! that this instance delivers a job's events in the order their `seq` was
//! assigned. Entries exist only while a lock is held or awaited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};
use uuid::Uuid;

#[derive(Default)]
pub struct JobLocks {
    locks: Mutex<HashMap<Uuid, Arc<AsyncMutex<()>>>>,
}

pub struct JobGuard<'a> {
    locks: &'a JobLocks,
    job: Uuid,
    guard: Option<OwnedMutexGuard<()>>,
}

impl JobLocks {
    pub async fn lock(&self, job: Uuid) -> JobGuard<'_> {
        let lock = self.map().entry(job).or_default().clone();
        JobGuard {
            locks: self,
            job,
            guard: Some(lock.lock_owned().await),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<AsyncMutex<()>>>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map();
        // Only the map holds the lock now: nobody holds or awaits it.
        if map
            .get(&self.job)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serializes_one_job_and_forgets_idle_locks() {
        let locks = Arc::new(JobLocks::default());
        let job = Uuid::new_v4();
        let first = locks.lock(job).await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _g = locks.lock(job).await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        // Another job is not blocked.
        drop(locks.lock(Uuid::new_v4()).await);
        drop(first);
        waiter.await.unwrap();
        assert_eq!(locks.len(), 0);
    }
}
