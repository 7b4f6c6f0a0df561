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

// ---------------------------------------------------------------------------------------------
// kwarm --help, usage errors, exit codes

/// Runs `kwarm <args>` with `env`, `stdin` as its input.
fn kwarm_with_stdin(args: &[&str], env: &[(String, String)], stdin: &str) -> Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kwarm"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kwarm");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("writing stdin");
    child.wait_with_output().expect("kwarm exits")
}

#[test]
fn help_says_configuration_comes_from_the_environment() {
    let out = kwarm(&["--help"], &[]);
    assert_exit(&out, 0, "--help");
    let help = text(&out.stdout);
    assert!(help.contains("environment variables") && help.contains("envFrom"), "{help}");
    assert!(help.contains("kwarm check --list"), "{help}");
    let status = text(&kwarm(&["status", "--help"], &[]).stdout);
    for code in ["0 warm", "3 not warm", "2 invalid configuration", "4 cannot read the cluster", "64 usage"] {
        assert!(status.contains(code), "status --help lacks {code:?}:\n{status}");
    }
}

#[test]
fn usage_errors_exit_64_not_2_which_is_invalid_configuration() {
    for args in [
        &["status", "--bogus"][..],
        &["status", "--timeout", "5s"],
        &["status", "-n", "Not_A_Namespace"],
        &["status", "-A", "-n", "kwarm"],
        &["check", "--list", "-f", "x.yaml"],
        &["frobnicate"],
    ] {
        let out = kwarm(args, &[]);
        assert_exit(&out, 64, &format!("kwarm {args:?}"));
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        assert!(!text(&out.stderr).is_empty(), "kwarm {args:?} says why");
    }
}

