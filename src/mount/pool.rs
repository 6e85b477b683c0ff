//! The content pool: threads that run file-content requests, and the loop
//! that lets such a request wait for objects from peers without holding a
//! thread.
//!
//! Architecture invariant: a pool thread waits on local work only (disk,
//! sealing, backpressure). A network wait is a task on the runtime.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use crate::vault::{Loaded, Vault, VaultError};

type Task = Box<dyn FnOnce() + Send>;

/// A fixed set of threads fed by a bounded queue.
#[derive(Clone)]
pub(super) struct ContentPool {
    tx: SyncSender<Task>,
}

impl ContentPool {
    pub(super) fn new(threads: usize, queue: usize) -> Self {
        let (tx, rx) = sync_channel::<Task>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("drizzle-content-{i}"))
                .spawn(move || worker(&rx))
                .expect("spawn a content thread");
        }
        ContentPool { tx }
    }

    /// Queues a task, waiting while the queue is full.
    pub(super) fn submit(&self, task: impl FnOnce() + Send + 'static) {
        // The threads only stop when every sender is gone.
        let _ = self.tx.send(Box::new(task));
    }
}

fn worker(rx: &Mutex<Receiver<Task>>) {
    loop {
        let task = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            rx.recv()
        };
        match task {
            Ok(task) => task(),
            Err(_) => return,
        }
    }
}

/// An operation on the vault that may need objects from peers.
pub(super) type Op<T> = dyn Fn(&Vault, &mut Loaded) -> Result<T, VaultError> + Send + Sync;

/// Everything a content request needs to run, wait and run again.
pub(super) struct Request<T> {
    pub(super) vault: Arc<Vault>,
    pub(super) pool: ContentPool,
    pub(super) rt: tokio::runtime::Handle,
    pub(super) op: Box<Op<T>>,
    pub(super) reply: Box<dyn FnOnce(Result<T, VaultError>) + Send>,
}

impl<T: Send + 'static> Request<T> {
    /// Runs the request on the pool; see [`step`].
    pub(super) fn start(self) {
        let pool = self.pool.clone();
        pool.submit(move || step(self, Loaded::default()));
    }
}

/// Runs the operation once on this (pool) thread. If it has to wait for an
/// object from peers, waits for it in a task on the runtime and queues the
/// next attempt on the pool; otherwise replies.
fn step<T: Send + 'static>(req: Request<T>, mut loaded: Loaded) {
    match (req.op)(&req.vault, &mut loaded) {
        Err(VaultError::Wait(wait)) => {
            let rt = req.rt.clone();
            rt.spawn(async move {
                match wait.ready(&mut loaded).await {
                    Ok(()) => {
                        // Queueing may wait for room: not on a runtime worker.
                        let pool = req.pool.clone();
                        tokio::task::spawn_blocking(move || pool.submit(move || step(req, loaded)));
                    }
                    Err(e) => (req.reply)(Err(e)),
                }
            });
        }
        r => (req.reply)(r),
    }
}
