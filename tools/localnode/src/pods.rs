//! Watches the pods bound to this node and hands each to its own worker (pod.rs).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use crate::Ctx;
use crate::pod::{Update, Worker};

struct Handle {
    tx: UnboundedSender<Update>,
    join: JoinHandle<()>,
}

#[derive(Default)]
struct Manager {
    workers: HashMap<String, Handle>,
    /// Pods whose worker finished (finalized); later events for them, such as the delete
    /// of an object with finalizers, must not start them again.
    finished: HashSet<String>,
    /// uids seen since the last watch (re)start, to notice pods deleted while disconnected.
    relisted: Option<HashSet<String>>,
}

impl Manager {
    fn reap(&mut self) {
        let done: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, h)| h.join.is_finished())
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in done {
            self.workers.remove(&uid);
            self.finished.insert(uid);
        }
    }

    fn apply(&mut self, ctx: &Arc<Ctx>, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        if let Some(seen) = self.relisted.as_mut() {
            seen.insert(uid.clone());
        }
        if self.finished.contains(&uid) {
            return;
        }
        match self.workers.get(&uid) {
            Some(h) => {
                let _ = h.tx.send(Update::Pod(Box::new(pod)));
            }
            None => {
                let (tx, join) = Worker::spawn(ctx.clone(), pod);
                self.workers.insert(uid, Handle { tx, join });
            }
        }
    }

    fn gone(&mut self, uid: &str) {
        if let Some(h) = self.workers.get(uid) {
            let _ = h.tx.send(Update::Gone);
        }
        self.finished.remove(uid);
    }

    fn handle(&mut self, ctx: &Arc<Ctx>, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => self.apply(ctx, pod),
            watcher::Event::InitDone => {
                let seen = self.relisted.take().unwrap_or_default();
                let missing: Vec<String> = self
                    .workers
                    .keys()
                    .chain(self.finished.iter())
                    .filter(|uid| !seen.contains(*uid))
                    .cloned()
                    .collect();
                for uid in missing {
                    self.gone(&uid);
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    self.gone(uid);
                }
            }
        }
    }

    async fn shutdown(self) {
        for h in self.workers.values() {
            let _ = h.tx.send(Update::Shutdown);
        }
        let joins = self.workers.into_values().map(|h| h.join);
        let all = futures::future::join_all(joins);
        if tokio::time::timeout(Duration::from_secs(8), all)
            .await
            .is_err()
        {
            tracing::warn!("pod workers did not stop in time");
        }
    }
}

/// Runs until `stop` resolves, then stops every pod's processes.
pub async fn run(ctx: Arc<Ctx>, stop: impl Future<Output = ()>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let stream = watcher(api, config).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut stop = std::pin::pin!(stop);
    let mut manager = Manager::default();
    loop {
        tokio::select! {
            () = &mut stop => break,
            event = stream.next() => match event {
                Some(Ok(event)) => manager.handle(&ctx, event),
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                None => break,
            },
        }
        manager.reap();
    }
    tracing::info!(pods = manager.workers.len(), "stopping pod processes");
    manager.shutdown().await;
}
