//! The deployment files agree with the code: compose services and dependencies, the
//! Kubernetes manifests' roles, probes, grace periods and hardening, and the configs
//! they ship pass `relayd check-config`. (Schema validation of the same files runs in
//! `.ci/run`: kubernetes-validate, hadolint, docker-compose config.)

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every YAML document of a file, merge keys (`<<:`) applied, as JSON values.
fn yaml_documents(path: &Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            let mut value = serde_norway::Value::deserialize(document).expect("valid YAML");
            value.apply_merge().expect("merge keys");
            serde_json::to_value(value).expect("JSON-compatible YAML")
        })
        .collect()
}

/// Runs `relayd check-config` on `config` with placeholder secrets in the environment.
fn check_config(config: &str) -> std::process::Output {
    check_config_with(config, &[])
}

/// [`check_config`] with more environment variables.
fn check_config_with(config: &str, env: &[(&str, &str)]) -> std::process::Output {
    let file = support::temp_file(config);
    Command::new(support::relayd_binary())
        .envs(env.iter().copied())
        .args(["check-config", "--config"])
        .arg(&file.0)
        .env(
            "RELAYD_DATABASE_URL",
            "postgres://relayd:pw@db-a.internal:5432,db-b.internal:5432/relayd?target_session_attrs=read-write",
        )
        .env("RELAYD_BROKER_URL", "amqps://relayd:pw@mq.internal:5671/%2f")
        .env("RELAYD_BROKER_URL_1", "amqps://relayd:pw@mq-0.internal:5671/%2f")
        .env("RELAYD_BROKER_URL_2", "amqps://relayd:pw@mq-1.internal:5671/%2f")
        .env("RELAYD_BROKER_URL_3", "amqps://relayd:pw@mq-2.internal:5671/%2f")
        .env("RELAYD_ADMIN_TOKEN", "an-admin-token-long-enough")
        .env("STRIPE_WEBHOOK_SECRET", "whsec_placeholder")
        .env("EXAMPLE_SIGNING_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("BILLING_SIGNING_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .output()
        .unwrap()
}

fn seconds(duration: &str) -> u64 {
    humantime::parse_duration(duration).unwrap().as_secs()
}

#[test]
fn compose_runs_migrate_first_and_every_relayd_layout_on_its_config() {
    let compose = yaml_documents(&root().join("docker-compose.yml")).remove(0);
    let services = compose["services"].as_object().unwrap();
    for name in ["postgres", "rabbitmq"] {
        assert!(
            services[name]["healthcheck"]["test"].is_array(),
            "{name} has a healthcheck"
        );
        let volume = services[name]["volumes"][0].as_str().unwrap();
        let named = volume.split(':').next().unwrap();
        assert!(
            compose["volumes"].get(named).is_some(),
            "{name} keeps its data in a named volume"
        );
    }
    let migrate = &services["migrate"];
    assert_eq!(
        migrate["command"],
        serde_json::json!(["migrate"]),
        "migrate runs `relayd migrate`"
    );
    assert_eq!(migrate["depends_on"]["postgres"]["condition"], "service_healthy");
    assert_eq!(migrate["restart"], "no");

    let layouts = [
        ("relayd", "all", "all"),
        ("ingest", "split", "ingest"),
        ("relay", "split", "relay"),
        ("worker", "split", "worker"),
    ];
    for (name, profile, role) in layouts {
        let service = &services[name];
        assert_eq!(service["profiles"], serde_json::json!([profile]), "{name}");
        assert_eq!(service["command"], serde_json::json!(["--role", role]), "{name}");
        assert_eq!(
            service["depends_on"]["migrate"]["condition"], "service_completed_successfully",
            "{name}"
        );
        assert_eq!(
            service["depends_on"]["rabbitmq"]["condition"], "service_healthy",
            "{name}"
        );
        assert!(
            seconds(service["stop_grace_period"].as_str().unwrap()) > 25,
            "{name} outlives relayd's grace period"
        );
    }
    assert!(
        services["worker"].get("ports").is_none(),
        "workers scale with --scale: no fixed host port"
    );
    assert_eq!(
        services["receiver"]["entrypoint"],
        serde_json::json!(["relayd-example-receiver"])
    );
    // The image's HEALTHCHECK asks a running relayd: not there in these two.
    for name in ["receiver", "migrate"] {
        assert_eq!(services[name]["healthcheck"]["disable"], true, "{name}");
    }

    let config = std::fs::read_to_string(root().join("deploy/compose/relayd.toml")).unwrap();
    let output = check_config(&config);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("http://receiver:8080/hooks"));

    // The cluster profile: the same config, the three nodes' URLs from one variable.
    let cluster = &services["relayd-cluster"];
    assert_eq!(cluster["profiles"], serde_json::json!(["cluster"]));
    let environment = cluster["environment"].as_object().unwrap();
    assert!(
        environment.contains_key("RELAYD__BROKER__URLS") && !environment.contains_key("RELAYD__BROKER__URL")
    );
    for node in ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"] {
        assert_eq!(cluster["depends_on"][node]["condition"], "service_healthy");
        assert_eq!(services[node]["hostname"], node);
    }
    let urls = "amqp://relayd:pw@rabbitmq-1:5672/%2f,amqp://relayd:pw@rabbitmq-2:5672/%2f,amqp://relayd:pw@rabbitmq-3:5672/%2f";
    let output = check_config_with(&config, &[("RELAYD__BROKER__URLS", urls)]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"]
            .iter()
            .all(|node| printed.contains(&format!("@{node}:5672"))),
        "{printed}"
    );
    // Both forms at once are refused.
    let both = check_config_with(
        &config,
        &[
            ("RELAYD__BROKER__URLS", urls),
            ("RELAYD__BROKER__URL", "amqp://relayd:pw@rabbitmq:5672/%2f"),
        ],
    );
    assert!(!both.status.success());
    assert!(String::from_utf8_lossy(&both.stderr).contains("broker.urls"));
}

