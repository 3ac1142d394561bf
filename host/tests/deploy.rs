//! `deploy/` holds the container image and the Kubernetes manifests, and no
//! cluster or container engine runs where the tests run. So this test is what
//! keeps them honest: every kustomization renders with `kubectl kustomize`
//! into the kinds it should, every rendered manifest validates against the
//! Kubernetes schemas (strict: an unknown or misspelt field fails), the KEDA
//! ScaledObject, a custom resource with no schema there, is checked field by
//! field, the shipped `switchyard.toml` passes `switchyard check`, and the
//! manifests agree with that config and with the Dockerfile on ports, paths,
//! the user, the grace period, the stream and the consumer.
//!
//! It needs `kubectl` (client only) and `python3` with pip; it installs
//! `kubernetes-validate` from PyPI into `$SWITCHYARD_CACHE/tools/py-k8s`
//! the first time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed assumption in a test is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use switchyard::config::{Config, SourceConfig};

/// The kubernetes-validate release the test installs, and the oldest
/// Kubernetes the manifests must be valid for.
const VALIDATOR_VERSION: &str = "1.37.0";
const KUBERNETES_VERSION: &str = "1.30.0";

/// Kinds that are custom resources: not in the Kubernetes schemas, so the
/// validator only warns about them and they are checked here instead.
const CUSTOM_KINDS: &[&str] = &["ScaledObject"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

/// `kubectl kustomize deploy/kubernetes/<dir>`, as YAML.
fn kustomize(dir: &str) -> String {
    let path = deploy().join("kubernetes").join(dir);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl (this test needs the kubectl client on PATH): {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl kustomize {} failed: {stderr}", path.display());
    String::from_utf8(out.stdout).unwrap()
}

/// The Python packages kubernetes-validate and PyYAML, installed once into
/// the project's tool cache.
fn python_tools() -> &'static Path {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let cache = std::env::var_os("SWITCHYARD_CACHE").map_or_else(|| "/var/cache/switchyard".into(), PathBuf::from);
        let dir = cache.join("tools/py-k8s");
        if dir.join(format!("kubernetes_validate-{VALIDATOR_VERSION}.dist-info")).is_dir() {
            return dir;
        }
        // Install beside it, then move it into place, so an interrupted
        // install is never taken for a finished one.
        let staging = cache.join(format!("tools/py-k8s.{}.tmp", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        let out = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"])
            .arg(&staging)
            .arg(format!("kubernetes-validate=={VALIDATOR_VERSION}"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3 -m pip: {e}"));
        assert!(
            out.status.success(),
            "pip install kubernetes-validate=={VALIDATOR_VERSION} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&staging, &dir).unwrap();
        dir
    })
}

fn python() -> Command {
    let mut cmd = Command::new("python3");
    cmd.env("PYTHONPATH", python_tools());
    cmd
}

/// Rendered YAML as JSON documents, through PyYAML (a dependency of
/// kubernetes-validate), so the test needs no YAML parser of its own.
fn documents(yaml: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).unwrap();
    let script = "import json, sys, yaml\n\
                  docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]\n\
                  print(json.dumps(docs))";
    let out = python().args(["-c", script]).arg(&file).output().unwrap();
    assert!(out.status.success(), "YAML to JSON failed: {}", String::from_utf8_lossy(&out.stderr));
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap()
}

/// The one document of `kind`.
fn the<'a>(docs: &'a [Value], of_kind: &str) -> &'a Value {
    let found: Vec<_> = docs.iter().filter(|d| kind(d) == of_kind).collect();
    assert_eq!(found.len(), 1, "expected one {of_kind}, found {}", found.len());
    found[0]
}

fn named<'a>(docs: &'a [Value], of_kind: &str, of_name: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == of_kind && name(d) == of_name)
        .unwrap_or_else(|| panic!("no {of_kind} named {of_name}"))
}

/// Run kubernetes-validate on rendered YAML; the exit status and its report.
fn run_validator(label: &str, yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{label}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let out = python()
        .args(["-m", "kubernetes_validate", "--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(&file)
        .output()
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), report)
}

