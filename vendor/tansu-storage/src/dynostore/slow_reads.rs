// PATCHED (sagaflow, vendor/README.md): new file, test support for patches 16 and 17.

//! An object store whose reads wait, after reading, until released: the interleaving of a
//! `file://` read (it yields to the blocking pool) with a put that completes meanwhile.

use std::{
    fmt::Display,
    sync::atomic::{AtomicBool, Ordering},
};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, memory::InMemory, path::Path,
};
use tokio::sync::Notify;

#[derive(Debug)]
pub(crate) struct SlowReads {
    inner: InMemory,
    /// Notified once a held read has read.
    pub(crate) read: Notify,
    /// Lets one held read go.
    pub(crate) release: Notify,
    /// Whether reads are held (from the start); reads made while it is off go straight on.
    holding: AtomicBool,
}

impl Default for SlowReads {
    fn default() -> Self {
        Self {
            inner: InMemory::new(),
            read: Notify::new(),
            release: Notify::new(),
            holding: AtomicBool::new(true),
        }
    }
}

impl SlowReads {
    /// The store without the hold, to set up or inspect what a test reads.
    pub(crate) fn inner(&self) -> &InMemory {
        &self.inner
    }

    /// Reads from now on go straight on (those already held still wait for `release`).
    pub(crate) fn stop_holding(&self) {
        self.holding.store(false, Ordering::Release);
    }
}

impl Display for SlowReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlowReads").finish()
    }
}

#[async_trait]
impl ObjectStore for SlowReads {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult, object_store::Error> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>, object_store::Error> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> Result<GetResult, object_store::Error> {
        let result = self.inner.get_opts(location, options).await;
        if self.holding.load(Ordering::Acquire) {
            self.read.notify_one();
            self.release.notified().await;
        }
        result
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path, object_store::Error>>,
    ) -> BoxStream<'static, Result<Path, object_store::Error>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> BoxStream<'static, Result<ObjectMeta, object_store::Error>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> Result<ListResult, object_store::Error> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        opts: CopyOptions,
    ) -> Result<(), object_store::Error> {
        self.inner.copy_opts(from, to, opts).await
    }
}
