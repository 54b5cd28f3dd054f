//! Where a registry is reached and how, as dockerd decides it: berthd's registry options
//! (`--insecure-registry`, `--registry-mirror`, `--allow-registry`, `--secure-registry`,
//! `--registry-certs-dir`), the endpoints they give a registry, and the ping (`GET /v2/`)
//! that picks the first endpoint that answers.
//!
//! - A secure registry is reached over HTTPS, its certificate checked against the host's
//!   CA store (rustls-platform-verifier) and the `*.crt` files in `certs.d/<host:port>/`,
//!   as Docker lays them out.
//! - An insecure registry (127.0.0.0/8 and ::1 by default, as in Docker, and those given to
//!   `--insecure-registry`: CIDRs matched against the addresses the name resolves to, or
//!   `host[:port]` names) is tried over HTTPS without checking the certificate, then over
//!   plain HTTP.
//! - Pulls from Docker Hub try each `--registry-mirror` first, in order; a mirror that
//!   fails or lacks the image gives way to the next endpoint, as in Docker.
//! - `--allow-registry` (berth's own, for hosts that must confine what clients pull) refuses
//!   every registry it does not name before anything is sent: not even a name is resolved.
//! - `--secure-registry` (berth's own) checks a loopback registry's certificate, which
//!   Docker never does (its loopback registries are always insecure).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};

use crate::{EngineError, Result};

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// The host Docker Hub's API answers on.
const DOCKER_HUB_HOST: &str = "index.docker.io";
/// Where Docker's CLI logs in when given no server.
const DOCKER_HUB_LOGIN: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];

/// berthd's registry options, as given on its command line.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// `--insecure-registry`: CIDRs or `host[:port]` names.
    pub insecure: Vec<String>,
    /// `--registry-mirror`: URLs of Docker Hub mirrors.
    pub mirrors: Vec<String>,
    /// `--allow-registry`: the only registries reached (CIDRs or `host[:port]` names);
    /// empty: any.
    pub allowed: Vec<String>,
    /// `--secure-registry`: `host[:port]` names reached over checked TLS even on loopback.
    pub secure: Vec<String>,
    /// `--registry-certs-dir`: per-registry CA certificates, `<dir>/<host:port>/*.crt`.
    pub certs_dir: PathBuf,
    /// `--allow-fetch`: the only hosts ADD's URLs are fetched from (CIDRs or `host[:port]`
    /// names); empty: any.
    pub fetch_allowed: Vec<String>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure: Vec::new(),
            mirrors: Vec::new(),
            allowed: Vec::new(),
            secure: Vec::new(),
            certs_dir: PathBuf::from("/etc/berth/certs.d"),
            fetch_allowed: Vec::new(),
        }
    }
}

/// Why berthd's registry options are refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryOptionError {
    #[error("--{option} {value:?}: {why}")]
    Invalid {
        option: &'static str,
        value: String,
        why: String,
    },
}

/// A set of registries named by CIDR or by `host[:port]`.
#[derive(Clone, Debug, Default)]
struct Matcher {
    nets: Vec<IpNet>,
    names: Vec<String>,
}

impl Matcher {
    fn parse(option: &'static str, values: &[String]) -> Result<Matcher, RegistryOptionError> {
        let mut m = Matcher::default();
        for v in values {
            let invalid = |why: &str| RegistryOptionError::Invalid {
                option,
                value: v.clone(),
                why: why.to_string(),
            };
            if v.contains('/') {
                if v.contains("://") {
                    return Err(invalid("a CIDR or host[:port] expected, not a URL"));
                }
                m.nets.push(
                    v.parse::<IpNet>()
                        .map_err(|e| invalid(&e.to_string()))?
                        .trunc(),
                );
            } else if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == '@') {
                return Err(invalid("a CIDR or host[:port] expected"));
            } else {
                m.names.push(v.to_ascii_lowercase());
            }
        }
        Ok(m)
    }

    /// Whether `domain` is named, by name (with or without its port) or, for an address,
    /// by CIDR.
    fn names(&self, domain: &str) -> bool {
        let host = host_of(domain);
        self.names.iter().any(|n| n == domain || n == host)
            || literal_addresses(host).iter().any(|ip| self.contains(ip))
    }

    fn contains(&self, ip: &IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    fn shown(&self) -> Vec<String> {
        self.nets
            .iter()
            .map(ToString::to_string)
            .chain(self.names.iter().cloned())
            .collect()
    }
}