/// A kubeconfig for an API server that is not there (a closed port on loopback).
fn unreachable_cluster(dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    let yaml = "apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n\
        clusters: [{name: nowhere, cluster: {server: 'https://127.0.0.1:9'}}]\n\
        users: [{name: nobody, user: {token: abc}}]\n\
        contexts: [{name: nowhere, context: {cluster: nowhere, user: nobody, namespace: tools}}]\n";
    std::fs::write(&path, yaml).expect("writing the kubeconfig");
    path
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kwarm-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn status_that_cannot_reach_the_cluster_exits_4() {
    let dir = scratch_dir("unreachable");
    let kubeconfig = unreachable_cluster(&dir);
    let env = vars(&[("KUBECONFIG", kubeconfig.to_str().expect("path"))]);
    let started = std::time::Instant::now();
    let out = kwarm(&["status"], &env);
    assert_exit(&out, 4, "unreachable API server");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "took {:?}", started.elapsed());
    let stderr = text(&out.stderr);
    // discovery in the context's namespace
    assert!(stderr.contains("listing kwarm's DaemonSets"), "{stderr}");
    let out = kwarm(&["status", "--kubeconfig", kubeconfig.to_str().expect("path"), "--daemonset", "h"], &[]);
    assert_exit(&out, 4, "unreachable API server, --kubeconfig");
    assert!(text(&out.stderr).contains("reading DaemonSet tools/h"), "{}", text(&out.stderr));
    // a context the kubeconfig does not have
    let out = kwarm(&["status", "--context", "elsewhere"], &env);
    assert_exit(&out, 4, "unknown context");
    // no kubeconfig, not in a pod
    let out = kwarm(&["status"], &vars(&[("HOME", dir.to_str().expect("path"))]));
    assert_exit(&out, 4, "no kubeconfig");
    assert!(text(&out.stderr).contains("no kubeconfig"), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn status_needs_only_the_variables_it_reads() {
    let dir = scratch_dir("status-vars");
    let kubeconfig = unreachable_cluster(&dir);
    let kubeconfig = kubeconfig.to_str().expect("path");
    // The manager would refuse this environment; status reads none of it, so it goes on to the
    // cluster (and finds none).
    let env = vars(&[("KUBECONFIG", kubeconfig), ("IMAGES", "kip=nginx:1.25"), ("CACHING_CPU_LIMIT", "x")]);
    let out = kwarm(&["status"], &env);
    assert_exit(&out, 4, "an invalid IMAGES is none of status's business");
    assert!(!text(&out.stderr).contains("IMAGES"), "{}", text(&out.stderr));
    // What it reads is checked, before the cluster is asked anything.
    let env =
        vars(&[("KUBECONFIG", kubeconfig), ("NODE_GATE_TAINT", "not a taint!"), ("DAEMONSET_NAME", "A_B")]);
    let out = kwarm(&["status"], &env);
    assert_exit(&out, 2, "invalid gate taint");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("(2 problems)"), "{stderr}");
    assert!(stderr.contains("NODE_GATE_TAINT: invalid value \"not a taint!\""), "{stderr}");
    assert!(stderr.contains("DAEMONSET_NAME: invalid value \"A_B\""), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// kwarm check -f, --configmap, --list

#[test]
fn check_list_names_every_variable_with_its_default() {
    let out = kwarm(&["check", "--list"], &vars(&[("IMAGES", "kip=invalid but not read")]));
    assert_exit(&out, 0, "check --list");
    let stdout = text(&out.stdout);
    for name in ["IMAGES", "DAEMONSET_NAME", "CACHING_INTERVAL_HOURS", "NODE_GATE_TAINT", "LOG_FORMAT"] {
        assert!(stdout.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} missing:\n{stdout}");
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["DAEMONSET_NAME", "kubernetes-image-puller"])),
        "{stdout}"
    );
}

#[test]
fn check_takes_the_pullers_configmap_file_and_stdin() {
    let path = golden_dir().join("input/kubernetes-image-puller-configmap.yaml");
    let path = path.to_str().expect("path");
    // the environment is not what is checked
    let env = vars(&[("IMAGES", "kip=nginx:1.25")]);
    let out = kwarm(&["check", "-f", path], &env);
    assert_exit(&out, 0, "puller ConfigMap file");
    assert_eq!(
        text(&out.stdout),
        "ConfigMap k8s-image-puller/k8s-image-puller: configuration is valid: 3 images from IMAGES, \
         Deployment watching on\n"
    );
    let yaml = std::fs::read_to_string(path).expect("fixture");
    let out = kwarm_with_stdin(&["check", "-f", "-"], &env, &yaml);
    assert_exit(&out, 0, "puller ConfigMap on stdin");
}

/// The puller's OpenShift template after `oc process` with its default parameters: a List with
/// its ConfigMap (kubernetes-image-puller's own image as KIP_IMAGE, `type: Opaque` left in).
const PROCESSED_PULLER_TEMPLATE: &str = r#"{
  "kind": "List",
  "apiVersion": "v1",
  "items": [
    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "k8s-image-puller"}},
    {
      "apiVersion": "v1",
      "kind": "ConfigMap",
      "metadata": {"name": "k8s-image-puller", "labels": {"app": "kubernetes-image-puller"}},
      "type": "Opaque",
      "data": {
        "IMAGES": "che-code=quay.io/che-incubator/che-code:next; base-developer-image=quay.io/devfile/base-developer-image:ubi9-latest;\n",
        "DAEMONSET_NAME": "kubernetes-image-puller",
        "CACHING_INTERVAL_HOURS": "1",
        "NAMESPACE": "k8s-image-puller",
        "CACHING_MEMORY_REQUEST": "10Mi",
        "CACHING_MEMORY_LIMIT": "20Mi",
        "CACHING_CPU_REQUEST": ".05",
        "CACHING_CPU_LIMIT": ".2",
        "NODE_SELECTOR": "{}",
        "IMAGE_PULL_SECRETS": "",
        "AFFINITY": "{}",
        "KIP_IMAGE": "quay.io/eclipse/kubernetes-image-puller:next",
        "TOLERATIONS": "[]"
      }
    }
  ]
}"#;

