//! The methods of a framework's per-request session handle.

/// Writes the public methods of a framework layer's per-request session
/// handle (`id`, `is_new`, `get`, `insert`, `remove`, `modify`, `flash`,
/// `get_flash`, `regenerate`, `destroy`, `set_user`, `clear_user`,
/// `user_key`), each a call of the same-named [`ActiveSession`] method, so
/// that every framework's handle offers the same calls with the same
/// meaning.
///
/// Invoke it inside the handle's `impl` block, beside a method
/// `fn with<R>(&self, f: impl FnOnce(&mut ActiveSession) -> R) -> Result<R, Error>`
/// that runs `f` on the request's session and fails once the request has
/// committed it. The docs written here link to `ActiveSession` by that
/// name, so the calling module imports it as such (`with` names it
/// anyway). The argument is the path of the layer's switch that keeps a
/// failed response's changes, for the docs to link to.
///
/// ```
/// use session_store::{ActiveSession, Error};
/// use std::sync::{Arc, Mutex};
///
/// /// A framework layer's switch.
/// pub struct MyLayer;
/// impl MyLayer {
///     /// Whether a 5xx response commits the session.
///     pub fn save_on_server_error(self, _save: bool) -> Self {
///         self
///     }
/// }
///
/// /// The session of the current request.
/// pub struct Session(Arc<Mutex<Option<ActiveSession>>>);
///
/// impl Session {
///     fn with<R>(&self, f: impl FnOnce(&mut ActiveSession) -> R) -> Result<R, Error> {
///         let mut slot = self.0.lock().map_err(|_| Error::Config("poisoned".into()))?;
///         match slot.as_mut() {
///             Some(active) => Ok(f(active)),
///             None => Err(Error::Config("the request has ended".into())),
///         }
///     }
///
///     session_store::session_handle_methods!("MyLayer::save_on_server_error");
/// }
///
/// let ended = Session(Arc::new(Mutex::new(None)));
/// assert!(ended.insert("k", &1).is_err());
/// assert_eq!(ended.id(), None);
/// ```
///
/// [`ActiveSession`]: crate::ActiveSession
#[macro_export]
macro_rules! session_handle_methods {
    ($save_on_server_error:literal) => {
        /// The store id (a hash of the cookie token; safe to log); `None`
        /// once the request has ended.
        pub fn id(&self) -> ::core::option::Option<$crate::SessionId> {
            self.with(|s| s.id()).ok()
        }

        /// Whether this request started a new session.
        pub fn is_new(&self) -> bool {
            self.with(|s| s.is_new()).unwrap_or(false)
        }

        /// Reads `key` as a `T`; `Ok(None)` when absent.
        pub fn get<T: $crate::__private::serde::de::DeserializeOwned>(
            &self,
            key: &str,
        ) -> ::core::result::Result<::core::option::Option<T>, $crate::Error> {
            self.with(|s| s.get(key))?
        }

        /// Stores `value` under `key`.
        pub fn insert<T: $crate::__private::serde::Serialize + ?Sized>(
            &self,
            key: &str,
            value: &T,
        ) -> ::core::result::Result<(), $crate::Error> {
            self.with(|s| s.insert(key, value))?
        }

        /// Removes `key`; returns whether it was there.
        pub fn remove(&self, key: &str) -> bool {
            self.with(|s| s.remove(key)).unwrap_or(false)
        }

        /// Read-modify-write of one value that stays exact under concurrent
        /// requests (see [`ActiveSession::modify`]).
        pub fn modify<T, F>(&self, key: &str, f: F) -> ::core::result::Result<T, $crate::Error>
        where
            T: $crate::__private::serde::Serialize + $crate::__private::serde::de::DeserializeOwned,
            F: Fn(::core::option::Option<T>) -> T + Send + Sync + 'static,
        {
            self.with(|s| s.modify(key, f))?
        }

        /// Sets a flash value for the next request.
        pub fn flash<T: $crate::__private::serde::Serialize + ?Sized>(
            &self,
            key: &str,
            value: &T,
        ) -> ::core::result::Result<(), $crate::Error> {
            self.with(|s| s.flash(key, value))?
        }

        /// A flash value set by an earlier request. Reading it consumes it
        /// when this request commits; flash values not read stay for a
        /// later request, and so does one read by a request that commits
        /// nothing (its handler panicked, or it answered 5xx with
        #[doc = concat!("[`", $save_on_server_error, "`]`(false)`).")]
        pub fn get_flash<T: $crate::__private::serde::de::DeserializeOwned>(
            &self,
            key: &str,
        ) -> ::core::result::Result<::core::option::Option<T>, $crate::Error> {
            self.with(|s| s.get_flash(key))?
        }

        /// New id, data kept, old record deleted: call after login.
        pub fn regenerate(&self) -> ::core::result::Result<(), $crate::Error> {
            self.with(|s| s.regenerate())?
        }

        /// Deletes the session and expires its cookie: call on logout.
        pub fn destroy(&self) -> ::core::result::Result<(), $crate::Error> {
            self.with(|s| s.destroy())
        }

        /// Binds the session to an application user (a user id, never a
        /// password) with small metadata such as a device label, so that
        /// `SessionManager::sessions_of` lists it and `revoke_user` can end
        /// it (see [`ActiveSession::set_user`]). Call it at login, with
        /// [`regenerate`](Self::regenerate).
        pub fn set_user(
            &self,
            user_key: &str,
            metadata: ::std::collections::BTreeMap<String, String>,
        ) -> ::core::result::Result<(), $crate::Error> {
            self.with(|s| s.set_user(user_key, metadata))?
        }

        /// Unbinds the session from its user (it stays, anonymous).
        pub fn clear_user(&self) -> ::core::result::Result<(), $crate::Error> {
            self.with(|s| s.clear_user())
        }

        /// The user this session is bound to, if any.
        pub fn user_key(&self) -> ::core::option::Option<String> {
            self.with(|s| s.user_key().map(str::to_owned))
                .ok()
                .flatten()
        }
    };
}