/// What an allow-list names, as its refusals show it.
fn listed(allowed: &Option<Matcher>) -> String {
    allowed
        .as_ref()
        .map(Matcher::shown)
        .unwrap_or_default()
        .join(", ")
}

/// A Docker Hub mirror.
#[derive(Clone, Debug)]
struct Mirror {
    url: String,
    host: String,
    plain: bool,
}

/// How an endpoint's connection is made.
#[derive(Clone, Debug)]
enum Tls {
    /// Plain HTTP.
    Plain,
    /// HTTPS, any certificate accepted (an insecure registry).
    Unchecked,
    /// HTTPS, the certificate checked against the host's CAs and these (PEM) ones.
    Checked(Vec<Vec<u8>>),
}

/// One place a registry's API is reached.
#[derive(Clone, Debug)]
pub(super) struct Endpoint {
    /// `host[:port]` to connect to.
    pub host: String,
    tls: Tls,
    /// A Docker Hub mirror (which gives way to the next endpoint when it fails).
    pub mirror: bool,
}

impl Endpoint {
    pub(super) fn base(&self) -> String {
        let scheme = if matches!(self.tls, Tls::Plain) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", self.host)
    }
}

/// An endpoint that answered its ping, with a client for it.
pub(super) struct Connected {
    pub endpoint: Endpoint,
    pub client: oci_client::Client,
    /// The ping's URL, status and `WWW-Authenticate` challenge.
    pub url: String,
    pub status: reqwest::StatusCode,
    pub challenge: String,
}

/// The registry options in force.
#[derive(Clone, Debug)]
pub struct Registries {
    insecure: Matcher,
    allowed: Option<Matcher>,
    secure: Matcher,
    mirrors: Vec<Mirror>,
    certs_dir: PathBuf,
    fetch_allowed: Option<Matcher>,
}

impl Default for Registries {
    fn default() -> Self {
        Registries::new(&RegistryOptions::default()).expect("the default options are valid")
    }
}

impl Registries {
    pub fn new(o: &RegistryOptions) -> Result<Registries, RegistryOptionError> {
        let mut insecure = Matcher::parse("insecure-registry", &o.insecure)?;
        // Docker's default insecure registries, which its users rely on for local ones.
        for net in ["127.0.0.0/8", "::1/128"] {
            let net: IpNet = net.parse().expect("a valid CIDR");
            if !insecure.nets.contains(&net) {
                insecure.nets.push(net);
            }
        }
        let allowed = if o.allowed.is_empty() {
            None
        } else {
            Some(Matcher::parse("allow-registry", &o.allowed)?)
        };
        let fetch_allowed = if o.fetch_allowed.is_empty() {
            None
        } else {
            Some(Matcher::parse("allow-fetch", &o.fetch_allowed)?)
        };
        let secure = Matcher::parse("secure-registry", &o.secure)?;
        if !secure.nets.is_empty() {
            return Err(RegistryOptionError::Invalid {
                option: "secure-registry",
                value: secure.shown().join(","),
                why: "a host[:port] expected, not a CIDR".into(),
            });
        }
        let mut mirrors = Vec::new();
        for url in &o.mirrors {
            let invalid = |why: &str| RegistryOptionError::Invalid {
                option: "registry-mirror",
                value: url.clone(),
                why: why.to_string(),
            };
            let (plain, rest) = if let Some(rest) = url.strip_prefix("http://") {
                (true, rest)
            } else if let Some(rest) = url.strip_prefix("https://") {
                (false, rest)
            } else {
                return Err(invalid("an http:// or https:// URL expected"));
            };
            let host = rest.trim_end_matches('/');
            if host.is_empty() || host.contains(['/', '?', '#', '@']) || host.contains(' ') {
                return Err(invalid(
                    "a mirror is a scheme and a host[:port] (no path, as in Docker)",
                ));
            }
            mirrors.push(Mirror {
                url: format!("{}://{host}/", if plain { "http" } else { "https" }),
                host: host.to_ascii_lowercase(),
                plain,
            });
        }
        Ok(Registries {
            insecure,
            allowed,
            secure,
            mirrors,
            certs_dir: o.certs_dir.clone(),
            fetch_allowed,
        })
    }

