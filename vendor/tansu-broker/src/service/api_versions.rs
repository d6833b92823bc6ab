// PATCHED (sagaflow, vendor/README.md): new file, not in tansu 0.6.0.
//
// tansu-service 0.6.0 (`ApiVersionsService`) answers every ApiVersions request with the four
// top-level tagged fields of v3+ set to their *default* values: `SupportedFeatures` (tag 0,
// empty), `FinalizedFeaturesEpoch` (tag 1, -1), `FinalizedFeatures` (tag 2, empty) and
// `ZkMigrationReady` (tag 3, false). Kafka omits a tagged field that holds its default, so a
// broker without features sends no tagged field at all.
//
// librdkafka before 2.2.0 (Debian 12's kcat 1.7.1 uses 2.0.2) skips each tagged field one byte
// short (`rd_kafka_buf_skip_tags` in src/rdkafka_buf.h: `rd_kafka_buf_skip(rkbuf, _taglen - 1)`,
// fixed by confluentinc/librdkafka#4278), so it reads the rest of tansu's tags out of step: the
// epoch -1 (`ff` x 8) is taken for a tag length of 2^57 + 2^56 - 1 and the ApiVersions request
// fails with "Read underflow: probably due to broker version < 0.10". With the defaults left
// out, the tagged-field section is a single `00` (no tags) and every client reads it.

use rama::{Context, Service};
use tansu_sans_io::{ApiVersionsResponse, Body, Frame};

/// Wraps the frame router: drops the ApiVersions response's tagged fields that hold their
/// default value, as Kafka does (see the top of this file).
#[derive(Clone, Debug, Default)]
pub struct ApiVersionsCompat<S> {
    inner: S,
}

impl<S> ApiVersionsCompat<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

/// Sets to `None` (not encoded) each tagged field of `response` that holds its default value.
pub fn omit_default_tagged_fields(response: &mut ApiVersionsResponse) {
    if response
        .supported_features
        .as_ref()
        .is_some_and(|features| features.is_empty())
    {
        response.supported_features = None;
    }

    if response.finalized_features_epoch == Some(-1) {
        response.finalized_features_epoch = None;
    }

    if response
        .finalized_features
        .as_ref()
        .is_some_and(|features| features.is_empty())
    {
        response.finalized_features = None;
    }

    if response.zk_migration_ready == Some(false) {
        response.zk_migration_ready = None;
    }
}

