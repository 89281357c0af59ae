//! The command line as a user runs it (this also makes `cargo test --workspace` build the
//! binary, which other packages' tests run: projection-service's rebuild test). The audit's
//! tests against the real system are a module of this binary (`audit/`): one link, not two.

mod audit;
mod demo;

use std::process::Command;

fn lab(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pitfall-lab"))
        .args(args)
        .output()
        .expect("pitfall-lab runs")
}

#[test]
fn token_prints_a_signed_jwt() {
    let out = lab(&[
        "token",
        "--user",
        "alice",
        "--role",
        "admin",
        "--secret",
        "s3cret-for-tests-0123456789",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.trim().split('.').count(), 3, "{token}");
}

#[test]
fn every_command_explains_itself() {
    for args in [
        &["--help"][..],
        &["projection", "rebuild", "--help"],
        &["bench", "projection", "--help"],
        &["bench", "event-sourcing", "--help"],
        &["audit", "--help"],
    ] {
        let out = lab(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
    let out = lab(&["projection", "rebuild", "--no-such-flag"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
    // An unknown check is refused with the list of checks.
    let out = lab(&["audit", "--checks", "7"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 (missing-events)"));
}
