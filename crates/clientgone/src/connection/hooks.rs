//! [`ClientLeftHook`]: code that runs the instant a connection shows its client
//! leaving mid-request, on the task that read the FIN or the reset.
//!
//! A request's future is dropped only after hyper has finished with the
//! connection: its own teardown, then the socket's. Work that must stop *now*
//! — a proxy's upstream request, whose server keeps computing until it sees its
//! connection close — cannot wait for that. Go has `context.AfterFunc` for the
//! same reason.

use std::sync::{Arc, Mutex, PoisonError};

use super::state::ConnectionState;

type Callback = Box<dyn FnOnce() + Send + 'static>;

/// The callbacks registered on one connection.
#[derive(Default)]
pub(crate) struct ClientLeftHooks {
    inner: Mutex<Registered>,
}

#[derive(Default)]
struct Registered {
    /// Set once the client left mid-request: later registrations run at once.
    fired: bool,
    next_id: u64,
    callbacks: Vec<(u64, Callback)>,
}

impl std::fmt::Debug for ClientLeftHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registered = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("ClientLeftHooks")
            .field("fired", &registered.fired)
            .field("callbacks", &registered.callbacks.len())
            .finish()
    }
}

impl ClientLeftHooks {
    /// Registers `callback`; `None` if it ran at once (the client had already left).
    fn add(&self, callback: Callback) -> Option<u64> {
        let mut registered = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if registered.fired {
            drop(registered);
            callback();
            return None;
        }
        let id = registered.next_id;
        registered.next_id += 1;
        registered.callbacks.push((id, callback));
        Some(id)
    }

    fn remove(&self, id: u64) {
        let mut registered = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        registered.callbacks.retain(|(other, _)| *other != id);
    }

    /// The client left while requests were in flight: run every callback, once.
    pub(crate) fn fire(&self) {
        let callbacks = {
            let mut registered = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            registered.fired = true;
            std::mem::take(&mut registered.callbacks)
        };
        // Outside the lock: a callback may register or drop another hook.
        for (_, callback) in callbacks {
            callback();
        }
    }
}

/// A callback registered with
/// [`TrackedConnection::on_client_left`](super::TrackedConnection::on_client_left).
/// Dropping it unregisters the callback (if it has not started yet): drop it
/// when the request it guards has ended.
#[must_use = "dropping the hook unregisters its callback at once"]
pub struct ClientLeftHook {
    registration: Option<(Arc<ConnectionState>, u64)>,
}

impl ClientLeftHook {
    pub(crate) fn register(state: &Arc<ConnectionState>, callback: Callback) -> Self {
        let registration = state.hooks().add(callback).map(|id| (state.clone(), id));
        ClientLeftHook { registration }
    }
}

impl Drop for ClientLeftHook {
    fn drop(&mut self) {
        if let Some((state, id)) = &self.registration {
            state.hooks().remove(*id);
        }
    }
}

impl std::fmt::Debug for ClientLeftHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLeftHook")
            .field("registered", &self.registration.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn counter() -> (Arc<AtomicUsize>, impl Fn() -> Callback) {
        let count = Arc::new(AtomicUsize::new(0));
        let counted = count.clone();
        let make = move || -> Callback {
            let counted = counted.clone();
            Box::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            })
        };
        (count, make)
    }

    #[test]
    fn fire_runs_each_registered_callback_once_and_skips_removed_ones() {
        let hooks = ClientLeftHooks::default();
        let (count, callback) = counter();
        let kept = hooks.add(callback()).unwrap();
        let removed = hooks.add(callback()).unwrap();
        assert_ne!(kept, removed);
        hooks.remove(removed);
        hooks.fire();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        hooks.fire();
        assert_eq!(count.load(Ordering::SeqCst), 1, "fired twice");
    }

    #[test]
    fn a_callback_registered_after_the_client_left_runs_at_once() {
        let hooks = ClientLeftHooks::default();
        hooks.fire();
        let (count, callback) = counter();
        assert_eq!(hooks.add(callback()), None);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_callback_may_register_another_without_deadlock() {
        // On a thread of its own: a deadlock fails the test instead of hanging it.
        let (done, finished) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            register_from_a_callback();
            let _ = done.send(());
        });
        match finished.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(()) => {}
            // The worker panicked (an assertion): pass its panic on.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if let Err(panic) = worker.join() {
                    std::panic::resume_unwind(panic);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("fire() deadlocked on a callback that registers a hook")
            }
        }
    }

    fn register_from_a_callback() {
        let state = Arc::new(ConnectionState::new());
        let (count, callback) = counter();
        let inner_state = state.clone();
        let inner = std::sync::Mutex::new(Some(callback()));
        let _outer = ClientLeftHook::register(
            &state,
            Box::new(move || {
                // Runs at once: the hooks have fired.
                let callback = inner.lock().unwrap().take().unwrap();
                drop(ClientLeftHook::register(&inner_state, callback));
            }),
        );
        state.hooks().fire();
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
