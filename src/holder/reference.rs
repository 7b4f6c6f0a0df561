//! Image references by the distribution grammar (`[domain/]path[:tag][@digest]`), read in one pass.
//!
//! Why not the OCI crates' parser: it matches one regular expression whose Unicode tag class,
//! repeated up to 128 times, compiles to a large automaton on first use — about 16 MiB of heap
//! at its peak, most of an idle manager's memory — and every pod event runs it once per
//! container. The grammar is small and fully specified; the tests hold this parser to the
//! crate's on arbitrary input.

/// The parts of a reference, with Docker Hub's defaults applied (`nginx` →
/// `docker.io`, `library/nginx`, tag `latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parts {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Parts {
    /// `registry/repository[:tag][@digest]`.
    pub fn whole(&self) -> String {
        let mut out = format!("{}/{}", self.registry, self.repository);
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest);
        }
        out
    }
}

/// Longest repository path registries accept.
const REPOSITORY_MAX: usize = 255;
/// Longest tag.
const TAG_MAX: usize = 128;

/// Splits and checks `reference`; the error says what is wrong, in a few words.
pub fn parse(reference: &str) -> Result<Parts, String> {
    if reference.is_empty() {
        return Err("empty".into());
    }
    let (name_tag, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let (name, tag) = match name_tag.rfind(':') {
        Some(i) if !name_tag[i..].contains('/') => (&name_tag[..i], Some(&name_tag[i + 1..])),
        _ => (name_tag, None),
    };
    if let Some(tag) = tag
        && !valid_tag(tag)
    {
        return Err(format!(
            "tag {tag:?} is not 1-{TAG_MAX} of letters, digits, '_', '.', '-', not starting with '.' or '-'"
        ));
    }
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    let (registry, repository) = split_name(name)?;
    if repository.len() > REPOSITORY_MAX {
        return Err(format!("the repository is longer than {REPOSITORY_MAX} characters"));
    }
    let tag = match (tag, digest) {
        (None, None) => Some("latest".to_string()),
        (tag, _) => tag.map(str::to_string),
    };
    Ok(Parts { registry, repository, tag, digest: digest.map(str::to_string) })
}

/// `[domain/]component[/component…]` → (registry, repository), Docker Hub's defaults applied.
fn split_name(name: &str) -> Result<(String, String), String> {
    let (first, rest) = match name.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    };
    // The first part names a registry when it looks like a host: a dot, a port, or localhost.
    let is_domain = rest.is_some() && (first.contains(['.', ':']) || first == "localhost");
    let (registry, path) = match rest {
        Some(rest) if is_domain => {
            if !valid_domain(first) {
                return Err(format!(
                    "registry {first:?} is not a host name or address with an optional port"
                ));
            }
            (first, rest)
        }
        _ => ("docker.io", name),
    };
    for component in path.split('/') {
        if !valid_path_component(component) {
            return Err(format!(
                "path component {component:?} is not lowercase letters and digits joined by '.', '_', '__' or dashes"
            ));
        }
    }
    let registry = if registry == "index.docker.io" { "docker.io" } else { registry };
    let repository = if registry == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    Ok((registry.to_string(), repository))
}

/// `host[:port]`, the host a name of dot-separated labels (letters, digits, inner dashes).
fn valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    host.split('.').all(label_ok)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()))
}

/// Lowercase letters and digits, joined by `.`, `_`, `__` or any number of `-`.
fn valid_path_component(component: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = component.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        if !(separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|c| c == b'-'))
        {
            return false;
        }
    }
    true
}

fn valid_tag(tag: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_MAX
        && word(b[0])
        && b.iter().all(|c| word(*c) || *c == b'.' || *c == b'-')
}

/// `algorithm:hex`: sha256, sha384 or sha512 with the matching number of hex digits.
fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("digest {digest:?} is not algorithm:hex"));
    };
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(format!("digest algorithm {algorithm:?} is not sha256, sha384 or sha512")),
    };
    if hex.len() != length || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("a {algorithm} digest is {length} hex digits"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
