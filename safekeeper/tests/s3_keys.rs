//! The safekeeper's object keys fit what a real S3 server that keeps objects as files can
//! take: `s3s-fs` (on loopback) accepts a multipart upload and a plain upload of a WAL segment
//! under the longest key the safekeeper makes, and both read back checked.
//!
//! Needs `s3s-fs` (`STRATA_SETUP_S3=1 scripts/setup.sh`); fails without it.

mod common;

use bytes::Bytes;
use common::cluster::S3Server;
use object_store::{ObjectStoreExt, WriteMultipart};
use safekeeper::ids::TenantTimeline;
use safekeeper::remote_storage::{RemoteStorage, S3Options};
use walproto::consts::WAL_SEGMENT_SIZE;

#[test]
fn the_longest_wal_key_uploads_to_s3s_fs_single_and_multipart() {
    let base = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(&base.path().join("s3"), "strata-wal").unwrap();
    // The S3 client takes its credentials from the environment; set before any thread starts.
    for (k, v) in s3.env() {
        std::env::set_var(k, v);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!("s3://{}/cluster-a", s3.bucket);
        let rs = RemoteStorage::parse(
            &url,
            &S3Options {
                endpoint: Some(s3.endpoint.clone()),
                region: Some("us-east-1".into()),
                ..S3Options::from_env()
            },
        )
        .unwrap();
        let id = TenantTimeline {
            tenant: common::TENANT.parse().unwrap(),
            timeline: common::TIMELINE.parse().unwrap(),
        };
        let name = "000000010000000000000002.partial";
        let longest = rs.wal_object(&id, &format!("{name}.crc32c"));
        assert!(
            longest.as_ref().len() < 130,
            "{longest} is {} bytes",
            longest.as_ref().len()
        );

        // A plain upload with its checksum side object, read back checked.
        let data = Bytes::from(
            (0..WAL_SEGMENT_SIZE as usize)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>(),
        );
        rs.put_wal(&id, name, data.clone()).await.unwrap();
        assert_eq!(rs.get_wal(&id, name).await.unwrap().unwrap(), data);

        // A multipart upload (as a large object store client makes) under the longest key.
        let upload = rs.store().put_multipart(&longest).await.unwrap();
        let mut w = WriteMultipart::new_with_chunk_size(upload, 5 << 20);
        w.write(&data);
        w.finish().await.unwrap();
        let back = rs
            .store()
            .get(&longest)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(back, data);
    });
}
