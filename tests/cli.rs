//! The `kwarm` binary as users run it: `kwarm check` and `kwarm render`, no cluster needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use pretty_assertions::assert_eq;

/// Runs `kwarm <args>` with exactly `env` as its environment.
fn kwarm(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kwarm"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("running kwarm {args:?}: {e}"))
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The data of a kubernetes-image-puller ConfigMap, as `envFrom` hands it to the container.
fn puller_configmap() -> Vec<(String, String)> {
    let path = golden_dir().join("input/kubernetes-image-puller-configmap.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cm: ConfigMap = serde_yaml::from_str(&yaml).expect("a ConfigMap");
    cm.data.expect("data").into_iter().collect()
}

/// What a container sees besides its ConfigMap.
fn container_noise() -> Vec<(String, String)> {
    vars(&[
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        ("HOSTNAME", "kwarm-7d9c6b5f4-x2x9q"),
        ("HOME", "/home/nonroot"),
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
        ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
        ("LANG", "C.UTF-8"),
    ])
}

fn assert_exit(output: &Output, code: i32, what: &str) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: exit status\n--- stdout\n{}\n--- stderr\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// kwarm check

#[test]
fn check_accepts_a_valid_environment() {
    let out = kwarm(&["check"], &vars(&[("IMAGES", "web=nginx:1.25;redis:7")]));
    assert_exit(&out, 0, "valid environment");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("Configuration is valid"), "{stdout}");
    assert!(stdout.contains("2 images"), "{stdout}");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
}

#[test]
fn check_accepts_an_empty_environment() {
    // Deployment watching is on by default, so nothing at all is still something to do.
    assert_exit(&kwarm(&["check"], &[]), 0, "empty environment");
}

#[test]
fn check_accepts_a_kubernetes_image_puller_configmap_unchanged() {
    let mut env = puller_configmap();
    env.extend(container_noise());
    let out = kwarm(&["check"], &env);
    assert_exit(&out, 0, "puller ConfigMap");
    assert!(text(&out.stdout).contains("3 images"), "{}", text(&out.stdout));
}

#[test]
fn check_reports_every_problem_on_its_own_line_and_exits_2() {
    let env = vars(&[
        (
            "IMAGES",
            "=quay.io/eclipse/che-theia:next;java11-maven=quay.io/eclipse/che-java11-maven:nightly;Bad_Name=nginx:1.25",
        ),
        ("CACHING_INTERVAL_HOURS", "0"),
        ("CACHING_MEMORY_REQUEST", "30Mi"),
        ("NODE_SELECTOR", "{not json"),
        ("TOLERATIONS", r#"[{"key": "dedicated", "efect": "NoSchedule"}]"#),
        ("MAX_CONCURRENT_NODES", "0%"),
        ("PULL_TIMEOUT", "soon"),
        ("PATH", "/usr/bin:/bin"),
    ]);
    let out = kwarm(&["check"], &env);
    assert_exit(&out, 2, "invalid environment");
    assert!(out.stdout.is_empty(), "nothing on stdout: {}", text(&out.stdout));
    let stderr = text(&out.stderr);
    let mut lines = stderr.lines();
    let header = lines.next().expect("a header line");
    assert!(header.contains("8 problems"), "{header}");
    assert!(header.contains("nothing was changed in the cluster"), "{header}");
    let problems: Vec<&str> = lines.map(str::trim).collect();
    // (variable, value as quoted in the line, part of what is expected)
    let expected = [
        ("IMAGES", r#""=quay.io/eclipse/che-theia:next""#, "container name \"\""),
        ("IMAGES", r#""Bad_Name=nginx:1.25""#, "DNS-1123"),
        ("CACHING_INTERVAL_HOURS", r#""0""#, "positive whole number of hours"),
        ("CACHING_MEMORY_REQUEST", r#""30Mi""#, "at most CACHING_MEMORY_LIMIT (20Mi)"),
        ("NODE_SELECTOR", r#""{not json""#, "a JSON object"),
        (
            "TOLERATIONS",
            r#""[{\"key\": \"dedicated\", \"efect\": \"NoSchedule\"}]""#,
            "unknown field [0].efect",
        ),
        ("MAX_CONCURRENT_NODES", r#""0%""#, "a percentage from 1% to 100%"),
        ("PULL_TIMEOUT", r#""soon""#, "a duration such as"),
    ];
    assert_eq!(problems.len(), expected.len(), "one line per problem:\n{stderr}");
    for (line, (variable, value, expectation)) in problems.iter().zip(expected) {
        let prefix = format!("{variable}: invalid value {value}: ");
        assert!(line.starts_with(&prefix), "expected {prefix:?}…, got {line:?}");
        assert!(line.contains(expectation), "{line}");
    }
}

#[test]
fn check_refuses_selectors_for_nodes_the_holders_cannot_run_on() {
    let env = vars(&[
        ("IMAGES", "nginx:1.25"),
        ("NODE_SELECTOR", r#"{"kubernetes.io/os": "windows"}"#),
        (
            "AFFINITY",
            r#"{"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms":
                [{"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["s390x"]}]}]}}}"#,
        ),
    ]);
    let out = kwarm(&["check"], &env);
    assert_exit(&out, 2, "selectors for Windows and s390x nodes");
    let stderr = text(&out.stderr);
    let problems: Vec<&str> = stderr.lines().skip(1).map(str::trim).collect();
    assert_eq!(problems.len(), 2, "{stderr}");
    assert!(
        problems[0].starts_with(r#"NODE_SELECTOR: invalid value "{\"kubernetes.io/os\": \"windows\"}": "#),
        "{stderr}"
    );
    assert!(problems[1].starts_with("AFFINITY: invalid value "), "{stderr}");
    for line in &problems {
        assert!(line.contains("Linux nodes") && line.contains("linux/amd64, linux/arm64"), "{line}");
    }
}

#[test]
fn render_places_holders_on_the_architectures_of_kip_image() {
    let arch_values = |env: &[(&str, &str)]| -> serde_json::Value {
        let ds: serde_json::Value =
            serde_json::from_str(&render(&["render", "-o", "json"], &vars(env))).expect("json");
        ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"][0]
            .clone()
    };
    let arch = |values: &[&str]| serde_json::json!({"key": "kubernetes.io/arch", "operator": "In", "values": values});
    assert_eq!(arch_values(&[("IMAGES", "nginx:1.25")]), arch(&["amd64", "arm64"]));
    assert_eq!(
        arch_values(&[("IMAGES", "nginx:1.25"), ("KIP_IMAGE", "corp.example/tools/sleep:1")]),
        arch(&["amd64"])
    );
    let env = [
        ("IMAGES", "nginx:1.25"),
        ("KIP_IMAGE", "corp.example/tools/sleep:1"),
        ("KIP_IMAGE_PLATFORMS", "linux/arm64"),
    ];
    assert_eq!(arch_values(&env), arch(&["arm64"]));
}

#[test]
fn check_says_when_there_is_nothing_to_warm() {
    let out = kwarm(&["check"], &vars(&[("WATCH_DEPLOYMENTS", "false")]));
    assert_exit(&out, 2, "nothing to warm");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("IMAGES: invalid value \"\": at least one image when WATCH_DEPLOYMENTS=false"),
        "{stderr}"
    );
}

#[test]
fn every_subcommand_refuses_an_invalid_environment() {
    let env = vars(&[("IMAGES", "kip=nginx:1.25")]);
    for args in [&["check"][..], &["render"], &["render", "-o", "json"], &["ungate"], &["run"]] {
        let out = kwarm(args, &env);
        assert_exit(&out, 2, &format!("kwarm {args:?}"));
        assert!(out.stdout.is_empty(), "kwarm {args:?} printed {}", text(&out.stdout));
        assert!(text(&out.stderr).contains("IMAGES: invalid value \"kip=nginx:1.25\""));
    }
}

// ---------------------------------------------------------------------------------------------
// kwarm render

fn render(args: &[&str], env: &[(String, String)]) -> String {
    let out = kwarm(args, env);
    assert_exit(&out, 0, &format!("kwarm {args:?}"));
    text(&out.stdout)
}

fn golden(name: &str) -> String {
    let path = golden_dir().join(format!("{name}.yaml"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}; run `make golden`", path.display()))
}

#[test]
fn render_of_a_puller_configmap_is_the_golden_daemonset() {
    let mut env = puller_configmap();
    env.extend(container_noise());
    assert_eq!(render(&["render"], &env), golden("puller-configmap"));
    assert_eq!(render(&["render", "-o", "yaml"], &env), golden("puller-configmap"));
    assert_eq!(render(&["render", "--openshift"], &env), golden("openshift"));
}

#[test]
fn render_is_byte_identical_across_runs() {
    let mut env = puller_configmap();
    env.retain(|(k, _)| !["NODE_SELECTOR", "TOLERATIONS", "IMAGE_PULL_SECRETS"].contains(&k.as_str()));
    env.extend(vars(&[
        ("DAEMONSET_ANNOTATIONS", r#"{"z": "1", "a": "2", "m": "3"}"#),
        ("NODE_SELECTOR", r#"{"pool": "build", "disk": "ssd"}"#),
        ("TOLERATIONS", r#"[{"operator": "Exists"}]"#),
        ("IMAGE_PULL_SECRETS", "b;a"),
    ]));
    for format in ["yaml", "json"] {
        let runs: Vec<String> = (0..3).map(|_| render(&["render", "-o", format], &env)).collect();
        assert!(!runs[0].is_empty());
        assert_eq!(runs[0], runs[1], "{format}");
        assert_eq!(runs[1], runs[2], "{format}");
    }
    // The variables' order in the environment does not matter either.
    let mut reversed = env.clone();
    reversed.reverse();
    assert_eq!(render(&["render"], &reversed), render(&["render"], &env));
}

#[test]
fn render_json_and_yaml_are_the_same_daemonset() {
    let env = puller_configmap();
    let from_yaml: DaemonSet =
        serde_yaml::from_str(&render(&["render", "-o", "yaml"], &env)).expect("YAML DaemonSet");
    let json = render(&["render", "-o", "json"], &env);
    assert!(json.ends_with("}\n"), "one trailing newline");
    let from_json: DaemonSet = serde_json::from_str(&json).expect("JSON DaemonSet");
    assert_eq!(from_json, from_yaml);
    assert_eq!(from_json.metadata.name.as_deref(), Some("kubernetes-image-puller"));
}

#[test]
fn render_follows_images_order() {
    let env = vars(&[("IMAGES", "zeta=redis:7;alpha=nginx:1.25;mid=quay.io/eclipse/che-theia:next")]);
    let ds: DaemonSet = serde_json::from_str(&render(&["render", "-o", "json"], &env)).expect("DaemonSet");
    let pod = ds.spec.and_then(|s| s.template.spec).expect("pod");
    let names: Vec<String> = pod.containers.into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["zeta", "alpha", "mid"]);
}

#[test]
fn render_defaults_the_namespace_to_the_pods_own() {
    let ds = |env: &[(String, String)]| -> DaemonSet {
        serde_json::from_str(&render(&["render", "-o", "json"], env)).expect("DaemonSet")
    };
    let own = ds(&vars(&[("POD_NAMESPACE", "tools")]));
    assert_eq!(own.metadata.namespace.as_deref(), Some("tools"));
    let explicit = ds(&vars(&[("POD_NAMESPACE", "tools"), ("NAMESPACE", "cache")]));
    assert_eq!(explicit.metadata.namespace.as_deref(), Some("cache"));
    // Outside a cluster (no service-account mount) the puller's default namespace.
    if !Path::new("/var/run/secrets/kubernetes.io/serviceaccount/namespace").exists() {
        assert_eq!(ds(&[]).metadata.namespace.as_deref(), Some("k8s-image-puller"));
    }
}

#[test]
fn render_applies_the_linux_default_node_selector() {
    let ds: DaemonSet =
        serde_json::from_str(&render(&["render", "-o", "json"], &puller_configmap())).expect("ds");
    let selector = ds.spec.and_then(|s| s.template.spec).and_then(|p| p.node_selector).expect("selector");
    assert_eq!(selector, BTreeMap::from([("kubernetes.io/os".to_string(), "linux".to_string())]));
}

#[test]
fn variables_that_are_not_utf8_do_not_crash_kwarm() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let run = |key: &str, value: &[u8]| {
        Command::new(env!("CARGO_BIN_EXE_kwarm"))
            .arg("check")
            .env_clear()
            .env("IMAGES", "web=nginx:1.25")
            .env(key, OsStr::from_bytes(value))
            .output()
            .expect("running kwarm")
    };
    // Someone else's variable: none of kwarm's business.
    let out = run("LEGACY_BLOB", b"caf\xe9");
    assert_exit(&out, 0, "unrelated non-UTF-8 variable");
    // One of kwarm's: an ordinary configuration problem, not a panic.
    let out = run("DAEMONSET_ANNOTATIONS", b"{\"owner\": \"caf\xe9\"}");
    assert_exit(&out, 2, "non-UTF-8 DAEMONSET_ANNOTATIONS");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "DAEMONSET_ANNOTATIONS: invalid value \"{\\\"owner\\\": \\\"caf\u{fffd}\\\"}\": UTF-8 text"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn render_into_a_closed_pipe_ends_quietly_and_a_full_disk_is_an_error() {
    use std::io::Read as _;
    use std::process::Stdio;
    // 400 images: far more output than a pipe buffer holds, so the write meets the closed pipe
    let images: Vec<String> = (0..400).map(|i| format!("registry.example.com/team/app-{i}:1")).collect();
    let env = vars(&[("IMAGES", &images.join(";")), ("MAX_IMAGES", "1000")]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_kwarm"))
        .arg("render")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kwarm render");
    let mut head = [0u8; 10];
    child.stdout.take().expect("stdout").read_exact(&mut head).expect("the first bytes");
    // the reader goes away, as `kwarm render | head -c10` does
    let output = child.wait_with_output().expect("exit");
    assert_eq!(output.status.code(), Some(0), "stderr: {}", text(&output.stderr));
    assert!(output.stderr.is_empty(), "no panic, no message: {}", text(&output.stderr));

    let full = std::fs::File::create("/dev/full").expect("/dev/full");
    let output = Command::new(env!("CARGO_BIN_EXE_kwarm"))
        .arg("render")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(full)
        .output()
        .expect("kwarm render");
    assert_eq!(output.status.code(), Some(1), "stderr: {}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("writing the output") && !stderr.contains("panicked"), "{stderr}");
}
