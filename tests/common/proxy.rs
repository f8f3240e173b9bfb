//! A TCP proxy on loopback that a test can cut, stall, slow down and
//! restore, placed between a store and its real server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways.
    Pass,
    /// Close every connection and refuse new ones at once.
    Cut,
    /// Accept connections but forward nothing.
    Stall,
    /// Forward requests at once, but hold every reply byte read from the
    /// server while this mode is on for this long before passing it on (or
    /// until the mode changes, whichever comes first).
    /// Longer than a store's operation timeout, it makes the server apply a
    /// write whose reply the client gives up on: an ambiguous timeout.
    DelayReplies(Duration),
}

pub struct Proxy {
    pub addr: SocketAddr,
    switch: Switch,
    accept: JoinHandle<()>,
}

/// Changes a [`Proxy`]'s mode; cheap to clone into tasks.
#[derive(Clone)]
pub struct Switch {
    mode: Arc<watch::Sender<Mode>>,
    pipes: Arc<Mutex<Vec<JoinHandle<()>>>>,
    armed: Arc<Mutex<Option<Armed>>>,
}

/// A mode to switch to when a request carrying `marker` goes out.
struct Armed {
    marker: Vec<u8>,
    mode: Mode,
    fired: oneshot::Sender<()>,
}

impl Switch {
    /// Switches to `mode` the moment a request containing `marker` passes,
    /// before it is forwarded (so its reply already meets the new mode);
    /// the receiver hears when that happened. Replaces an earlier arming.
    ///
    /// This is how a test makes one known write land with its reply lost:
    /// the marker is the write's payload, the mode
    /// [`Mode::DelayReplies`].
    pub fn arm(&self, marker: Vec<u8>, mode: Mode) -> oneshot::Receiver<()> {
        let (fired, heard) = oneshot::channel();
        if let Ok(mut armed) = self.armed.lock() {
            *armed = Some(Armed {
                marker,
                mode,
                fired,
            });
        }
        heard
    }

    /// Forgets an arming that has not fired.
    pub fn disarm(&self) {
        if let Ok(mut armed) = self.armed.lock() {
            *armed = None;
        }
    }

    /// Fires the arming if `seen` (the tail of the previous chunk, then
    /// this one) contains its marker.
    fn check(&self, seen: &[u8]) {
        let Ok(mut armed) = self.armed.lock() else {
            return;
        };
        let hit = armed.as_ref().is_some_and(|a| {
            !a.marker.is_empty() && seen.windows(a.marker.len()).any(|w| w == a.marker)
        });
        if let Some(a) = armed.take_if(|_| hit) {
            self.set(a.mode);
            let _ = a.fired.send(());
        }
    }

    fn marker_len(&self) -> usize {
        self.armed
            .lock()
            .ok()
            .and_then(|a| a.as_ref().map(|a| a.marker.len()))
            .unwrap_or(0)
    }

    pub fn set(&self, mode: Mode) {
        let _ = self.mode.send(mode);
        if mode == Mode::Cut {
            if let Ok(mut pipes) = self.pipes.lock() {
                for pipe in pipes.drain(..) {
                    pipe.abort();
                }
            }
        }
    }
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, watch) = watch::channel(Mode::Pass);
        let switch = Switch {
            mode: Arc::new(mode),
            pipes: Arc::default(),
            armed: Arc::default(),
        };
        let accept = {
            let switch = switch.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    if *watch.borrow() == Mode::Cut {
                        drop(client);
                        continue;
                    }
                    let watch = watch.clone();
                    let requests = switch.clone();
                    let pipe = tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::join!(
                            pump(cr, sw, watch.clone(), Direction::Request(requests)),
                            pump(sr, cw, watch, Direction::Reply)
                        );
                    });
                    if let Ok(mut pipes) = switch.pipes.lock() {
                        pipes.retain(|p| !p.is_finished());
                        pipes.push(pipe);
                    }
                }
            })
        };
        Proxy {
            addr,
            switch,
            accept,
        }
    }

    pub fn set(&self, mode: Mode) {
        self.switch.set(mode);
    }

    pub fn switch(&self) -> Switch {
        self.switch.clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set(Mode::Cut);
    }
}

enum Direction {
    /// Client to server, watched for an armed marker.
    Request(Switch),
    /// Server to client.
    Reply,
}

/// Copies one direction, holding bytes back while stalled and delaying
/// replies read while [`Mode::DelayReplies`] is on.
///
/// Reading and writing are split so that a delay is measured from when each
/// chunk arrived: replies to pipelined requests are each late by the delay,
/// not by the sum of the delays before them.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: watch::Receiver<Mode>,
    direction: Direction,
) {
    // Bounded, so a stalled pipe pushes back on its sender as before.
    let (chunks, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let read = {
        let mode = mode.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            // The end of the previous chunk, so a marker split across two
            // reads is still seen.
            let mut seen = Vec::new();
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if let Direction::Request(switch) = &direction {
                    let len = switch.marker_len();
                    if len > 0 {
                        seen.extend_from_slice(&buf[..n]);
                        switch.check(&seen);
                        let drop = seen.len().saturating_sub(len - 1);
                        seen.drain(..drop);
                    } else {
                        seen.clear();
                    }
                }
                let due = match (*mode.borrow(), &direction) {
                    (Mode::DelayReplies(delay), Direction::Reply) => Instant::now() + delay,
                    _ => Instant::now(),
                };
                if chunks.send((due, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    };
    let write = async move {
        let mut mode = mode;
        while let Some((due, chunk)) = queued.recv().await {
            // Switching the delay off releases what it held at once, so the
            // delay ends with its window instead of trailing it.
            while Instant::now() < due && matches!(*mode.borrow(), Mode::DelayReplies(_)) {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    changed = mode.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
            loop {
                let current = *mode.borrow_and_update();
                match current {
                    Mode::Pass | Mode::DelayReplies(_) => break,
                    Mode::Cut => return,
                    Mode::Stall => {
                        if mode.changed().await.is_err() {
                            return;
                        }
                    }
                }
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(read, write);
}
