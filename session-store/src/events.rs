//! Session lifecycle events for audit logs and metrics, delivered off the
//! request path (see [`SessionEvents`]).

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;

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
/// at a time by a background task, never on the request's path: a slow hook
/// delays only later events, a full queue drops events (counted, see
/// [`EventHook::dropped`]) instead of blocking a request, and a hook that
/// panics loses that one event, nothing else.
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
    /// Started on the first event, on the runtime that sent it.
    queue: OnceLock<mpsc::Sender<SessionEvent>>,
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

    /// How many events were dropped because the queue was full (or no
    /// tokio runtime was running to deliver them).
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Queues `event` without waiting.
    pub(crate) fn emit(&self, event: SessionEvent) {
        let Some(queue) = self.queue() else {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if queue.try_send(event).is_err() {
            let dropped = self.inner.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "session event queue is full; events dropped");
            }
        }
    }

    fn queue(&self) -> Option<&mpsc::Sender<SessionEvent>> {
        if let Some(queue) = self.inner.queue.get() {
            return Some(queue);
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(self.inner.queue.get_or_init(|| {
            let (sender, mut receiver) = mpsc::channel::<SessionEvent>(EVENT_QUEUE);
            let hook = self.inner.hook.clone();
            runtime.spawn(async move {
                while let Some(event) = receiver.recv().await {
                    let hook = hook.clone();
                    // A slow hook runs off the async workers; a panicking
                    // one loses its event only.
                    let delivered = tokio::task::spawn_blocking(move || {
                        std::panic::catch_unwind(AssertUnwindSafe(|| hook.on_event(event)))
                    })
                    .await;
                    if !matches!(delivered, Ok(Ok(()))) {
                        tracing::warn!("the session event hook panicked; the event is lost");
                    }
                }
            });
            sender
        }))
    }
}