impl<State, S> Service<State, Frame> for ApiVersionsCompat<S>
where
    S: Service<State, Frame, Response = Frame>,
    State: Clone + Send + Sync + 'static,
{
    type Response = Frame;
    type Error = S::Error;

    async fn serve(&self, ctx: Context<State>, req: Frame) -> Result<Self::Response, Self::Error> {
        self.inner.serve(ctx, req).await.map(|mut frame| {
            if let Body::ApiVersionsResponse(ref mut response) = frame.body {
                omit_default_tagged_fields(response);
            }

            frame
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tansu_sans_io::{ApiKey as _, ApiVersionsRequest, Header};
    use tansu_service::{Error, FrameRouteService};

    fn uvarint(bytes: &[u8], at: &mut usize) -> u64 {
        let mut value = 0;
        let mut shift = 0;

        loop {
            let byte = bytes[*at];
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            shift += 7;

            if byte & 0x80 == 0 {
                return value;
            }
        }
    }

    /// The encoded ApiVersions response of the real tansu-service router (the one the broker
    /// runs), with or without this wrapper, to an ApiVersions request of `api_version`.
    async fn encoded(api_version: i16, compat: bool) -> Vec<u8> {
        let route = FrameRouteService::<(), Error>::builder().build().unwrap();

        let request = Frame {
            size: 0,
            header: Header::Request {
                api_key: ApiVersionsRequest::KEY,
                api_version,
                correlation_id: 7,
                client_id: Some("rdkafka".into()),
            },
            body: ApiVersionsRequest::default()
                .client_software_name(Some("librdkafka".into()))
                .client_software_version(Some("2.0.2".into()))
                .into(),
        };

        let response = if compat {
            ApiVersionsCompat::new(route)
                .serve(Context::default(), request)
                .await
        } else {
            route.serve(Context::default(), request).await
        }
        .unwrap();

        Frame::response(
            Header::Response { correlation_id: 7 },
            response.body,
            ApiVersionsRequest::KEY,
            api_version,
        )
        .unwrap()
        .to_vec()
    }

    /// The bytes after `throttle_time_ms` of an encoded v3 response: its top-level tags.
    fn top_level_tags(encoded: &[u8]) -> &[u8] {
        // size (4), correlation id (4), error code (2)
        let mut at = 10;
        let api_keys = uvarint(encoded, &mut at) - 1;

        for _ in 0..api_keys {
            // api key, min version, max version
            at += 6;
            assert_eq!(0, uvarint(encoded, &mut at), "ApiVersion struct tags");
        }

        // throttle time
        at += 4;
        &encoded[at..]
    }

    /// librdkafka 2.0.2's `rd_kafka_buf_skip_tags`: skips `len - 1` bytes of each tag.
    fn librdkafka_2_0_2_skip_tags(tags: &[u8]) -> Result<(), String> {
        let mut at = 0;
        let count = uvarint(tags, &mut at);

        for _ in 0..count {
            let _tag = uvarint(tags, &mut at);
            let len = uvarint(tags, &mut at);

            if len > 1 {
                let skip = len - 1;

                if skip > (tags.len() - at) as u64 {
                    return Err(format!(
                        "expected {skip} bytes > {} remaining",
                        tags.len() - at
                    ));
                }

                at += skip as usize;
            }
        }

        Ok(())
    }

    #[tokio::test]
    async fn tansu_service_sends_default_tagged_fields_that_librdkafka_2_0_2_misreads() {
        let encoded = encoded(3, false).await;
        let tags = top_level_tags(&encoded);

        assert_eq!(
            &[
                4, // tagged fields
                0, 1, 1, // supported features: []
                1, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // epoch: -1
                2, 1, 1, // finalized features: []
                3, 1, 0, // zk migration ready: false
            ][..],
            tags
        );
        assert!(librdkafka_2_0_2_skip_tags(tags).is_err());
    }

    #[tokio::test]
    async fn api_versions_v3_response_omits_default_tagged_fields() {
        let encoded = encoded(3, true).await;

        assert_eq!(
            u32::try_from(encoded.len() - 4).unwrap(),
            u32::from_be_bytes(encoded[0..4].try_into().unwrap())
        );

        let tags = top_level_tags(&encoded);
        assert_eq!(&[0][..], tags);
        assert_eq!(Ok(()), librdkafka_2_0_2_skip_tags(tags));

        // the api keys and their versions are unchanged
        assert_eq!(api_keys(&self::encoded(3, false).await), api_keys(&encoded));
    }

    /// The api key entries (api key, min, max, tags) of an encoded v3 response, sorted.
    fn api_keys(encoded: &[u8]) -> Vec<&[u8]> {
        let mut at = 10;
        let count = uvarint(encoded, &mut at) - 1;
        let tags = top_level_tags(encoded).len();
        let mut entries = encoded[at..encoded.len() - tags - 4]
            .chunks(7)
            .collect::<Vec<_>>();
        assert_eq!(count, entries.len() as u64);
        entries.sort();
        entries
    }

    #[tokio::test]
    async fn api_versions_v0_to_v2_responses_are_unchanged() {
        for api_version in 0..=2 {
            assert_eq!(
                encoded(api_version, false).await,
                encoded(api_version, true).await,
                "v{api_version}"
            );
        }
    }

    #[test]
    fn non_default_tagged_fields_are_kept() {
        let mut response = ApiVersionsResponse::default()
            .finalized_features_epoch(Some(5))
            .zk_migration_ready(Some(true));

        omit_default_tagged_fields(&mut response);

        assert_eq!(Some(5), response.finalized_features_epoch);
        assert_eq!(Some(true), response.zk_migration_ready);
    }
}