/// Validate rendered YAML strictly, and check that every built-in resource
/// in it was really validated: the validator only warns about a kind or
/// apiVersion it has no schema for, which would let a typo there through.
fn validate(label: &str, yaml: &str) {
    let (ok, report) = run_validator(label, yaml);
    assert!(ok, "{label}: kubernetes-validate failed:\n{report}");
    for doc in documents(yaml) {
        let (kind, name) = (kind(&doc), name(&doc));
        if CUSTOM_KINDS.contains(&kind) {
            continue;
        }
        let passed = format!("passed for resource {}/{name} ", kind.to_lowercase());
        assert!(report.contains(&passed), "{label}: {kind} {name} was not validated:\n{report}");
    }
    for line in report.lines().filter(|l| !l.starts_with("INFO ")) {
        assert!(
            line.starts_with("WARN ") && CUSTOM_KINDS.iter().any(|k| line.contains(&format!("for kind {k} "))),
            "{label}: unexpected line from kubernetes-validate: {line}\n{report}"
        );
    }
}

fn shipped_config_text() -> String {
    std::fs::read_to_string(deploy().join("kubernetes/base/switchyard.toml")).unwrap()
}

fn shipped_config() -> Config {
    Config::parse(Path::new("deploy/kubernetes/base/switchyard.toml"), &shipped_config_text()).unwrap()
}

fn dockerfile() -> String {
    std::fs::read_to_string(deploy().join("Dockerfile")).unwrap()
}

/// The port of an address such as `0.0.0.0:9090`.
fn port_of(address: &str) -> i64 {
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The standard base64 alphabet, with padding, as Kubernetes writes Secret data.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("{:?} is not base64", c as char),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let bits = chunk.iter().enumerate().fold(0u32, |acc, (i, d)| acc | (u32::from(*d) << (18 - 6 * i)));
        out.extend(&bits.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn base64_decode_matches_known_values() {
    assert_eq!(base64_decode("c3dpdGNoeWFyZA=="), b"switchyard");
    assert_eq!(base64_decode("YWJj\nZA=="), b"abcd");
    assert_eq!(base64_decode("YWI="), b"ab");
}

#[test]
fn every_kustomization_renders_the_expected_kinds() {
    let cases: &[(&str, &[&str])] = &[
        ("base", &["Deployment", "Namespace", "PodDisruptionBudget", "Secret", "Service"]),
        ("nats", &["Service", "Service", "StatefulSet"]),
        ("redis", &["Deployment", "Service"]),
        ("keda", &["ScaledObject"]),
        (
            "overlays/events",
            &[
                "Deployment",
                "Deployment",
                "Namespace",
                "PodDisruptionBudget",
                "Secret",
                "Service",
                "Service",
                "Service",
                "Service",
                "StatefulSet",
            ],
        ),
        (
            "overlays/keda",
            &[
                "Deployment",
                "Deployment",
                "Namespace",
                "PodDisruptionBudget",
                "ScaledObject",
                "Secret",
                "Service",
                "Service",
                "Service",
                "Service",
                "StatefulSet",
            ],
        ),
    ];
    for (dir, expected) in cases {
        let docs = documents(&kustomize(dir));
        let mut kinds: Vec<&str> = docs.iter().map(kind).collect();
        kinds.sort_unstable();
        assert_eq!(&kinds, expected, "kinds rendered from deploy/kubernetes/{dir}");
        for doc in &docs {
            if kind(doc) != "Namespace" {
                assert_eq!(doc["metadata"]["namespace"], "switchyard", "{dir}: {} {}", kind(doc), name(doc));
            }
        }
    }
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    for dir in ["base", "nats", "redis", "keda", "overlays/events", "overlays/keda"] {
        validate(&dir.replace('/', "-"), &kustomize(dir));
    }
}

#[test]
fn the_validator_rejects_a_misspelt_field() {
    // The check above is only worth something if the validator is strict: a
    // Deployment with one field misspelt, on its own so that the manifests'
    // state cannot mask the answer.
    let good = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: probe
spec:
  selector:
    matchLabels: {app: probe}
  template:
    metadata:
      labels: {app: probe}
    spec:
      terminationGracePeriodSeconds: 45
      containers:
        - {name: probe, image: probe}
"#;
    let (ok, report) = run_validator("good", good);
    assert!(ok, "the control manifest should pass:\n{report}");
    let broken = good.replace("terminationGracePeriodSeconds:", "terminationGracePeriod:");
    let (ok, report) = run_validator("broken", &broken);
    assert!(!ok, "a misspelt field passed validation:\n{report}");
    assert!(report.contains("'terminationGracePeriod' was unexpected"), "{report}");
}

#[test]
fn the_shipped_config_passes_switchyard_check() {
    let text = shipped_config_text();

    // The same file is what the Secret carries.
    let docs = documents(&kustomize("base"));
    let secret = the(&docs, "Secret");
    let data = secret["data"]["switchyard.toml"].as_str().unwrap();
    assert_eq!(String::from_utf8(base64_decode(data)).unwrap(), text, "the Secret holds base/switchyard.toml");

    // Checked where the test can write: the handlers are the events
    // example's, at paths of the test's own, and the data directory is a
    // temporary one.
    let dir = tempfile::tempdir().unwrap();
    let handlers = dir.path().join("handlers");
    std::fs::create_dir_all(&handlers).unwrap();
    for (built, shipped) in [("welcome_email", "welcome"), ("profile", "profile")] {
        let from = repo().join(format!("plugins/dist/{built}.wasm"));
        std::fs::copy(&from, handlers.join(format!("{shipped}.wasm")))
            .unwrap_or_else(|e| panic!("{}: {e} (run `make plugins` first)", from.display()));
        assert_eq!(text.matches(&format!("/etc/switchyard/handlers/{shipped}.wasm")).count(), 1);
    }
    let data_dir = dir.path().join("data");
    assert!(text.contains("\"/var/lib/switchyard"));
    let local = text
        .replace("/etc/switchyard/handlers/", &format!("{}/", handlers.display()))
        .replace("\"/var/lib/switchyard", &format!("\"{}", data_dir.display()));
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, local).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .env("RUST_LOG", "warn")
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "switchyard check failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok: 2 sources, 2 handlers loaded, 2 routes"), "{stdout}");

    // And the handler's path in the image is the one the README describes.
    let config = shipped_config();
    assert_eq!(config.tenants["events"].handlers["welcome"].wasm, Path::new("/etc/switchyard/handlers/welcome.wasm"));
}