    /// The `RegistryConfig` of `GET /info`, as dockerd shows it.
    pub fn info(&self) -> serde_json::Value {
        let mut indexes = serde_json::Map::new();
        indexes.insert(
            DOCKER_HUB.into(),
            serde_json::json!({
                "Name": DOCKER_HUB,
                "Mirrors": self.mirrors.iter().map(|m| m.url.clone()).collect::<Vec<_>>(),
                "Secure": true,
                "Official": true,
            }),
        );
        for name in &self.insecure.names {
            indexes.insert(
                name.clone(),
                serde_json::json!({"Name": name, "Mirrors": [], "Secure": false, "Official": false}),
            );
        }
        serde_json::json!({
            "AllowNondistributableArtifactsCIDRs": null,
            "AllowNondistributableArtifactsHostnames": null,
            "InsecureRegistryCIDRs": self.insecure.nets.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "IndexConfigs": indexes,
            "Mirrors": self.mirrors.iter().map(|m| m.url.clone()).collect::<Vec<_>>(),
        })
    }

    /// Whether `--allow-registry` names `domain` (or was not given).
    fn allows(&self, domain: &str) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.names(domain))
    }

    /// The refusal of `what` (as "pull x:1") because `--allow-registry` leaves out `domain`.
    fn refused(&self, domain: &str, what: &str) -> EngineError {
        EngineError::Forbidden(format!(
            "berth cannot {what}: this daemon reaches only the registries given to --allow-registry ({}), not {domain}",
            listed(&self.allowed)
        ))
    }

    /// Whether `--allow-fetch` names `host[:port]` (or was not given): ADD's URLs.
    pub fn may_fetch(&self, host: &str) -> bool {
        self.fetch_allowed.as_ref().is_none_or(|a| a.names(host))
    }

    /// The refusal of ADD `url` because `--allow-fetch` leaves out `host`.
    pub fn fetch_refused(&self, url: &str, host: &str) -> EngineError {
        EngineError::Forbidden(format!(
            "berth cannot fetch {url}: this daemon fetches ADD's URLs only from the hosts given to --allow-fetch ({}), not {host}",
            listed(&self.fetch_allowed)
        ))
    }

    /// Whether `domain` is an insecure registry: named by `--insecure-registry`, or
    /// resolving to an address in an insecure CIDR (unless `--secure-registry` names it).
    async fn insecure(&self, domain: &str) -> bool {
        if self.secure.names(domain) {
            return false;
        }
        if self.insecure.names.iter().any(|n| n == domain) {
            return true;
        }
        let host = host_of(domain);
        let mut addresses = literal_addresses(host);
        if addresses.is_empty() {
            // A name: what it resolves to, as dockerd checks it (a name that does not
            // resolve is secure).
            if let Ok(Ok(found)) = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::net::lookup_host((host.to_string(), 0)),
            )
            .await
            {
                addresses = found.map(|a| a.ip()).collect();
            }
        }
        addresses.iter().any(|ip| self.insecure.contains(ip))
    }

    /// Where `domain`'s registry is reached, in the order to try: for a pull from Docker
    /// Hub its mirrors first; an insecure registry over HTTPS, then plain HTTP. Those
    /// `--allow-registry` leaves out are dropped; none left refuses `what` (as "pull x:1").
    pub(super) async fn endpoints(
        &self,
        domain: &str,
        pull: bool,
        what: &str,
    ) -> Result<Vec<Endpoint>> {
        let mut out = Vec::new();
        if domain == DOCKER_HUB {
            if pull {
                for m in self.mirrors.iter().filter(|m| self.allows(&m.host)) {
                    let tls = if m.plain {
                        Tls::Plain
                    } else if self.insecure(&m.host).await {
                        Tls::Unchecked
                    } else {
                        Tls::Checked(self.ca_certificates(&m.host)?)
                    };
                    out.push(Endpoint {
                        host: m.host.clone(),
                        tls,
                        mirror: true,
                    });
                }
            }
            if self.allows(DOCKER_HUB) {
                out.push(Endpoint {
                    host: DOCKER_HUB_HOST.into(),
                    tls: Tls::Checked(self.ca_certificates(DOCKER_HUB_HOST)?),
                    mirror: false,
                });
            } else if out.is_empty() {
                return Err(self.refused(domain, what));
            }
        } else if !self.allows(domain) {
            return Err(self.refused(domain, what));
        } else if self.insecure(domain).await {
            for tls in [Tls::Unchecked, Tls::Plain] {
                out.push(Endpoint {
                    host: domain.to_string(),
                    tls,
                    mirror: false,
                });
            }
        } else {
            out.push(Endpoint {
                host: domain.to_string(),
                tls: Tls::Checked(self.ca_certificates(domain)?),
                mirror: false,
            });
        }
        Ok(out)
    }

    /// The CA certificates `certs.d/<host>/*.crt` holds for a registry, as PEM. Client
    /// certificates (`*.cert` and `*.key`) are refused: berth's client cannot present them.
    fn ca_certificates(&self, host: &str) -> Result<Vec<Vec<u8>>> {
        let dir = self.certs_dir.join(host);
        read_ca_dir(&dir, host)
    }

    /// Pings each of `endpoints` (`GET /v2/`, with `basic` credentials when given) until one
    /// answers, and gives a client for it. `monolithic_push`: blobs are uploaded in one
    /// request each.
    pub(super) async fn connect(
        &self,
        endpoint: &Endpoint,
        monolithic_push: bool,
        basic: Option<(&str, &str)>,
    ) -> Result<Connected> {
        let url = format!("{}/v2/", endpoint.base());
        let http = http_client(endpoint)?;
        let mut ping = http.get(&url);
        if let Some((user, password)) = basic {
            ping = ping.basic_auth(user, Some(password));
        }
        let res = ping.send().await.map_err(|e| {
            EngineError::Internal(format!("Get {url:?}: {}", vmm_launcher::chain(&e)))
        })?;
        let status = res.status();
        let challenge = res
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_string();
        let client = distribution_client(endpoint, monolithic_push)?;
        Ok(Connected {
            endpoint: endpoint.clone(),
            client,
            url,
            status,
            challenge,
        })
    }

    /// The first of `endpoints` that answers its ping.
    pub(super) async fn connect_first(
        &self,
        endpoints: &[Endpoint],
        monolithic_push: bool,
        basic: Option<(&str, &str)>,
    ) -> Result<Connected> {
        let mut last = None;
        for endpoint in endpoints {
            match self.connect(endpoint, monolithic_push, basic).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    log::info!("registry endpoint {} failed: {e}", endpoint.base());
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| EngineError::Internal("no registry endpoint to reach".into())))
    }
}

