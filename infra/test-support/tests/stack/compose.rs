//! No Docker engine runs here, so `docker-compose.yml` is checked statically against the
//! native stack's settings (`infra/env.sh`) and the README's ports table: if someone changes a
//! port or a variable name on one side only, this fails.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use eda_test_support::workspace_root;
use serde_yaml_ng::Value;

/// `: "${NAME:=VALUE}"` lines of infra/env.sh whose value is a literal (no `$`).
fn native_defaults() -> BTreeMap<String, String> {
    let text = fs::read_to_string(workspace_root().join("infra/env.sh")).unwrap();
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix(": \"${")?;
            let (name, rest) = rest.split_once(":=")?;
            let value = rest.split_once("}\"")?.0;
            (!value.contains('$')).then(|| (name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Names listed in `EDA_EXPORTED_VARS=(...)` and `EDA_EXPORTED_VARS+=(...)` in infra/env.sh:
/// what `make up` hands to natively run services.
fn native_exported_vars() -> BTreeSet<String> {
    let text = fs::read_to_string(workspace_root().join("infra/env.sh")).unwrap();
    text.split("EDA_EXPORTED_VARS")
        .skip(1)
        .filter_map(|part| part.strip_prefix("=(").or_else(|| part.strip_prefix("+=(")))
        .flat_map(|part| {
            part.split(')')
                .next()
                .unwrap()
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn compose() -> Value {
    let text = fs::read_to_string(workspace_root().join("docker-compose.yml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("docker-compose.yml parses as YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("compose has no service {name}"))
}

/// Host ports a compose service publishes ("5432:5432" -> 5432).
fn published_ports(svc: &Value) -> BTreeSet<u16> {
    svc.get("ports")
        .and_then(Value::as_sequence)
        .map(|ports| {
            ports
                .iter()
                .map(|p| {
                    p.as_str()
                        .expect("ports are strings")
                        .split(':')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A service's `environment` mapping as strings.
fn env_of(svc: &Value) -> BTreeMap<String, String> {
    svc.get("environment").map(env_map).unwrap_or_default()
}

fn env_map(env: &Value) -> BTreeMap<String, String> {
    let env = env.as_mapping().expect("environment is a mapping");
    env.iter()
        .filter_map(|(k, v)| {
            let k = k.as_str()?;
            // `<<` is the YAML merge key; serde_yaml_ng leaves it unresolved
            if k == "<<" {
                return None;
            }
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("unexpected env value {other:?}"),
            };
            Some((k.to_owned(), v))
        })
        .collect()
}

fn port(defaults: &BTreeMap<String, String>, name: &str) -> u16 {
    defaults
        .get(name)
        .unwrap_or_else(|| panic!("infra/env.sh has no default for {name}"))
        .parse()
        .unwrap()
}

#[test]
fn components_publish_the_native_default_ports() {
    let (c, d) = (compose(), native_defaults());
    let expect = [
        ("postgres", vec!["PG_PORT"]),
        ("kafka", vec!["KAFKA_PORT"]),
        ("connect", vec!["CONNECT_PORT"]),
        ("minio", vec!["MINIO_PORT", "MINIO_CONSOLE_PORT"]),
        (
            "jaeger",
            vec![
                "JAEGER_OTLP_GRPC_PORT",
                "JAEGER_OTLP_HTTP_PORT",
                "JAEGER_UI_PORT",
            ],
        ),
        ("order-service", vec!["ORDER_SERVICE_PORT"]),
        ("inventory-service", vec!["INVENTORY_SERVICE_PORT"]),
        ("projection-service", vec!["PROJECTION_SERVICE_PORT"]),
    ];
    for (name, vars) in expect {
        let want: BTreeSet<u16> = vars.iter().map(|v| port(&d, v)).collect();
        assert_eq!(
            published_ports(service(&c, name)),
            want,
            "published ports of {name}"
        );
    }
}

#[test]
fn credentials_buckets_and_kafka_settings_agree() {
    let (c, d) = (compose(), native_defaults());
    let pg = env_of(service(&c, "postgres"));
    assert_eq!(pg["POSTGRES_USER"], d["PG_USER"]);
    assert_eq!(pg["POSTGRES_PASSWORD"], d["PG_PASSWORD"]);
    let pg_command: Vec<&str> = service(&c, "postgres")["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(pg_command.contains(&"wal_level=logical"), "{pg_command:?}");

    let minio = env_of(service(&c, "minio"));
    assert_eq!(minio["MINIO_ROOT_USER"], d["MINIO_ROOT_USER"]);
    assert_eq!(minio["MINIO_ROOT_PASSWORD"], d["MINIO_ROOT_PASSWORD"]);
    assert_eq!(
        env_of(service(&c, "minio-init"))["S3_BUCKET"],
        d["S3_BUCKET"]
    );

    let kafka_image = format!("apache/kafka:{}", d["KAFKA_VERSION"]);
    assert_eq!(
        service(&c, "kafka")["image"],
        kafka_image.as_str(),
        "compose runs the native Kafka version"
    );
    let connect_dockerfile =
        fs::read_to_string(workspace_root().join("infra/compose/connect.Dockerfile")).unwrap();
    assert!(
        connect_dockerfile.contains(&format!("FROM {kafka_image}")),
        "compose's Connect runs the native Kafka version"
    );
    let kafka = env_of(service(&c, "kafka"));
    assert_eq!(kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"], "false");
    assert_eq!(kafka["KAFKA_NUM_PARTITIONS"], d["KAFKA_PARTITIONS"]);
    assert!(
        !kafka.contains_key("KAFKA_MESSAGE_MAX_BYTES"),
        "message.max.bytes must stay at Kafka's default"
    );
    let init = serde_yaml_ng::to_string(&service(&c, "kafka-init")["command"]).unwrap();
    for topic in d["KAFKA_TOPICS"].split_whitespace() {
        assert!(init.contains(topic), "kafka-init does not create {topic}");
    }
}

#[test]
fn app_services_get_the_native_variable_names() {
    let (c, d) = (compose(), native_defaults());
    // x-app-env is merged into every app service; check the anchor itself and each service's own keys.
    let shared = env_map(&c["x-app-env"]);
    let exported = native_exported_vars();
    for name in [
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_CONNECT_URL",
        "S3_ENDPOINT",
        "S3_BUCKET",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "JWT_SECRET",
    ] {
        assert!(shared.contains_key(name), "x-app-env lacks {name}");
        assert!(
            exported.contains(name),
            "{name} is not exported to native services by infra/env.sh"
        );
    }
    assert_eq!(shared["S3_BUCKET"], d["S3_BUCKET"]);
    assert_eq!(shared["JWT_SECRET"], d["JWT_SECRET"]);
    // The pitfall switches pass through from the caller's environment, fixed by default.
    for (name, fixed) in [
        ("PUBLISH_MODE", "outbox"),
        ("IDEMPOTENCY", "on"),
        ("PROPAGATION", "on"),
        ("CLAIM_CHECK", "on"),
    ] {
        assert_eq!(shared[name], format!("${{{name}:-{fixed}}}"), "{name}");
    }
    for (svc, port_var, db) in [
        ("order-service", "ORDER_SERVICE_PORT", "orders"),
        ("inventory-service", "INVENTORY_SERVICE_PORT", "inventory"),
        (
            "projection-service",
            "PROJECTION_SERVICE_PORT",
            "projection",
        ),
    ] {
        let env = env_of(service(&c, svc));
        assert_eq!(env["HTTP_PORT"], d[port_var], "{svc} HTTP_PORT");
        assert_eq!(env["OTEL_SERVICE_NAME"], svc);
        assert!(
            env["DATABASE_URL"].ends_with(&format!("/{db}")),
            "{svc} DATABASE_URL"
        );
        assert!(
            d["PG_DATABASES"].split_whitespace().any(|x| x == db),
            "{db} is not created natively"
        );
        assert_eq!(
            service(&c, svc)["build"]["args"]["SERVICE"],
            svc,
            "{svc} builds its own package"
        );
    }
}

#[test]
fn dependencies_point_at_services_that_can_satisfy_them() {
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    for (name, svc) in services {
        let Some(deps) = svc.get("depends_on").and_then(Value::as_mapping) else {
            continue;
        };
        for (dep, cond) in deps {
            let dep_svc = services
                .get(dep)
                .unwrap_or_else(|| panic!("{name:?} depends on unknown {dep:?}"));
            match cond["condition"].as_str().unwrap() {
                "service_healthy" => assert!(
                    dep_svc.get("healthcheck").is_some(),
                    "{dep:?} has no healthcheck"
                ),
                "service_completed_successfully" => {
                    assert_eq!(dep_svc["restart"], "no", "{dep:?} is one-shot");
                }
                "service_started" => {}
                other => panic!("unknown condition {other}"),
            }
        }
    }
}

#[test]
fn every_component_in_the_readme_ports_table_is_in_compose() {
    let readme = fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let table = readme
        .split("<!-- ports-table -->")
        .nth(1)
        .expect("README marks its ports table");
    let c = compose();
    let d = native_defaults();
    let mut rows = 0;
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`');
        let port_cell = cells[2];
        let svc = service(&c, name);
        // the port column reads like "`9000` (`MINIO_PORT`), `9001` (`MINIO_CONSOLE_PORT`)"
        for var in port_cell.split('`').filter(|s| s.ends_with("_PORT")) {
            assert!(
                published_ports(svc).contains(&port(&d, var)),
                "{name} does not publish {var}"
            );
        }
        rows += 1;
    }
    assert!(
        rows >= 8,
        "the README ports table lists every component and service, found {rows} rows"
    );
}

#[test]
fn docker_compose_config_accepts_the_file_when_the_client_is_installed() {
    // Debian's docker-compose (v1) can validate without an engine; `make deps` installs it.
    let root = workspace_root();
    match std::process::Command::new("docker-compose")
        .args(["--profile", "apps", "config", "--quiet"])
        .current_dir(&root)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "docker-compose config rejected the file:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "docker-compose is not installed: only the static checks ran (`make deps` installs it)"
            );
        }
        Err(err) => panic!("cannot run docker-compose: {err}"),
    }
}
