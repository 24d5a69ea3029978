//! PostgreSQL as a store's system of record (`engine/CLUSTER.md`, "The write path"): the
//! writer's [`Writer`] on a thread of its own, behind the store's [`SystemOfRecord`] hook, so
//! that each group-commit batch becomes one PostgreSQL transaction before the store logs it.
//! Owns the thread and its runtime; never retries a batch (a failed one makes the store stop
//! writing, and the node steps down).

use std::sync::{Arc, Mutex, mpsc};

use super::ClusterError;
use super::writer::{Head, Writer};
use crate::registry::Mirror;
use crate::store::{Change, SystemOfRecord};

struct Job {
    batch: Vec<(Change, Vec<crate::registry::MirrorOp>)>,
    reply: mpsc::Sender<Result<Head, ClusterError>>,
}

/// The writer behind a store: see the module documentation.
pub struct PgRecord {
    jobs: Mutex<mpsc::Sender<Job>>,
    mirror: Mirror,
    /// The head after the last commit (or the takeover).
    head: Arc<Mutex<Head>>,
}

impl PgRecord {
    /// Runs `writer` on a new thread with a runtime of its own; `mirror` computes each
    /// change's mirror rows from the registry whose store this backs.
    pub fn spawn(writer: Writer, mirror: Mirror) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let head = Arc::new(Mutex::new(writer.head()));
        let shown = head.clone();
        std::thread::Builder::new()
            .name("mykey-cluster-writer".into())
            .spawn(move || {
                let mut writer = writer;
                for job in rx {
                    let r = rt.block_on(writer.commit(&job.batch));
                    match &r {
                        Ok(h) => *shown.lock().unwrap_or_else(|e| e.into_inner()) = *h,
                        Err(e) => tracing::error!(op = "cluster commit", error = %e, "the batch was not committed; this node stops writing"),
                    }
                    let _ = job.reply.send(r);
                }
            })?;
        Ok(Self {
            jobs: Mutex::new(jobs),
            mirror,
            head,
        })
    }

    /// The head after the last batch PostgreSQL committed (the store may not have logged it
    /// yet).
    pub fn head(&self) -> Head {
        *self.head.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SystemOfRecord for PgRecord {
    fn commit(&self, changes: &[Change]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let mut batch = Vec::with_capacity(changes.len());
        for c in changes {
            batch.push((c.clone(), self.mirror.ops(c)?));
        }
        let (reply, answer) = mpsc::channel();
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Job { batch, reply })
            .map_err(|_| "the cluster writer thread has stopped")?;
        answer
            .recv()
            .map_err(|_| "the cluster writer thread stopped during the commit")??;
        Ok(())
    }
}
