//! The change log: what a request did to its session, kept so it can be
//! re-applied on a fresh copy after another request saved first.

use std::sync::Arc;

use crate::error::Result;
use crate::session::{Session, UserBinding};

pub(crate) type Modifier = Arc<dyn Fn(Option<&[u8]>) -> Result<Vec<u8>> + Send + Sync>;

/// One change a request made.
#[derive(Clone)]
pub(crate) enum Change {
    Set(String, Vec<u8>),
    Remove(String),
    Modify(String, Modifier),
    Flash(String, Vec<u8>),
    /// A flash value this request read, by value: it is removed only while
    /// the stored value is still the one read, so a newer flash set by
    /// another request under the same key survives until someone reads it.
    ConsumeFlash(String, Vec<u8>),
    /// Binds the session to a user (or unbinds it).
    SetUser(Option<UserBinding>),
}

impl Change {
    pub(crate) fn apply(&self, session: &mut Session) -> Result<()> {
        match self {
            Change::Set(key, bytes) => session.insert_bytes(key.clone(), bytes.clone()),
            Change::Remove(key) => {
                session.remove(key);
            }
            Change::Modify(key, modify) => {
                let next = modify(session.value_bytes(key))?;
                session.insert_bytes(key.clone(), next);
            }
            Change::Flash(key, bytes) => session.insert_flash_bytes(key.clone(), bytes.clone()),
            Change::ConsumeFlash(key, read) => {
                if session.flash_bytes(key) == Some(read.as_slice()) {
                    session.remove_flash(key);
                }
            }
            Change::SetUser(user) => session.set_user(user.clone()),
        }
        Ok(())
    }
}

/// Applies `changes` to `session`: first the flash values this request
/// read (reading came before anything the request did), then the rest in
/// order.
pub(crate) fn replay(changes: &[Change], session: &mut Session) -> Result<()> {
    let (reads, writes): (Vec<&Change>, Vec<&Change>) = changes
        .iter()
        .partition(|change| matches!(change, Change::ConsumeFlash(..)));
    reads
        .into_iter()
        .chain(writes)
        .try_for_each(|change| change.apply(session))
}
