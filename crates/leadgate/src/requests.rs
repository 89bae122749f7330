//! A socket's requests, run one at a time in the order they came.
//!
//! socketioxide hands each incoming event to its handler on the connection's
//! read path and would run each in a task of its own, so that one socket's
//! requests could finish in any order. leadgate's handlers (`jobs::Events`,
//! `leads::sio::Events`) instead push the request here, on the read path,
//! and the first push into an idle queue starts one task that serves the
//! queue until it is empty. An idle socket keeps no task and no allocation.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Requests that may wait on one socket; past this a request is refused.
pub const LIMIT: usize = 64;

pub struct Requests<R> {
    inner: Mutex<Inner<R>>,
}

struct Inner<R> {
    queue: VecDeque<R>,
    /// Whether a task serves the queue (or will: see [`Requests::held`]).
    running: bool,
}

/// What [`Requests::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed<R> {
    /// Queued into an idle queue: the caller starts the task that serves it.
    Start,
    /// Queued behind others; the running task will serve it.
    Queued,
    /// Refused, and given back: [`LIMIT`] requests wait already.
    Full(R),
}

impl<R> Requests<R> {
    /// An idle queue.
    pub fn new() -> Self {
        Self::with(VecDeque::new(), false)
    }

    /// A queue that holds `first` and whose task is started by the caller
    /// later: requests pushed meanwhile wait behind `first`.
    pub fn held(first: R) -> Self {
        Self::with(VecDeque::from([first]), true)
    }

    fn with(queue: VecDeque<R>, running: bool) -> Self {
        Requests {
            inner: Mutex::new(Inner { queue, running }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner<R>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, request: R) -> Pushed<R> {
        let mut inner = self.inner();
        if inner.queue.len() >= LIMIT {
            return Pushed::Full(request);
        }
        inner.queue.push_back(request);
        if inner.running {
            Pushed::Queued
        } else {
            inner.running = true;
            Pushed::Start
        }
    }

    /// The next request for the serving task; `None` when the queue is
    /// empty, and then the task must end (the next push starts another).
    pub fn next(&self) -> Option<R> {
        let mut inner = self.inner();
        let next = inner.queue.pop_front();
        if next.is_none() {
            inner.running = false;
            // Give back what a burst allocated.
            inner.queue = VecDeque::new();
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_task_serves_requests_in_order() {
        let requests = Requests::new();
        assert_eq!(requests.push(1), Pushed::Start);
        assert_eq!(requests.push(2), Pushed::Queued);
        assert_eq!(requests.next(), Some(1));
        assert_eq!(requests.push(3), Pushed::Queued);
        assert_eq!(requests.next(), Some(2));
        assert_eq!(requests.next(), Some(3));
        assert_eq!(requests.next(), None);
        // Idle again: the next push starts a task.
        assert_eq!(requests.push(4), Pushed::Start);
    }

    #[test]
    fn a_held_queue_waits_for_its_first_request() {
        let requests = Requests::held(0);
        assert_eq!(requests.push(1), Pushed::Queued);
        assert_eq!(requests.next(), Some(0));
        assert_eq!(requests.next(), Some(1));
        assert_eq!(requests.next(), None);
    }

    #[test]
    fn a_full_queue_refuses() {
        let requests = Requests::new();
        for i in 0..LIMIT {
            assert_ne!(requests.push(i), Pushed::Full(i));
        }
        assert_eq!(requests.push(LIMIT), Pushed::Full(LIMIT));
        assert_eq!(requests.next(), Some(0));
        assert_eq!(requests.push(LIMIT), Pushed::Queued);
    }
}
