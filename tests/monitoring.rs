//! The chart's PrometheusRule and Grafana dashboard name only series the manager exports: every
//! `kwarm_*` name in them is one that `Metrics` registers (as the text exposition names it), and
//! every expression is valid PromQL.

use std::collections::BTreeSet;
use std::path::Path;

use kwarm::metrics::{CategoryLabel, Metrics, ReasonLabel, ResultLabel, StateLabel, StatusLabel, WatchLabel};

/// The sample names /metrics can carry, from the `# TYPE` lines of the exposition: a counter's
/// samples end in `_total`, a histogram's in `_bucket`, `_sum` and `_count`. A labelled family
/// shows up only once it has a child, so each gets one (a family added to `Metrics` and not here
/// fails this test when a rule uses it: add it below).
fn exported_names() -> BTreeSet<String> {
    let m = Metrics::new();
    m.pulls.get_or_create(&StatusLabel { status: "success" }).inc();
    m.images.get_or_create(&StateLabel { state: "warm" }).set(1);
    m.reconcile_errors.get_or_create(&CategoryLabel { category: "kube" }).inc();
    m.applies.get_or_create(&StatusLabel { status: "success" }).inc();
    m.watch_errors.get_or_create(&WatchLabel { watch: "pods" }).inc();
    m.node_gate_releases.get_or_create(&ReasonLabel { reason: "warm" }).inc();
    m.digest_checks.get_or_create(&ResultLabel { result: "ok" }).inc();
    m.rollout_gate_releases.get_or_create(&ReasonLabel { reason: "warm" }).inc();
    m.webhook_admissions.get_or_create(&ResultLabel { result: "gated" }).inc();
    let mut names = BTreeSet::new();
    for line in m.encode().lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut words = rest.split(' ');
        let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// Every `kwarm_<name>` token of a file of the chart.
fn named_in(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let mut names = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("kwarm_") {
        let preceded = rest[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn rule_and_dashboard_name_only_exported_metrics() {
    let exported = exported_names();
    assert!(exported.contains("kwarm_images") && exported.contains("kwarm_pulls_total"), "{exported:?}");
    for file in ["deploy/helm/templates/prometheusrule.yaml", "deploy/helm/dashboards/kwarm.json"] {
        let named = named_in(file);
        assert!(named.len() >= 5, "{file} names too few kwarm metrics: {named:?}");
        let unknown: Vec<_> = named.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the manager does not export: {unknown:?}\nexported: {exported:?}"
        );
    }
}

#[test]
fn the_check_sees_a_name_the_manager_does_not_export() {
    assert!(!exported_names().contains("kwarm_images_total"));
    assert!(
        !exported_names().contains("kwarm_pull_duration_seconds"),
        "a histogram's name alone is no series"
    );
}

/// The `expr:` lines of the rule template with its template actions filled in (the selector, the
/// thresholds), and the dashboard's target expressions with Grafana's variables filled in.
fn expressions() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rule = std::fs::read_to_string(root.join("deploy/helm/templates/prometheusrule.yaml")).expect("rule");
    let mut found = Vec::new();
    for line in rule.lines() {
        let Some(expr) = line.trim().strip_prefix("expr: ") else { continue };
        let filled = expr
            .replace("{{- $sel -}}", "namespace=\"kwarm\", job=\"kwarm-metrics\"")
            .replace("{{ $sel }}", "namespace=\"kwarm\", job=\"kwarm-metrics\"")
            .replace("{{ $r.syncStaleSeconds }}", "900");
        assert!(!filled.contains("{{"), "a template action the test does not fill in: {expr}");
        found.push(("rule".to_owned(), filled));
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/helm/dashboards/kwarm.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let filled = expr
                .replace("$__rate_interval", "5m")
                .replace("$namespace", "kwarm")
                .replace("$job", "kwarm-metrics");
            found.push((format!("dashboard panel {}", panel["title"]), filled));
        }
    }
    found
}

#[test]
fn rule_and_dashboard_expressions_are_promql_on_exported_metrics() {
    let exported = exported_names();
    let expressions = expressions();
    assert!(expressions.len() >= 15, "{expressions:?}");
    for (what, expr) in expressions {
        let ast =
            promql_parser::parser::parse(&expr).unwrap_or_else(|e| panic!("{what}: not PromQL: {e}\n{expr}"));
        let mut names = BTreeSet::new();
        collect_names(&ast, &mut names);
        assert!(!names.is_empty(), "{what}: names no metric: {expr}");
        for name in names {
            assert!(
                exported.contains(&name),
                "{what} names {name}, which the manager does not export: {expr}"
            );
        }
    }
}

/// The metric names of every vector selector in an expression.
fn collect_names(expr: &promql_parser::parser::Expr, names: &mut BTreeSet<String>) {
    use promql_parser::parser::Expr;
    match expr {
        Expr::VectorSelector(v) => names.extend(v.name.clone()),
        Expr::MatrixSelector(m) => names.extend(m.vs.name.clone()),
        Expr::Aggregate(a) => {
            collect_names(&a.expr, names);
            if let Some(p) = &a.param {
                collect_names(p, names);
            }
        }
        Expr::Unary(u) => collect_names(&u.expr, names),
        Expr::Binary(b) => {
            collect_names(&b.lhs, names);
            collect_names(&b.rhs, names);
        }
        Expr::Paren(p) => collect_names(&p.expr, names),
        Expr::Subquery(s) => collect_names(&s.expr, names),
        Expr::Call(c) => c.args.args.iter().for_each(|a| collect_names(a, names)),
        Expr::Extension(_) | Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
    }
}
