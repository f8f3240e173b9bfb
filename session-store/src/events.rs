//! Session lifecycle events for audit logs and metrics, delivered off the
//! request path (see [`SessionEvents`]).

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

use crate::id::SessionId;

/// Something that happened to a session. Ids are store ids (safe to log),
/// never tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// A new session was stored (it received data for the first time).
    Created {
        /// The new session.
        id: SessionId,
        /// The user it is bound to, if any.
        user_key: Option<String>,
    },
    /// A session got a new id (a login): `old_id` is gone, `new_id` holds
    /// its data.
    Regenerated {
        /// The retired id.
        old_id: SessionId,
        /// The id that replaced it.
        new_id: SessionId,
        /// The user it is bound to, if any.
        user_key: Option<String>,
    },
    /// A session was destroyed by its own request (a logout).
    Destroyed {
        /// The destroyed session.
        id: SessionId,
        /// The user it was bound to, if any.
        user_key: Option<String>,
    },
    /// A session was deleted by [`SessionManager::revoke_user`](crate::SessionManager::revoke_user)
    /// or by the [`max_sessions_per_user`](crate::SessionConfig::max_sessions_per_user) cap.
    Revoked {
        /// The revoked session.
        id: SessionId,
        /// The user it was bound to.
        user_key: String,
    },
    /// An expired session was deleted by [`SessionManager::flush`](crate::SessionManager::flush),
    /// for stores that report what they flush
    /// ([`SessionInterface::flush_reporting`](crate::SessionInterface::flush_reporting)).
    Expired {
        /// The expired session.
        id: SessionId,
        /// The user it was bound to, if any.
        user_key: Option<String>,
    },
}

/// Receives [`SessionEvent`]s. Set it with
/// [`SessionConfig::events`](crate::SessionConfig::events).
///
/// Events are queued (up to [`EVENT_QUEUE`]) and handed to `on_event` one
/// at a time by a thread of the hook's own, never on the request's path nor
/// on an async runtime (a blocking hook is fine, and events keep flowing
/// whichever runtimes come and go): a slow hook delays only later events, a
/// full queue drops events (counted, see [`EventHook::dropped`]) instead of
/// blocking a request, and a hook that panics loses that one event, nothing
/// else.
pub trait SessionEvents: Send + Sync + 'static {
    /// Called once per event, in the order they happened on this process.
    fn on_event(&self, event: SessionEvent);
}

impl<F: Fn(SessionEvent) + Send + Sync + 'static> SessionEvents for F {
    fn on_event(&self, event: SessionEvent) {
        self(event)
    }
}

/// How many events may wait for the hook before new ones are dropped.
pub const EVENT_QUEUE: usize = 4096;

/// A [`SessionEvents`] hook with its queue; cheap to clone (shared).
#[derive(Clone)]
pub struct EventHook {
    inner: Arc<HookInner>,
}

struct HookInner {
    hook: Arc<dyn SessionEvents>,
    /// The delivery thread's queue, started with the first event.
    queue: OnceLock<SyncSender<SessionEvent>>,
    dropped: AtomicU64,
}

impl fmt::Debug for EventHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventHook")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl EventHook {
    /// Wraps `hook`.
    pub fn new(hook: impl SessionEvents) -> Self {
        EventHook {
            inner: Arc::new(HookInner {
                hook: Arc::new(hook),
                queue: OnceLock::new(),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// How many events were dropped because the queue was full (or the
    /// delivery thread could not be started).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Queues `event` without waiting.
    pub(crate) fn emit(&self, event: SessionEvent) {
        let sent = match self.queue() {
            Some(queue) => queue.try_send(event),
            None => Err(TrySendError::Disconnected(event)),
        };
        if sent.is_err() {
            let dropped = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "session events dropped (queue full or no delivery thread)"
                );
            }
        }
    }

    fn queue(&self) -> Option<&SyncSender<SessionEvent>> {
        if let Some(queue) = self.inner.queue.get() {
            return Some(queue);
        }
        let (sender, receiver) = mpsc::sync_channel::<SessionEvent>(EVENT_QUEUE);
        let hook = self.inner.hook.clone();
        let started = std::thread::Builder::new()
            .name("session-events".into())
            .spawn(move || {
                // Ends when every EventHook clone is gone.
                while let Ok(event) = receiver.recv() {
                    if std::panic::catch_unwind(AssertUnwindSafe(|| hook.on_event(event))).is_err()
                    {
                        tracing::warn!("the session event hook panicked; the event is lost");
                    }
                }
            });
        match started {
            // Two first events at once may start two threads: the one whose
            // sender is not kept ends at once.
            Ok(_) => Some(self.inner.queue.get_or_init(|| sender)),
            Err(e) => {
                tracing::warn!(error = %e, "could not start the session event thread");
                None
            }
        }
    }
}
