//! `pitfall-lab demo` with nothing running (a run directory of its own, empty: the infra scripts
//! find no component and no service there): every step is skipped with its reason, the JSON
//! copy says so, and skipping is not failing. The demo itself runs against the real system with
//! `make demo`; this only proves the command's way out when it cannot run.

use std::process::Command;

#[test]
fn with_nothing_running_every_step_is_skipped_with_its_reason() {
    let run_dir = std::env::temp_dir().join(format!("pitfall-lab-demo-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&run_dir).unwrap();
    let json = run_dir.join("summary.json");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = Command::new(env!("CARGO_BIN_EXE_pitfall-lab"))
        .args(["demo", "--only", "5,1", "--root", root, "--json"])
        .arg(&json)
        .env("EDA_RUN_DIR", &run_dir)
        .output()
        .expect("pitfall-lab runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("nothing ran: every step was skipped"),
        "{stdout}"
    );
    assert!(
        stderr.contains("=== pitfall 1:"),
        "progress as it happens: {stderr}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(summary["ok"], true, "{summary}");
    let outcomes = summary["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2, "{summary}");
    assert_eq!(outcomes[0]["pitfall"], 1, "in pitfall order: {summary}");
    for o in outcomes {
        assert_eq!(o["verdict"], "skipped", "{o}");
        let reason = o["reason"].as_str().unwrap();
        assert!(reason.contains("order-service is not running"), "{reason}");
    }
    let _ = std::fs::remove_dir_all(&run_dir);
}