#[test]
fn check_takes_the_pullers_processed_openshift_template() {
    let out = kwarm_with_stdin(&["check", "-f", "-"], &[], PROCESSED_PULLER_TEMPLATE);
    assert_exit(&out, 0, "processed puller template");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("ConfigMap k8s-image-puller: warning: KIP_IMAGE="), "{stdout}");
    assert!(stdout.ends_with("ConfigMap k8s-image-puller: configuration is valid: 2 images from IMAGES, Deployment watching on\n"), "{stdout}");
    // unprocessed, it says how
    let template = "kind: Template\napiVersion: template.openshift.io/v1\nobjects: []\n";
    let out = kwarm_with_stdin(&["check", "-f", "-"], &[], template);
    assert_exit(&out, 2, "unprocessed template");
    assert!(text(&out.stderr).contains("oc process"), "{}", text(&out.stderr));
}

#[test]
fn check_of_a_configmap_prints_every_problem_and_exits_2() {
    let yaml = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: k8s-image-puller, namespace: tools}
data:
  IMAGES: "=quay.io/eclipse/che-theia:next;web=nginx:1.25"
  CACHING_INTERVAL_HOURS: "0"
  CACHING_MEMORY_REQUEST: "30Mi"
  MAX_IMAGES: 5000
  CACHING_MEMORY_REQEST: "5Mi"
"#;
    let out = kwarm_with_stdin(&["check", "-f", "-"], &[], yaml);
    assert_exit(&out, 2, "invalid ConfigMap");
    let stderr = text(&out.stderr);
    let mut lines = stderr.lines();
    assert_eq!(
        lines.next(),
        Some("kwarm: ConfigMap tools/k8s-image-puller: invalid configuration (5 problems):")
    );
    let problems: Vec<&str> = lines.map(str::trim).collect();
    assert!(problems[0].starts_with("MAX_IMAGES: invalid value 5000: a string (quote it"), "{stderr}");
    for (line, variable) in
        problems[1..].iter().zip(["IMAGES", "CACHING_INTERVAL_HOURS", "CACHING_MEMORY_REQUEST", "MAX_IMAGES"])
    {
        assert!(line.starts_with(&format!("{variable}: invalid value ")), "{line}");
    }
    assert_eq!(problems.len(), 5, "{stderr}");
    // a typo of a variable is a warning, printed with the ConfigMap's name
    assert!(text(&out.stdout).is_empty() || !text(&out.stdout).contains("valid"), "{}", text(&out.stdout));
}

#[test]
fn check_picks_a_configmap_by_name_and_refuses_files_without_one() {
    let two = "kind: ConfigMap\nmetadata: {name: good}\ndata: {IMAGES: 'nginx:1.25'}\n---\n\
        kind: ConfigMap\nmetadata: {name: bad}\ndata: {IMAGES: 'a=b=c'}\n";
    let out = kwarm_with_stdin(&["check", "-f", "-"], &[], two);
    assert_exit(&out, 2, "one of two invalid");
    assert!(text(&out.stdout).contains("ConfigMap good: configuration is valid"), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("ConfigMap bad: invalid configuration (1 problems)"),
        "{}",
        text(&out.stderr)
    );
    assert_exit(
        &kwarm_with_stdin(&["check", "-f", "-", "--configmap", "good"], &[], two),
        0,
        "--configmap good",
    );
    let out = kwarm_with_stdin(&["check", "-f", "-", "--configmap", "other"], &[], two);
    assert_exit(&out, 2, "no such ConfigMap");
    assert!(text(&out.stderr).contains("no ConfigMap named other"), "{}", text(&out.stderr));

    let out = kwarm_with_stdin(&["check", "-f", "-"], &[], "kind: Deployment\nmetadata: {name: kwarm}\n");
    assert_exit(&out, 2, "not a ConfigMap");
    assert!(
        text(&out.stderr).contains("no ConfigMap in the manifest, only Deployment"),
        "{}",
        text(&out.stderr)
    );
    let out = kwarm_with_stdin(&["check", "-f", "-"], &[], "data: [unclosed\n");
    assert_exit(&out, 2, "bad YAML");
    assert!(text(&out.stderr).contains("not valid YAML"), "{}", text(&out.stderr));
    let out = kwarm(&["check", "-f", "/nonexistent/configmap.yaml"], &[]);
    assert_exit(&out, 1, "unreadable file");
    assert!(text(&out.stderr).contains("reading /nonexistent/configmap.yaml"), "{}", text(&out.stderr));
}

