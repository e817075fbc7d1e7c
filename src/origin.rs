//! The `Origin` rule of the socket endpoints (WebSocket upgrade and LongPoll), against
//! cross-site WebSocket hijacking: a page from another site must not open a socket with the
//! user's cookies. Pure.
//!
//! Allowed: a request without `Origin` (not a browser); an origin whose host is the host the
//! request was sent to (its `Host` header; hostname only, scheme and port are not compared, as
//! Phoenix's default `check_origin: true` compares hosts: the React page on port 4001 opens its
//! socket on port 4080 of the same host); an origin matching a `--check-origin` entry; anything
//! when the entries include `any`. Refused: every other origin, including `null` (sandboxed
//! frames, `file:` pages), which no allow-list entry matches.
//!
//! Entries (Phoenix's syntax): `example.com`, `//example.com:8443`, `https://example.com`,
//! `//*.example.com` (the domain and its subdomains); a part that is given must match.

/// Why an origin was refused: the text is logged and is the body of the 403.
pub fn check(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> Result<(), String> {
    let Some(origin) = origin else { return Ok(()) };
    if allowed.iter().any(|a| a == "any") {
        return Ok(());
    }
    let refused = || Err(format!("origin {origin} is not this host or a --check-origin entry"));
    let Some(parsed) = Parts::parse(origin).filter(|p| p.scheme.is_some()) else {
        return refused();
    };
    let same_host = host.map(host_name).is_some_and(|h| h.eq_ignore_ascii_case(parsed.host));
    if same_host || allowed.iter().filter_map(|a| Parts::parse(a)).any(|a| a.admits(&parsed)) {
        return Ok(());
    }
    refused()
}

/// Checks a `--check-origin` entry when the server starts.
pub fn validate_entry(entry: &str) -> Result<(), String> {
    match entry == "any" || Parts::parse(entry).is_some() {
        true => Ok(()),
        false => Err(format!("--check-origin: not an origin: {entry}")),
    }
}

/// `Host` header value → hostname (`[::1]:4080` → `[::1]`, `example.com:80` → `example.com`).
fn host_name(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

/// An origin or an entry: `[scheme:][//]host[:port]`, the host possibly `*.domain`.
struct Parts<'a> {
    scheme: Option<&'a str>,
    host: &'a str,
    port: Option<&'a str>,
}

impl<'a> Parts<'a> {
    fn parse(s: &'a str) -> Option<Parts<'a>> {
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => (Some(scheme), rest),
            None => (None, s.strip_prefix("//").unwrap_or(s)),
        };
        let rest = rest.trim_end_matches('/');
        let host = host_name(rest);
        let port = rest.get(host.len() + 1..).filter(|p| !p.is_empty());
        let valid = !host.is_empty() && !host.contains(['/', '?', '#', '@', ' ']) && host != "null";
        valid.then_some(Parts { scheme, host, port })
    }

    /// This entry admits `origin`: every part the entry gives matches.
    fn admits(&self, origin: &Parts<'_>) -> bool {
        let host_ok = match self.host.strip_prefix("*.") {
            Some(domain) => {
                let host = origin.host.to_ascii_lowercase();
                let domain = domain.to_ascii_lowercase();
                host == domain || host.ends_with(&format!(".{domain}"))
            }
            None => self.host.eq_ignore_ascii_case(origin.host),
        };
        let same = |a: Option<&str>, b: Option<&str>| a.is_none_or(|a| Some(a) == b);
        host_ok && same(self.scheme, origin.scheme) && same(self.port, origin.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn same_host_any_port() {
        let host = Some("127.0.0.1:4080");
        assert!(check(None, host, &[]).is_ok());
        assert!(check(Some("http://127.0.0.1:4001"), host, &[]).is_ok());
        assert!(check(Some("http://LOCALHOST:5173"), Some("localhost:4080"), &[]).is_ok());
        assert!(check(Some("http://[::1]:4001"), Some("[::1]:4080"), &[]).is_ok());
        assert!(check(Some("https://evil.example"), host, &[]).is_err());
        assert!(check(Some("http://127.0.0.1.evil.example"), host, &[]).is_err());
        assert!(check(Some("http://127.0.0.1"), None, &[]).is_err());
    }

    #[test]
    fn null_and_garbage_are_refused() {
        let host = Some("example.com");
        let err = check(Some("null"), host, &list(&["*.example.com"])).unwrap_err();
        assert_eq!(err, "origin null is not this host or a --check-origin entry");
        assert!(check(Some("example.com"), host, &[]).is_err());
        assert!(check(Some("null"), host, &list(&["any"])).is_ok());
    }

    #[test]
    fn listed_origins() {
        let allowed =
            list(&["app.example.com", "//*.other.com", "https://secure.com", "//p.com:8443"]);
        let ok = |o: &str| check(Some(o), Some("api.internal"), &allowed).is_ok();
        assert!(ok("https://app.example.com"));
        assert!(ok("http://a.b.other.com:8080") && ok("http://other.com"));
        assert!(!ok("http://notother.com"));
        assert!(ok("https://secure.com") && !ok("http://secure.com"));
        assert!(ok("https://p.com:8443") && !ok("https://p.com"));
        assert!(!ok("https://evil.com"));
        assert!(validate_entry("https://x.com").is_ok() && validate_entry("a b").is_err());
    }
}
