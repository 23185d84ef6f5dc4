//! Slim watch caches: a watch whose objects are projected, as they arrive, onto the few
//! fields the pool controller decides on. Memory grows with the number of objects, not
//! with their size (a WorkItem's payload or a Pod's full spec is never kept).
//!
//! A cache is `synced` after its first complete list; until then the controller does not
//! write, so that an empty cache is never mistaken for "no pods" (which would create a
//! second set of agents after every restart).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// Namespace and name of a cached object.
pub type Key = (String, String);

/// A concurrent map from an object's key to its projection, fed by one watch.
pub struct SlimCache<V> {
    inner: Arc<RwLock<Inner<V>>>,
}

impl<V> Clone for SlimCache<V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<V> {
    items: HashMap<Key, V>,
    /// Objects of a relist in progress; swapped in at `InitDone` so readers never see a
    /// half-listed cache.
    relist: Option<HashMap<Key, V>>,
    synced: bool,
}

impl<V> Default for SlimCache<V> {
    fn default() -> Self {
        Self {
            inner: Arc::new(RwLock::new(Inner {
                items: HashMap::new(),
                relist: None,
                synced: false,
            })),
        }
    }
}

fn key_of<K: Resource>(obj: &K) -> Key {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

impl<V: Clone> SlimCache<V> {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<V>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner<V>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// True once the first complete list has been applied.
    pub fn synced(&self) -> bool {
        self.read().synced
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<V> {
        self.read()
            .items
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every cached value `f` maps to `Some`.
    pub fn collect<T>(&self, mut f: impl FnMut(&Key, &V) -> Option<T>) -> Vec<T> {
        self.read()
            .items
            .iter()
            .filter_map(|(k, v)| f(k, v))
            .collect()
    }

    /// Applies one watch event. `project` returning `None` means "not of interest":
    /// the object is dropped from the cache.
    pub fn apply<K: Resource>(&self, event: Event<K>, project: &impl Fn(&K) -> Option<V>) {
        let mut inner = self.write();
        match event {
            Event::Init => inner.relist = Some(HashMap::new()),
            Event::InitApply(obj) => {
                let key = key_of(&obj);
                if let (Some(relist), Some(v)) = (inner.relist.as_mut(), project(&obj)) {
                    relist.insert(key, v);
                }
            }
            Event::InitDone => {
                if let Some(relist) = inner.relist.take() {
                    inner.items = relist;
                }
                inner.synced = true;
            }
            Event::Apply(obj) => {
                let key = key_of(&obj);
                match project(&obj) {
                    Some(v) => inner.items.insert(key, v),
                    None => inner.items.remove(&key),
                };
            }
            Event::Delete(obj) => {
                inner.items.remove(&key_of(&obj));
            }
        }
    }

    /// Feeds the cache from a watch until the process stops. Watch errors are retried
    /// with backoff; the cache keeps serving its last state meanwhile.
    pub async fn run<K>(
        self,
        api: Api<K>,
        config: watcher::Config,
        project: impl Fn(&K) -> Option<V>,
    ) where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Default,
    {
        let kind = K::kind(&Default::default()).to_string();
        let mut stream = watcher::watcher(api, config).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => self.apply(event, &project),
                Err(err) => tracing::warn!(%err, kind, "pool controller watch failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(name: &str, value: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "data": {"v": value}
        }))
        .unwrap()
    }

    fn project(cm: &ConfigMap) -> Option<String> {
        let v = cm.data.as_ref()?.get("v")?.clone();
        (v != "skip").then_some(v)
    }

    #[test]
    fn relist_replaces_the_contents_atomically_and_marks_synced() {
        let cache = SlimCache::<String>::new();
        assert!(!cache.synced());
        cache.apply(Event::Init, &project);
        cache.apply(Event::InitApply(cm("a", "1")), &project);
        assert_eq!(cache.get("ns", "a"), None, "not visible before InitDone");
        cache.apply(Event::InitDone, &project);
        assert!(cache.synced());
        assert_eq!(cache.get("ns", "a").as_deref(), Some("1"));

        // A second relist drops objects that disappeared while the watch was down.
        cache.apply(Event::Init, &project);
        cache.apply(Event::InitApply(cm("b", "2")), &project);
        assert_eq!(
            cache.get("ns", "a").as_deref(),
            Some("1"),
            "old view kept meanwhile"
        );
        cache.apply(Event::InitDone, &project);
        assert_eq!(cache.get("ns", "a"), None);
        assert_eq!(cache.get("ns", "b").as_deref(), Some("2"));
    }

    #[test]
    fn apply_and_delete_update_the_projection() {
        let cache = SlimCache::<String>::new();
        cache.apply(Event::Apply(cm("a", "1")), &project);
        cache.apply(Event::Apply(cm("a", "2")), &project);
        assert_eq!(cache.get("ns", "a").as_deref(), Some("2"));
        cache.apply(Event::Apply(cm("a", "skip")), &project);
        assert_eq!(
            cache.get("ns", "a"),
            None,
            "projection None drops the object"
        );
        cache.apply(Event::Apply(cm("b", "3")), &project);
        cache.apply(Event::Delete(cm("b", "3")), &project);
        assert_eq!(cache.get("ns", "b"), None);
        assert!(cache.collect(|_, v| Some(v.clone())).is_empty());
    }
}
