use oci_spec::distribution::Reference;
use proptest::prelude::*;

use super::{Parts, parse};

const HEX64: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn whole(reference: &str) -> Result<String, String> {
    parse(reference).map(|p| p.whole())
}

#[test]
fn parts_follow_docker_hubs_defaults() {
    assert_eq!(
        parse("nginx").expect("nginx"),
        Parts {
            registry: "docker.io".into(),
            repository: "library/nginx".into(),
            tag: Some("latest".into()),
            digest: None
        }
    );
    for (reference, expected) in [
        ("nginx:1.25", "docker.io/library/nginx:1.25".to_string()),
        ("index.docker.io/nginx", "docker.io/library/nginx:latest".into()),
        ("bitnami/redis", "docker.io/bitnami/redis:latest".into()),
        ("localhost/app", "localhost/app:latest".into()),
        ("localhost:5000/a/b:v1", "localhost:5000/a/b:v1".into()),
        (
            "Registry.Example.COM:443/a--b/c__d/e.f:V_1.2-x",
            "Registry.Example.COM:443/a--b/c__d/e.f:V_1.2-x".into(),
        ),
        (&format!("app@sha256:{HEX64}"), format!("docker.io/library/app@sha256:{HEX64}")),
        (&format!("q.io/app:1@sha256:{HEX64}"), format!("q.io/app:1@sha256:{HEX64}")),
        ("localhost:5000", "docker.io/library/localhost:5000".into()),
    ] {
        assert_eq!(whole(reference).as_deref(), Ok(expected.as_str()), "{reference}");
    }
}

#[test]
fn what_is_wrong_is_named() {
    for (reference, says) in [
        ("", "empty"),
        ("nginx:", "tag \"\""),
        ("nginx:-x", "tag \"-x\""),
        (&format!("nginx:{}", "t".repeat(129)), "1-128"),
        ("nginx@sha256:abc", "64 hex"),
        ("nginx@md5:abc", "\"md5\""),
        ("nginx@abc", "algorithm:hex"),
        ("a-.b:1/x", "registry \"a-.b:1\""),
        ("q.io:port/x", "registry"),
        ("repo//x", "path component \"\""),
        ("Repo/x", "path component \"Repo\""),
        ("a._b", "path component \"a._b\""),
        ("a___b", "path component"),
        (&format!("q.io/{}", "a".repeat(256)), "longer than 255"),
    ] {
        let e = parse(reference).expect_err(reference);
        assert!(e.contains(says), "{reference:?}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Against the OCI crates' regular-expression parser, on arbitrary input

/// Strings built from the characters references are made of, in reference-like shapes.
fn reference_like() -> impl Strategy<Value = String> {
    let chars: Vec<char> = "abz09AZ._-_:/@".chars().collect();
    let noise =
        prop::collection::vec(prop::sample::select(chars), 0..24).prop_map(|c| c.into_iter().collect());
    let component =
        prop::sample::select(vec!["a", "b0", "a.b", "a_b", "a__b", "a-b", "a--b", "a._b", "A", "-a", "a-"]);
    let host = prop::sample::select(vec![
        "",
        "q.io/",
        "localhost/",
        "localhost:5000/",
        "a:b/",
        "127.0.0.1:5000/",
        "index.docker.io/",
        "x-.io/",
        "Q.IO/",
    ]);
    let tag = prop::sample::select(vec!["", ":1", ":v1.2-rc_3", ":", ":.x", ":-x", ":_x", ":Latest"]);
    let digest = prop::sample::select(vec![
        String::new(),
        format!("@sha256:{HEX64}"),
        format!("@sha256:{}", &HEX64[..40]),
        format!("@sha512:{HEX64}{HEX64}"),
        format!("@sha384:{HEX64}"),
        format!("@md5:{HEX64}"),
        format!("@sha256:{}", HEX64.to_uppercase()),
    ]);
    let shaped = (host, prop::collection::vec(component, 1..4), tag, digest)
        .prop_map(|(h, c, t, d)| format!("{h}{}{t}{d}", c.join("/")));
    prop_oneof![1 => noise, 3 => shaped]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn accepts_and_splits_as_the_oci_parser_does(reference in reference_like()) {
        let ours = parse(&reference);
        match Reference::try_from(reference.as_str()) {
            // The crate lets an uppercase first component through as a Docker Hub repository
            // ("Foo/bar"); registries refuse it, and so does this parser.
            Ok(r) if r.repository().bytes().any(|c| c.is_ascii_uppercase()) => {
                prop_assert!(ours.is_err(), "{reference:?} accepted as {ours:?}");
            }
            // The crate takes a registry with '_' ("a.a_a/a"), which the distribution grammar's
            // domain does not allow (no host name has one); this parser refuses it.
            Ok(r) if reference.split_once('/').is_some_and(|(first, _)| {
                first.contains(['.', ':']) && first.contains('_') && r.registry() == first
            }) => {
                prop_assert!(ours.is_err(), "{reference:?} accepted as {ours:?}");
            }
            Ok(r) => {
                let ours = ours.map_err(|e| TestCaseError::fail(format!("{reference:?} refused: {e}")))?;
                prop_assert_eq!(ours.registry.as_str(), r.registry());
                prop_assert_eq!(ours.repository.as_str(), r.repository());
                prop_assert_eq!(ours.tag.as_deref(), r.tag());
                prop_assert_eq!(ours.digest.as_deref(), r.digest());
                prop_assert_eq!(ours.whole(), r.whole());
            }
            Err(_) => prop_assert!(ours.is_err(), "{reference:?} accepted as {ours:?}"),
        }
    }
}
