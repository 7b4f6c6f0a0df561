//! Holder identity, shared by configuration, rendering and the image set: the holder container
//! (a name and an image), image references parsed once, derived container names and the names
//! kwarm reserves for itself. A leaf: it depends on no other module of kwarm.

pub mod reference;

/// Name of the init container that copies `/sleep` into the pod; holder names may not take it.
pub const INIT_CONTAINER_NAME: &str = "kip";
/// The holder that keeps the DaemonSet valid when there is nothing to warm (it runs `KIP_IMAGE`).
pub const IDLE_HOLDER_NAME: &str = "idle";

/// Whether a container name is one of kwarm's own.
pub fn is_reserved_name(name: &str) -> bool {
    name == INIT_CONTAINER_NAME || name == IDLE_HOLDER_NAME
}

/// One holder container: a name and the image it keeps on the node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    pub name: String,
    pub image: String,
}

/// An image reference, validated once: its canonical form (`nginx` →
/// `docker.io/library/nginx:latest`) recognises one image written two ways.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageRef {
    canonical: String,
}

impl ImageRef {
    /// Parses a reference as users write it; the error says what is expected.
    pub fn parse(image: &str) -> Result<ImageRef, String> {
        if image.is_empty() || image.trim() != image {
            return Err("an image reference such as registry.example.com/team/app:1.2 (no spaces)".into());
        }
        let expected = |why: String| {
            format!(
                "an image reference such as registry.example.com/team/app:1.2 or app@sha256:<64 hex> ({why})"
            )
        };
        // An IPv6 registry (`[::1]:5000/app:1`): the parser knows host names and IPv4 only, so the
        // address is checked here and the rest parsed behind a stand-in host.
        if let Some(after) = image.strip_prefix('[') {
            let (address, rest) = after
                .split_once(']')
                .ok_or_else(|| expected("an IPv6 registry in brackets, [::1]:5000".into()))?;
            address
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| expected(format!("{address:?} is not an IPv6 address")))?;
            let (port, path) = match rest.strip_prefix(':') {
                Some(rest) => rest.split_once('/').map(|(p, path)| (Some(p), path)),
                None => rest.strip_prefix('/').map(|path| (None, path)),
            }
            .ok_or_else(|| expected("a repository after the registry, [::1]:5000/app:1".into()))?;
            if let Some(port) = port
                && port.parse::<u16>().is_err()
            {
                return Err(expected(format!("port {port:?}")));
            }
            const STAND_IN: &str = "ipv6-registry.invalid";
            let inner = ImageRef::parse(&format!("{STAND_IN}/{path}"))?;
            let host = match port {
                Some(port) => format!("[{address}]:{port}"),
                None => format!("[{address}]"),
            };
            let canonical = inner.canonical.replacen(STAND_IN, &host, 1);
            return Ok(ImageRef { canonical });
        }
        let r = reference::parse(image).map_err(expected)?;
        // What the grammar lets through but registries and runtimes refuse.
        let repository = &r.repository;
        if !repository.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)) {
            return Err(expected(format!("repository {repository:?} must be lowercase")));
        }
        if let Some(tag) = &r.tag
            && !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(expected(format!(
                "tag {tag:?} may only hold ASCII letters, digits, '.', '_' and '-'"
            )));
        }
        if let Some(digest) = &r.digest
            && let Some((_, hex)) = digest.split_once(':')
            && hex.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err(expected(format!("digest {digest:?} must be lowercase hex")));
        }
        Ok(ImageRef { canonical: r.whole() })
    }

    pub fn canonical(&self) -> &str {
        &self.canonical
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.canonical)
    }
}

/// Validates an image reference and returns its canonical form (see [`ImageRef`]).
pub fn parse_image_reference(image: &str) -> Result<String, String> {
    ImageRef::parse(image).map(|r| r.canonical)
}

/// Whether `image` is kubernetes-image-puller's own image, from any registry or mirror and with
/// any tag or digest: the last path segment of its repository names the puller
/// (`quay.io/eclipse/kubernetes-image-puller:next`, `mirror.corp/che/kubernetes-image-puller@sha256:…`,
/// `registry.local/eclipse-kubernetes-image-puller:7.9`).
pub fn is_puller_image(image: &str) -> bool {
    let repository = image.split('@').next().unwrap_or(image);
    let last = repository.rsplit('/').next().unwrap_or(repository);
    let last = last.split(':').next().unwrap_or(last);
    last.to_ascii_lowercase().contains("kubernetes-image-puller")
}

/// Whether `image` is kwarm's sleep image or a mirror of it: its repository's path ends in
/// `kwarm/sleep` (`ghcr.io/kwarm/sleep:v0.1.0`, `127.0.0.1:5000/kwarm/sleep:dev`,
/// `mirror.corp/kwarm/sleep@sha256:…`), with any tag or digest.
pub fn is_kwarm_sleep_image(image: &str) -> bool {
    let repository = image.split('@').next().unwrap_or(image);
    let (path, last) = repository.rsplit_once('/').unwrap_or(("", repository));
    let last = last.split(':').next().unwrap_or(last);
    last == "sleep" && (path == "kwarm" || path.ends_with("/kwarm"))
}

/// A container name derived from the image alone, so it never changes while other images come and
/// go: readable stem (last path segment and tag) plus a hash of the canonical reference.
pub fn derived_holder_name(canonical: &str) -> String {
    let without_digest = canonical.split('@').next().unwrap_or(canonical);
    let last_segment = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let mut stem = String::with_capacity(last_segment.len());
    for ch in last_segment.chars() {
        let c = ch.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            stem.push(c);
        } else if !stem.ends_with('-') {
            stem.push('-');
        }
    }
    let stem: String = stem.trim_matches('-').chars().take(54).collect();
    let stem = stem.trim_end_matches('-');
    let hash = fnv1a32(canonical.as_bytes());
    if stem.is_empty() { format!("image-{hash:08x}") } else { format!("{stem}-{hash:08x}") }
}

/// FNV-1a, 32 bits: tiny, stable across Rust releases (unlike `DefaultHasher`).
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_image_written_two_ways_is_one_image_ref() {
        let short = ImageRef::parse("nginx").expect("valid");
        let long = ImageRef::parse("docker.io/library/nginx:latest").expect("valid");
        assert_eq!(short, long);
        assert_eq!(short.canonical(), "docker.io/library/nginx:latest");
        assert_eq!(short.to_string(), "docker.io/library/nginx:latest");
        assert_ne!(ImageRef::parse("nginx:1").expect("valid"), short);
    }

    #[test]
    fn bad_references_say_what_is_expected() {
        let upper_digest = format!("nginx@sha256:{}", "A".repeat(64));
        for bad in ["", " nginx", "nginx ", "UPPER/case:1", "team/App:1", "a b", "nginx:tàg", &upper_digest]
        {
            let e = ImageRef::parse(bad).expect_err(bad);
            assert!(e.contains("an image reference such as"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn an_ipv6_registry_is_a_registry() {
        let r = ImageRef::parse("[::1]:5000/team/app:1").expect("valid");
        assert_eq!(r.canonical(), "[::1]:5000/team/app:1");
        assert_eq!(ImageRef::parse("[fd00::2]/app").expect("valid").canonical(), "[fd00::2]/app:latest");
        for bad in ["[::1]:5000", "[nope]:5000/app", "[::1]:port/app", "[::1/app", "[::1]:5000/App:1"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kwarms_own_names_are_reserved() {
        assert!(is_reserved_name(INIT_CONTAINER_NAME) && is_reserved_name(IDLE_HOLDER_NAME));
        assert!(!is_reserved_name("nginx"));
    }
}
