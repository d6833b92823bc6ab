// PATCHED (sagaflow, vendor/README.md): new file, not in tansu 0.6.0.
//
// Wakes a waiting fetch when a partition it is fetching is produced to, and only then.
//
// A fetch that found no records registers a `ProduceWatch` (one `Notify` per fetch request)
// under each partition it reads, *before* reading it; `produced(topic, partition)` (called by
// dynostore's `produce` once the batch is stored and the high watermark advanced) wakes the
// watches registered under that partition with `notify_one`, which stores a permit when the
// fetch is not waiting yet. So a produce that lands between a fetch's read and its wait is not
// missed (the wait returns at once and the fetch reads again), and a produce to another
// partition wakes nobody. The registration is removed when the watch is dropped (the fetch
// request is answered). One broker process owns the storage (as for `file://`), so an
// in-process registry sees every produce.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError},
};

use tokio::sync::Notify;

type Registry = HashMap<String, HashMap<i32, Vec<Arc<Notify>>>>;

static WATCHES: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

fn registry() -> MutexGuard<'static, Registry> {
    WATCHES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A batch was stored in `topic`/`partition`: wake the fetches watching it.
pub(crate) fn produced(topic: &str, partition: i32) {
    if let Some(watches) = registry()
        .get(topic)
        .and_then(|partitions| partitions.get(&partition))
    {
        for watch in watches {
            watch.notify_one();
        }
    }
}

/// The partitions one fetch request reads, and the `Notify` that `produced` wakes.
#[derive(Debug, Default)]
pub(crate) struct ProduceWatch {
    notify: Arc<Notify>,
    watched: HashSet<(String, i32)>,
}

impl ProduceWatch {
    /// Watch `topic`/`partition` from now on. Call it before reading the partition, so that a
    /// produce after the read is seen by `produced().await`.
    pub(crate) fn watch(&mut self, topic: &str, partition: i32) {
        if self.watched.insert((topic.to_owned(), partition)) {
            registry()
                .entry(topic.to_owned())
                .or_default()
                .entry(partition)
                .or_default()
                .push(Arc::clone(&self.notify));
        }
    }

    /// Returns once a watched partition has been produced to since it was watched or since
    /// the previous return (at once, if that happened while nobody was waiting).
    pub(crate) async fn produced(&self) {
        self.notify.notified().await
    }
}

impl Drop for ProduceWatch {
    fn drop(&mut self) {
        if self.watched.is_empty() {
            return;
        }

        let mut registry = registry();
        for (topic, partition) in self.watched.drain() {
            let Some(partitions) = registry.get_mut(&topic) else {
                continue;
            };

            if let Some(watches) = partitions.get_mut(&partition) {
                watches.retain(|watch| !Arc::ptr_eq(watch, &self.notify));
                if watches.is_empty() {
                    _ = partitions.remove(&partition);
                }
            }

            if partitions.is_empty() {
                _ = registry.remove(&topic);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::timeout;

    use super::*;

    const WAIT: Duration = Duration::from_millis(100);

    fn registered(topic: &str) -> usize {
        registry()
            .get(topic)
            .map_or(0, |partitions| partitions.values().map(Vec::len).sum())
    }

    #[tokio::test]
    async fn a_produce_wakes_only_the_fetches_of_its_partition() {
        let topic = "produced-wakes-only-its-partition";

        let mut zero = ProduceWatch::default();
        zero.watch(topic, 0);
        let mut one = ProduceWatch::default();
        one.watch(topic, 1);
        let mut other_topic = ProduceWatch::default();
        other_topic.watch("produced-another-topic", 0);

        // Before anyone waits: the permit is kept, as for a produce landing between a
        // fetch's read and its wait.
        produced(topic, 0);

        assert!(timeout(WAIT, zero.produced()).await.is_ok());
        assert!(timeout(WAIT, one.produced()).await.is_err());
        assert!(timeout(WAIT, other_topic.produced()).await.is_err());

        // One produce, one wake-up.
        assert!(timeout(WAIT, zero.produced()).await.is_err());
    }

    #[tokio::test]
    async fn a_waiting_fetch_is_woken_by_a_produce_to_any_of_its_partitions() {
        let topic = "produced-wakes-a-waiting-fetch";

        let mut watch = ProduceWatch::default();
        watch.watch(topic, 0);
        watch.watch(topic, 1);
        watch.watch(topic, 1);
        assert_eq!(2, registered(topic));

        let waiting = tokio::spawn(async move {
            timeout(Duration::from_secs(5), watch.produced())
                .await
                .is_ok()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        produced(topic, 2);
        produced(topic, 1);

        assert!(waiting.await.unwrap());
        assert_eq!(0, registered(topic), "dropped with the fetch");
    }

    #[test]
    fn a_dropped_watch_leaves_the_others_registered() {
        let topic = "produced-drop";

        let mut first = ProduceWatch::default();
        first.watch(topic, 0);
        let mut second = ProduceWatch::default();
        second.watch(topic, 0);
        assert_eq!(2, registered(topic));

        drop(first);
        assert_eq!(1, registered(topic));
        drop(second);
        assert!(!registry().contains_key(topic));
    }
}