/// The distribution API's client for `endpoint`. `monolithic_push`: each blob is uploaded
/// in one request; else in chunks of 4 MiB (a `PATCH` each).
pub(super) fn distribution_client(
    endpoint: &Endpoint,
    monolithic_push: bool,
) -> Result<oci_client::Client> {
    let (protocol, accept_invalid, extra) = match &endpoint.tls {
        Tls::Plain => (
            ClientProtocol::HttpsExcept(vec![endpoint.host.clone()]),
            false,
            Vec::new(),
        ),
        Tls::Unchecked => (ClientProtocol::Https, true, Vec::new()),
        Tls::Checked(pems) => (
            ClientProtocol::Https,
            false,
            pems.iter()
                .map(|p| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: p.clone(),
                })
                .collect(),
        ),
    };
    oci_client::Client::try_from(ClientConfig {
        protocol,
        accept_invalid_certificates: accept_invalid,
        extra_root_certificates: extra,
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(120)),
        use_monolithic_push: monolithic_push,
        ..ClientConfig::default()
    })
    .map_err(|e| {
        EngineError::Internal(format!(
            "cannot make a registry client for {}: {}",
            endpoint.host,
            vmm_launcher::chain(&e)
        ))
    })
}

/// A plain HTTP client for `endpoint` (its TLS as the endpoint says), for the requests
/// outside the distribution API's client: pings and searches. A request may take a minute.
pub(super) fn http_client(endpoint: &Endpoint) -> Result<reqwest::Client> {
    let mut http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(60));
    match &endpoint.tls {
        Tls::Plain => {}
        Tls::Unchecked => http = http.danger_accept_invalid_certs(true),
        Tls::Checked(pems) => {
            let mut certs = Vec::new();
            for pem in pems {
                certs.extend(reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                    EngineError::InvalidArgument(format!(
                        "cannot read the CA certificates for {}: {e}",
                        endpoint.host
                    ))
                })?);
            }
            http = http.tls_certs_merge(certs);
        }
    }
    install_tls_provider();
    http.build()
        .map_err(|e| EngineError::Internal(format!("cannot make an HTTP client: {e}")))
}

