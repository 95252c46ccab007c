//! Parsing of the load target URL: `http://HOST[:PORT][/PATH][?QUERY]`, loopback hosts only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::LoadError;

/// Where to send requests, and what to put on the request line and in `Host:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The address to connect to (always loopback).
    pub addr: SocketAddr,
    /// The `Host` header value, as written in the URL.
    pub host_header: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Parses `url`; refuses anything but `http://` to 127.0.0.0/8, `localhost` or `::1`.
pub fn parse(url: &str) -> Result<Target, LoadError> {
    let invalid = |why: &str| LoadError::InvalidUrl {
        url: url.to_string(),
        reason: why.to_string(),
    };
    let rest = match url.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &url[7..],
        _ if url.contains("://") => return Err(invalid("only http:// URLs are supported")),
        _ => return Err(invalid("expected http://HOST[:PORT]/PATH")),
    };
    let rest = rest.split('#').next().unwrap_or("");
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() {
        return Err(invalid("missing host"));
    }
    if authority.contains('@') {
        return Err(invalid("user info is not supported"));
    }
    let (host, port) = split_host_port(authority).ok_or_else(|| invalid("bad host or port"))?;
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        match host.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => return Err(LoadError::NotLoopback(host.to_string())),
        }
    };
    if !ip.is_loopback() {
        return Err(LoadError::NotLoopback(host.to_string()));
    }
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(invalid("the path has spaces or control characters"));
    }
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host_header: authority.to_string(),
        path,
    })
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`; the port defaults to 80.
fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => 80,
        Some(p) => p.parse().ok()?,
    };
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_loopback_forms() {
        let t = parse("http://127.0.0.1:8080/work?io_ms=1").expect("valid");
        assert_eq!(t.addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(t.path, "/work?io_ms=1");
        assert_eq!(t.host_header, "127.0.0.1:8080");
        assert_eq!(parse("http://localhost").expect("valid").path, "/");
        assert_eq!(parse("HTTP://127.1.2.3:9?x").expect("valid").path, "/?x");
        let v6 = parse("http://[::1]:81/a").expect("valid");
        assert_eq!(v6.addr, "[::1]:81".parse().expect("addr"));
    }

    #[test]
    fn refuses_other_hosts_and_schemes() {
        for url in [
            "http://10.0.0.1/",
            "http://example.com/",
            "http://[::2]:80/",
            "http://0.0.0.0/",
        ] {
            assert!(
                matches!(parse(url), Err(LoadError::NotLoopback(_))),
                "{url}"
            );
        }
        for url in [
            "https://127.0.0.1/",
            "127.0.0.1:80",
            "http://",
            "http://127.0.0.1:x/",
            "http://u@127.0.0.1/",
        ] {
            assert!(
                matches!(parse(url), Err(LoadError::InvalidUrl { .. })),
                "{url}"
            );
        }
    }
}