#[test]
fn the_deployment_agrees_with_the_config_and_the_dockerfile() {
    let config = shipped_config();
    let docs = documents(&kustomize("overlays/events"));
    let deployment = named(&docs, "Deployment", "switchyard");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let dockerfile = dockerfile();

    // The image: built from the workspace's Rust, as the user the pod runs as.
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let rust_version = cargo.lines().find_map(|l| l.strip_prefix("rust-version = ")).unwrap().trim_matches('"');
    assert!(dockerfile.contains(&format!("FROM rust:{rust_version}-bookworm AS build")), "{dockerfile}");
    assert!(dockerfile.contains("cargo build --release -p switchyard --locked"));
    assert!(dockerfile.contains("FROM debian:bookworm-slim"));
    assert!(dockerfile.contains("\nUSER 10001\n"));
    assert!(dockerfile.contains("\nEXPOSE 9090\n"));
    assert!(dockerfile.contains("\nENTRYPOINT [\"switchyard\"]\n"));
    assert!(dockerfile.contains("\nCMD [\"run\", \"/etc/switchyard/switchyard.toml\"]\n"));
    assert_eq!(container["image"], "switchyard:latest");
    assert_eq!(container["args"], serde_json::json!(["run", "/etc/switchyard/switchyard.toml"]));

    // The config file is mounted where the command reads it, from the
    // Secret kustomize generated (with its hash suffix), and nothing is
    // mounted over /etc/switchyard itself, where the image keeps handlers.
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount = |path: &str| mounts.iter().find(|m| m["mountPath"] == path);
    let config_mount = mount("/etc/switchyard/switchyard.toml").expect("the config mount");
    assert!(mount("/etc/switchyard").is_none());
    assert!(!mounts.iter().any(|m| m["mountPath"] == "/etc/switchyard/handlers"), "handlers come from the image");
    let volume = |name: &Value| pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == *name).unwrap();
    let secret = the(&docs, "Secret");
    assert_eq!(volume(&config_mount["name"])["secret"]["secretName"], secret["metadata"]["name"]);
    assert!(name(secret).starts_with("switchyard-config-"), "the generated name carries a content hash");
    assert_eq!(config_mount["subPath"], "switchyard.toml");

    // data_dir is a writable volume; the root filesystem is read-only.
    let data_mount = mount(config.data_dir.to_str().unwrap()).expect("a volume at data_dir");
    assert!(volume(&data_mount["name"])["emptyDir"].is_object());
    let watch_dir = config.admin.as_ref().unwrap().watch_dir.as_ref().unwrap();
    assert!(watch_dir.starts_with(&config.data_dir), "the watched directory must be writable");

    // Probes and ports: the admin API where the config puts it.
    let admin_port = port_of(config.admin.as_ref().unwrap().listen.as_deref().unwrap());
    assert_eq!(admin_port, 9090);
    let ports = container["ports"].as_array().unwrap();
    let admin = ports.iter().find(|p| p["name"] == "admin").unwrap();
    assert_eq!(admin["containerPort"], admin_port);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(container[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    let service = named(&docs, "Service", "switchyard");
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(service["spec"]["ports"][0]["port"], admin_port);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "admin");

    // The kubelet waits longer than the host drains.
    let grace_s = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace_s * 1000 >= config.shutdown_grace_ms + 10_000,
        "terminationGracePeriodSeconds {grace_s} leaves no margin over shutdown_grace_ms {}",
        config.shutdown_grace_ms
    );

    // Locked down, with requests and limits.
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(container["resources"][bound][resource].is_string(), "resources.{bound}.{resource}");
        }
    }

    // The budget keeps one replica through voluntary disruptions.
    let pdb = the(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for selector in [&pdb["spec"]["selector"]["matchLabels"], &deployment["spec"]["selector"]["matchLabels"]] {
        for (key, value) in selector.as_object().unwrap() {
            assert_eq!(&labels[key], value, "selector {key}");
        }
    }

    // The broker the config names is the NATS Service of the example.
    let SourceConfig::JetStream(jetstream) = &config.sources["events"] else {
        panic!("events is not a jetstream source")
    };
    let nats = named(&docs, "Service", "nats");
    let client_port = nats["spec"]["ports"].as_array().unwrap().iter().find(|p| p["name"] == "client").unwrap();
    assert_eq!(jetstream.url, format!("nats://{}:{}", name(nats), client_port["port"]));
    let statefulset = the(&docs, "StatefulSet");
    assert_eq!(statefulset["spec"]["replicas"], 1);
    let nats_container = &statefulset["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(nats_container["image"], "nats:2.10-alpine");
    let args: Vec<&str> = nats_container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(&args[..3], ["-js", "-sd", "/data"]);
}

#[test]
fn the_scaled_object_scales_the_deployment_on_the_shipped_consumer() {
    let config = shipped_config();
    let SourceConfig::JetStream(jetstream) = &config.sources["events"] else {
        panic!("events is not a jetstream source")
    };
    let docs = documents(&kustomize("overlays/keda"));
    let scaled = the(&docs, "ScaledObject");
    let deployment = named(&docs, "Deployment", "switchyard");
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(scaled["metadata"]["namespace"], deployment["metadata"]["namespace"]);

    let spec = &scaled["spec"];
    let target = &spec["scaleTargetRef"];
    assert_eq!(target["name"], deployment["metadata"]["name"]);
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["apiVersion"], deployment["apiVersion"]);
    assert_eq!(spec["minReplicaCount"], 1);
    assert_eq!(spec["maxReplicaCount"], 10);
    // KEDA's HorizontalPodAutoscaler owns the count; the overlay drops the base's.
    assert!(deployment["spec"].get("replicas").is_none(), "the keda overlay must not set replicas");

    let triggers = spec["triggers"].as_array().unwrap();
    assert_eq!(triggers.len(), 1);
    assert_eq!(triggers[0]["type"], "nats-jetstream");
    let metadata = triggers[0]["metadata"].as_object().unwrap();
    for (key, value) in metadata {
        assert!(value.is_string(), "KEDA trigger metadata values are strings: {key} = {value}");
    }
    for key in ["natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"] {
        assert!(metadata.contains_key(key), "trigger metadata lacks {key}");
    }
    assert_eq!(metadata["account"], "$G");
    assert_eq!(metadata["stream"], jetstream.stream.as_str());
    assert_eq!(metadata["consumer"], jetstream.consumer.as_str());
    assert_eq!(metadata["lagThreshold"], "100");

    // The monitoring endpoint is the nats Service's monitoring port, which
    // the server opens with -m.
    let nats = named(&docs, "Service", "nats");
    let monitor = nats["spec"]["ports"].as_array().unwrap().iter().find(|p| p["name"] == "monitor").unwrap();
    let endpoint = format!(
        "{}.{}.svc.cluster.local:{}",
        name(nats),
        nats["metadata"]["namespace"].as_str().unwrap(),
        monitor["port"]
    );
    assert_eq!(metadata["natsServerMonitoringEndpoint"], endpoint.as_str());
    assert_eq!(endpoint, "nats.switchyard.svc.cluster.local:8222");
    let nats_container = &the(&docs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = nats_container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let m = args.iter().position(|a| *a == "-m").expect("nats-server needs -m for the monitoring port");
    assert_eq!(args[m + 1], monitor["port"].to_string());
}