/// The registry a `docker login` server address names (`host[:port]`, with or without a
/// scheme or path); Docker Hub's login addresses give `docker.io`.
pub fn login_domain(server: &str) -> String {
    let host = server
        .trim()
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    if DOCKER_HUB_LOGIN.contains(&host.as_str()) {
        DOCKER_HUB.into()
    } else {
        host
    }
}

/// The process's TLS provider (the clients are built with rustls and no provider of their
/// own); installing it again is a no-op.
pub(crate) fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The host of `host[:port]` (an IPv6 address without its brackets).
fn host_of(domain: &str) -> &str {
    match domain.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => domain.split(':').next().unwrap_or(""),
    }
}

/// The addresses a host names without a lookup: an address, or `localhost`.
fn literal_addresses(host: &str) -> Vec<IpAddr> {
    if host.eq_ignore_ascii_case("localhost") {
        return vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ];
    }
    host.parse::<IpAddr>().into_iter().collect()
}

fn read_ca_dir(dir: &Path, host: &str) -> Result<Vec<Vec<u8>>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(EngineError::internal(
                format!("cannot read {}", dir.display()),
                e,
            ))
        }
    };
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "crt" => out.push(
                std::fs::read(&path)
                    .map_err(|e| EngineError::internal(format!("cannot read {}", path.display()), e))?,
            ),
            "cert" | "key" => {
                return Err(EngineError::Unsupported(format!(
                    "berth cannot present a TLS client certificate to {host} ({} is there): its registry client has none to offer yet",
                    path.display()
                )))
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registries(insecure: &[&str], allowed: &[&str], mirrors: &[&str]) -> Registries {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Registries::new(&RegistryOptions {
            insecure: s(insecure),
            allowed: s(allowed),
            mirrors: s(mirrors),
            ..RegistryOptions::default()
        })
        .unwrap()
    }

    fn kinds(e: &[Endpoint]) -> Vec<String> {
        e.iter()
            .map(|e| format!("{}{}", e.base(), if e.mirror { " mirror" } else { "" }))
            .collect()
    }

    #[tokio::test]
    async fn loopback_is_insecure_and_tried_over_https_then_http() {
        let r = Registries::default();
        for domain in [
            "127.0.0.1:5000",
            "localhost:5000",
            "[::1]:5000",
            "127.3.2.1",
        ] {
            assert_eq!(
                kinds(&r.endpoints(domain, true, "pull").await.unwrap()),
                [format!("https://{domain}"), format!("http://{domain}")],
                "{domain}"
            );
        }
        assert_eq!(
            kinds(&r.endpoints("10.1.2.3:5000", true, "pull").await.unwrap()),
            ["https://10.1.2.3:5000"]
        );
        assert_eq!(
            kinds(&r.endpoints(DOCKER_HUB, true, "pull").await.unwrap()),
            ["https://index.docker.io"]
        );
    }

    #[tokio::test]
    async fn insecure_registries_and_mirrors_are_honoured() {
        let r = registries(
            &["10.0.0.0/8", "reg.example:5000"],
            &[],
            &["http://127.0.0.1:6000", "https://10.9.9.9/"],
        );
        assert_eq!(
            kinds(&r.endpoints("10.1.2.3:5000", false, "pull").await.unwrap()),
            ["https://10.1.2.3:5000", "http://10.1.2.3:5000"]
        );
        assert_eq!(
            kinds(
                &r.endpoints("reg.example:5000", false, "pull")
                    .await
                    .unwrap()
            ),
            ["https://reg.example:5000", "http://reg.example:5000"]
        );
        assert_eq!(
            kinds(&r.endpoints(DOCKER_HUB, true, "pull").await.unwrap()),
            [
                "http://127.0.0.1:6000 mirror",
                "https://10.9.9.9 mirror",
                "https://index.docker.io"
            ]
        );
        // A push goes to Docker Hub itself.
        assert_eq!(
            kinds(&r.endpoints(DOCKER_HUB, false, "pull").await.unwrap()),
            ["https://index.docker.io"]
        );
        let info = r.info();
        assert_eq!(
            info["Mirrors"],
            serde_json::json!(["http://127.0.0.1:6000/", "https://10.9.9.9/"])
        );
        assert_eq!(
            info["InsecureRegistryCIDRs"],
            serde_json::json!(["10.0.0.0/8", "127.0.0.0/8", "::1/128"])
        );
        assert_eq!(info["IndexConfigs"]["reg.example:5000"]["Secure"], false);
    }

    #[tokio::test]
    async fn a_secure_registry_on_loopback_is_checked() {
        let r = Registries::new(&RegistryOptions {
            secure: vec!["127.0.0.1:5443".into()],
            ..RegistryOptions::default()
        })
        .unwrap();
        assert_eq!(
            kinds(&r.endpoints("127.0.0.1:5443", false, "pull").await.unwrap()),
            ["https://127.0.0.1:5443"]
        );
        assert!(matches!(
            r.endpoints("127.0.0.1:5443", false, "pull").await.unwrap()[0].tls,
            Tls::Checked(_)
        ));
    }

    #[tokio::test]
    async fn only_allowed_registries_are_reached() {
        let r = registries(
            &[],
            &["127.0.0.0/8", "localhost", "reg.example:5000"],
            &["http://127.0.0.1:6000", "http://10.9.9.9"],
        );
        for ok in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "127.1.2.3",
            "reg.example:5000",
        ] {
            assert!(!r.endpoints(ok, true, "pull x").await.unwrap().is_empty());
        }
        for refused in ["10.0.0.1:5000", "reg.example:6000", "[::1]:5000"] {
            let e = r
                .endpoints(refused, true, "pull x")
                .await
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("berth cannot pull x:"), "{e}");
            assert!(e.contains("--allow-registry"), "{e}");
            assert!(e.contains(refused), "{e}");
        }
        // Docker Hub itself is left out, its allowed mirror is not; a push has no mirror.
        assert_eq!(
            kinds(&r.endpoints(DOCKER_HUB, true, "pull x").await.unwrap()),
            ["http://127.0.0.1:6000 mirror"]
        );
        let e = r.endpoints(DOCKER_HUB, false, "push x").await.unwrap_err();
        assert!(e.to_string().contains("not docker.io"), "{e}");
        let open = registries(&[], &[], &[]);
        assert_eq!(
            kinds(&open.endpoints(DOCKER_HUB, true, "pull x").await.unwrap()),
            ["https://index.docker.io"]
        );
    }

    #[test]
    fn add_urls_are_fetched_only_from_allowed_hosts() {
        let open = Registries::new(&RegistryOptions::default()).unwrap();
        assert!(open.may_fetch("example.com") && open.may_fetch("10.0.0.1:8080"));
        let r = Registries::new(&RegistryOptions {
            fetch_allowed: vec!["127.0.0.0/8".into(), "files.example".into()],
            ..RegistryOptions::default()
        })
        .unwrap();
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.2",
            "files.example",
            "files.example:443",
        ] {
            assert!(r.may_fetch(ok), "{ok}");
        }
        for refused in ["10.0.0.1", "other.example", "[::1]:80"] {
            assert!(!r.may_fetch(refused), "{refused}");
        }
        let e = r.fetch_refused("http://10.0.0.1/x", "10.0.0.1").to_string();
        assert!(
            e.contains("--allow-fetch (127.0.0.0/8, files.example), not 10.0.0.1"),
            "{e}"
        );
        let bad = Registries::new(&RegistryOptions {
            fetch_allowed: vec!["http://x".into()],
            ..RegistryOptions::default()
        });
        assert!(bad.is_err());
    }

    #[test]
    fn bad_options_are_refused() {
        let bad = |o: RegistryOptions| Registries::new(&o).unwrap_err().to_string();
        let e = bad(RegistryOptions {
            insecure: vec!["10.0.0.0/99".into()],
            ..RegistryOptions::default()
        });
        assert!(e.starts_with("--insecure-registry \"10.0.0.0/99\""), "{e}");
        let e = bad(RegistryOptions {
            mirrors: vec!["ftp://x".into()],
            ..RegistryOptions::default()
        });
        assert!(e.contains("http:// or https://"), "{e}");
        let e = bad(RegistryOptions {
            mirrors: vec!["https://x/path".into()],
            ..RegistryOptions::default()
        });
        assert!(e.contains("no path"), "{e}");
        let e = bad(RegistryOptions {
            allowed: vec!["http://x".into()],
            ..RegistryOptions::default()
        });
        assert!(e.contains("not a URL"), "{e}");
    }

    #[test]
    fn certs_d_gives_ca_certificates_and_refuses_client_ones() {
        let dir = super::super::unpack::tests::TempDir::new("certs-d");
        let host = dir.0.join("reg:5000");
        std::fs::create_dir_all(&host).unwrap();
        assert!(read_ca_dir(&dir.0.join("none"), "none").unwrap().is_empty());
        std::fs::write(host.join("ca.crt"), b"pem").unwrap();
        std::fs::write(host.join("notes.txt"), b"x").unwrap();
        assert_eq!(
            read_ca_dir(&host, "reg:5000").unwrap(),
            vec![b"pem".to_vec()]
        );
        std::fs::write(host.join("client.cert"), b"pem").unwrap();
        let e = read_ca_dir(&host, "reg:5000").unwrap_err().to_string();
        assert!(e.contains("client certificate"), "{e}");
    }

    #[test]
    fn login_addresses_name_their_registry() {
        assert_eq!(login_domain("https://index.docker.io/v1/"), DOCKER_HUB);
        assert_eq!(login_domain("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(login_domain("http://Localhost:5000/v2/"), "localhost:5000");
    }
}
