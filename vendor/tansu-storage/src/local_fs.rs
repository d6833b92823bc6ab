// PATCHED (sagaflow): a `file://` storage for the dynostore engine, so a single broker keeps
// its topics, records, watermarks and group offsets across a restart.
//
// `object_store`'s `LocalFileSystem` lacks the two things dynostore needs: conditional
// updates (`PutMode::Update`, its optimistic concurrency on watermarks and metadata) and
// attributes (dynostore tags JSON objects with a content type). One broker process owns the
// directory, so a process-wide lock around "compare the e-tag, then write" gives the same
// guarantee as a conditional PUT; attributes are dropped (a file has no content type).

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::{
    CopyOptions, Error, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    Result, local::LocalFileSystem, path::Path,
};
use tokio::sync::Mutex;

#[derive(Debug)]
pub(crate) struct LocalConditional {
    inner: LocalFileSystem,
    writes: Mutex<()>,
}

impl LocalConditional {
    pub(crate) fn new(root: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|source| Error::Generic {
            store: "LocalConditional",
            source: Box::new(source),
        })?;
        Ok(Self {
            inner: LocalFileSystem::new_with_prefix(root)?,
            writes: Mutex::new(()),
        })
    }
}

impl fmt::Display for LocalConditional {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalConditional({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for LocalConditional {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        mut opts: PutOptions,
    ) -> Result<PutResult> {
        opts.attributes = Default::default();
        let _serialized = self.writes.lock().await;
        if let PutMode::Update(expected) = &opts.mode {
            let current = match self.inner.head(location).await {
                Ok(meta) => meta.e_tag,
                Err(Error::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            if current.is_none() || current != expected.e_tag {
                return Err(Error::Precondition {
                    path: location.to_string(),
                    source: format!("{current:?} does not match {:?}", expected.e_tag).into(),
                });
            }
            opts.mode = PutMode::Overwrite;
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        mut opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        opts.attributes = Default::default();
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let _serialized = self.writes.lock().await;
        self.inner.copy_opts(from, to, options).await
    }
}