#[test]
fn check_of_a_configmap_in_a_cluster_that_cannot_be_reached_exits_4() {
    let dir = scratch_dir("check-cluster");
    let kubeconfig = unreachable_cluster(&dir);
    let out = kwarm(
        &["check", "--configmap", "k8s-image-puller", "--kubeconfig", kubeconfig.to_str().expect("path")],
        &[],
    );
    assert_exit(&out, 4, "unreachable cluster");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// the manager's log

#[test]
fn the_manager_logs_each_failed_try_once_without_colour_and_never_renews_a_lease_it_never_held() {
    use std::process::Stdio;
    let dir = scratch_dir("manager-log");
    let kubeconfig = unreachable_cluster(&dir);
    let env = vars(&[
        ("KUBECONFIG", kubeconfig.to_str().expect("path")),
        ("IMAGES", "nginx:1.25"),
        ("METRICS_BIND_ADDRESS", "0"),
        ("HEALTH_PROBE_BIND_ADDRESS", "0"),
    ]);
    let child = Command::new(env!("CARGO_BIN_EXE_kwarm"))
        .arg("run")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kwarm run");
    // a few retries of the leader election (every 2 s) and of the first API call
    std::thread::sleep(std::time::Duration::from_millis(4500));
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let output = child.wait_with_output().expect("kwarm exits");
    let _ = std::fs::remove_dir_all(&dir);
    let log = text(&output.stderr);
    assert!(output.stdout.is_empty(), "logs go to stderr: {}", text(&output.stdout));
    assert!(log.contains("Starting kwarm"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in a log that is not a terminal:\n{log}");
    assert!(!log.contains("kube_client"), "kube's own line for a failure kwarm logs:\n{log}");
    assert!(!log.to_lowercase().contains("renew"), "a lease never held is not renewed:\n{log}");
    let acquire = log.lines().filter(|l| l.contains("Could not acquire the lease")).count();
    assert!(acquire >= 2, "one line per try of the election:\n{log}");
    for line in log.lines() {
        assert!(!line.contains(" ERROR "), "{line}");
    }
}

#[test]
fn status_wait_gives_up_at_its_timeout_when_the_cluster_stays_unreachable() {
    let dir = scratch_dir("wait-unreachable");
    let kubeconfig = unreachable_cluster(&dir);
    let env = vars(&[("KUBECONFIG", kubeconfig.to_str().expect("path")), ("DAEMONSET_NAME", "holders")]);
    let started = std::time::Instant::now();
    let out = kwarm(&["status", "--wait", "--timeout", "3s"], &env);
    let took = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    assert_exit(&out, 4, "unreachable until the timeout");
    assert!(
        took >= std::time::Duration::from_secs(2) && took < std::time::Duration::from_secs(20),
        "{took:?}"
    );
    let stderr = text(&out.stderr);
    assert_eq!(stderr.matches("kwarm: waiting: ").count(), 1, "said once while it lasts:\n{stderr}");
}

#[test]
fn status_takes_the_namespace_from_the_flag_then_namespace_then_the_kubeconfig_context() {
    let dir = scratch_dir("namespaces");
    let kubeconfig = unreachable_cluster(&dir);
    let kubeconfig = kubeconfig.to_str().expect("path");
    let read = |args: &[&str], env: &[(&str, &str)]| {
        let mut env = vars(env);
        env.push(("KUBECONFIG".into(), kubeconfig.into()));
        let out = kwarm(args, &env);
        assert_exit(&out, 4, "unreachable cluster");
        text(&out.stderr)
    };
    let flag = read(&["status", "-n", "flag", "--daemonset", "h"], &[("NAMESPACE", "env")]);
    assert!(flag.contains("reading DaemonSet flag/h"), "{flag}");
    let env = read(&["status"], &[("NAMESPACE", "env"), ("DAEMONSET_NAME", "h")]);
    assert!(env.contains("reading DaemonSet env/h"), "{env}");
    let context = read(&["status", "--daemonset", "h"], &[]);
    assert!(context.contains("reading DaemonSet tools/h"), "{context}");
    let _ = std::fs::remove_dir_all(&dir);
}