#[test]
fn kubernetes_manifests_run_each_role_hardened_with_probes_and_room_to_stop() {
    let dir = root().join("deploy/kubernetes");
    let kustomization = yaml_documents(&dir.join("kustomization.yaml")).remove(0);
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    files.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(listed_sorted, files, "kustomization lists every manifest");

    let docs: Vec<Value> = files.iter().flat_map(|f| yaml_documents(&dir.join(f))).collect();
    let of_kind = |kind: &'static str| docs.iter().filter(move |d| d["kind"] == kind);

    // The shipped configuration is valid, and its grace period fits the pods'.
    let configmap = of_kind("ConfigMap").next().unwrap();
    let toml = configmap["data"]["relayd.toml"].as_str().unwrap();
    let output = check_config(toml);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("listen = \"0.0.0.0:3000\"") && printed.contains("listen = \"0.0.0.0:9090\""));
    // A three-node broker cluster, its passwords redacted.
    assert!(
        ["mq-0.internal", "mq-1.internal", "mq-2.internal"]
            .iter()
            .all(|node| printed.contains(node))
            && !printed.contains(":pw@"),
        "{printed}"
    );
    let grace: toml::Table = toml::from_str(toml).unwrap();
    let grace = seconds(grace["shutdown"]["grace_period"].as_str().unwrap());

    let mut roles = Vec::new();
    for deployment in of_kind("Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let role = name.strip_prefix("relayd-").unwrap();
        roles.push(role.to_string());
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(container["args"], serde_json::json!(["--role", role]), "{name}");
        assert!(
            deployment["spec"]["replicas"].as_u64().unwrap() >= 2,
            "{name}: at least 2 replicas"
        );
        assert!(
            pod["terminationGracePeriodSeconds"].as_u64().unwrap() > grace,
            "{name}: longer than relayd's grace"
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{name}"
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{name}"
        );
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], "ops", "{name}");
        let ops = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "ops")
            .unwrap();
        assert_eq!(ops["containerPort"], 9090, "{name}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        let hardened = &container["securityContext"];
        assert_eq!(hardened["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(hardened["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(
            hardened["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{name}"
        );
        for bound in ["requests", "limits"] {
            let resources = &container["resources"][bound];
            assert!(
                !resources["cpu"].is_null() && !resources["memory"].is_null(),
                "{name} {bound}"
            );
        }
        assert_eq!(
            deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"], role,
            "{name}: selects only its role"
        );
    }
    roles.sort();
    assert_eq!(roles, ["ingest", "relay", "worker"]);
    let job = of_kind("Job").next().unwrap();
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        serde_json::json!(["migrate"])
    );
    let pdbs: Vec<&str> = of_kind("PodDisruptionBudget")
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(pdbs, ["relayd-ingest", "relayd-relay", "relayd-worker"]);
    let hpas: Vec<&str> = of_kind("HorizontalPodAutoscaler")
        .map(|h| h["spec"]["scaleTargetRef"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(hpas, ["relayd-ingest", "relayd-worker"]);
    // The ops port (admin API included) is not open to everyone who can reach a pod;
    // the ingest port is.
    let policy = of_kind("NetworkPolicy")
        .find(|p| p["metadata"]["name"] == "relayd-ops")
        .expect("a NetworkPolicy for the ops port");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "relayd"
    );
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let ops_rule = rules
        .iter()
        .find(|r| r["ports"][0]["port"] == 9090)
        .expect("a rule for 9090");
    assert!(
        ops_rule["from"].as_array().is_some_and(|f| !f.is_empty()),
        "9090 only from listed peers"
    );
    assert!(rules
        .iter()
        .any(|r| r["ports"][0]["port"] == 3000 && r.get("from").is_none()));
    let ingest_service = of_kind("Service")
        .find(|s| s["metadata"]["name"] == "relayd-ingest")
        .unwrap();
    assert_eq!(
        ingest_service["spec"]["selector"]["app.kubernetes.io/component"],
        "ingest"
    );
}

#[test]
fn dockerfile_builds_locked_and_runs_unprivileged() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.matches("cargo build --release --locked").count() == 2,
        "dependency layer, then the code"
    );
    assert!(dockerfile.contains("USER 10001:10001"));
    assert!(dockerfile.contains("EXPOSE 3000 9090"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["relayd"]"#));
    assert!(dockerfile.contains(r#"CMD ["--role", "all"]"#));
    assert!(dockerfile.contains(r#"HEALTHCHECK"#) && dockerfile.contains(r#"CMD ["relayd", "health"]"#));
    // The image's own configuration, not the development one with its written secrets.
    assert!(dockerfile.contains("COPY deploy/image/relayd.toml /etc/relayd/relayd.toml"));
}

/// The image's default configuration reads every URL and secret from the environment:
/// it validates once they are set, writes none itself, and names what is missing.
#[test]
fn the_images_configuration_takes_every_secret_from_the_environment() {
    let config = std::fs::read_to_string(root().join("deploy/image/relayd.toml")).unwrap();
    let set = [
        ("RELAYD_DESTINATION_URL", "http://billing.internal:8080/hooks"),
        (
            "RELAYD_DESTINATION_SIGNING_SECRET",
            "whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
        ),
    ];
    let output = check_config_with(&config, &set);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(!shown.contains("whsec_"), "{shown}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("development secret"), "{stderr}");
    for key in ["url", "signing_secret", "secrets"] {
        for line in config.lines().filter(|l| l.starts_with(&format!("{key} ="))) {
            assert!(line.contains("env:"), "written in the image's config: {line}");
        }
    }
    let missing = check_config_with(&config, &set[..1]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("RELAYD_DESTINATION_SIGNING_SECRET"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// The README's first command is `cargo run -- --role all`: with more than one binary in
/// the package, cargo runs relayd only when `default-run` names it (without it, `cargo
/// run` refuses: "could not determine which binary to run").
#[test]
fn cargo_run_as_the_readme_says_runs_relayd() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.contains("\ncargo run -- --role all\n"),
        "the README's first command changed"
    );
    let manifest: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let bins = manifest["bin"].as_array().map_or(0, Vec::len);
    let default_run = manifest["package"]
        .get("default-run")
        .and_then(toml::Value::as_str);
    assert!(
        bins <= 1 || default_run == Some("relayd"),
        "{bins} binaries and default-run = {default_run:?}"
    );
}

/// The README's second command is `cargo test`, CI runs exactly that command, and the
/// suite installs the tools it runs itself: four tests failed on a machine with only
/// PostgreSQL and RabbitMQ when only `.ci/run` installed Chromium and Prometheus. Each
/// test that runs a tool asks `support::tools::provision` first, and the script covers
/// every one of them.
#[test]
fn the_readme_test_command_is_what_ci_runs_and_the_suite_provisions_its_tools() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.contains("```sh\ncargo test\n```"),
        "the README's test command changed"
    );
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|line| line == "cargo test"),
        ".ci/run must run the README's test command as it is"
    );
    let provision = std::fs::read_to_string(root().join("scripts/provision-test-tools")).unwrap();
    for tool in [
        "chromium",
        "chromedriver",
        "prometheus",
        "promtool",
        "python3",
        "npm",
    ] {
        assert!(
            provision.contains(&format!("command -v {tool}")),
            "{tool} is not provisioned"
        );
    }
    for user in [
        "tests/it/browser.rs",
        "tests/it/prometheus.rs",
        "tests/support/sdk.rs",
    ] {
        let source = std::fs::read_to_string(root().join(user)).unwrap();
        assert!(
            source.contains("tools::provision()"),
            "{user} runs a tool without provisioning it"
        );
    }
}
