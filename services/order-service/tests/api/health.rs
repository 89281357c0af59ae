use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app = spawn_app().await;
    let c = &app.client;
    assert_eq!(
        c.get(format!("{}/healthz", app.address))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: Value = c
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    let metrics = c
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outbox_pending_rows "), "{metrics}");
    assert!(metrics.contains("outbox_relay_leader "), "{metrics}");

    app.stop().await;
}
