use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use eda_test_support::{Stack, unique};

fn client(stack: &Stack) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version_latest()
        .region(Region::new(stack.aws_region.clone()))
        .endpoint_url(&stack.s3_endpoint)
        .credentials_provider(Credentials::new(
            &stack.s3_access_key,
            &stack.s3_secret_key,
            None,
            None,
            "smoke-test",
        ))
        // MinIO serves buckets as path segments, not sub-domains
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

#[tokio::test]
async fn put_get_delete_in_the_claim_check_bucket() {
    let stack = Stack::from_env();
    let s3 = client(&stack);
    let key = format!("smoke/{}", unique("object"));
    let body: Vec<u8> = (0..=255u8).cycle().take(3 * 1024 * 1024 + 7).collect();

    s3.put_object()
        .bucket(&stack.s3_bucket)
        .key(&key)
        .content_type("application/octet-stream")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("put_object (is the bucket created? `make infra-up`; XMinioStorageFull = under 1% of the drive free)");

    let got = s3
        .get_object()
        .bucket(&stack.s3_bucket)
        .key(&key)
        .send()
        .await
        .expect("get_object");
    assert_eq!(got.content_length(), Some(body.len() as i64));
    let bytes = got.body.collect().await.expect("read body").into_bytes();
    assert!(bytes == body, "object content differs");

    s3.delete_object()
        .bucket(&stack.s3_bucket)
        .key(&key)
        .send()
        .await
        .expect("delete_object");
    let err = s3
        .head_object()
        .bucket(&stack.s3_bucket)
        .key(&key)
        .send()
        .await
        .expect_err("object is gone after delete");
    assert!(err.into_service_error().is_not_found());
}
