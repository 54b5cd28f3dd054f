//! `docker search`: the search API of Docker Hub's index (`GET /v1/search?q=TERM&n=LIMIT`),
//! asked of the registry the term names, as dockerd asks it.
//!
//! - The term's first part names the registry when it looks like a host (it has a `.` or
//!   a `:`, or is `localhost`); otherwise the term goes to Docker Hub, without `library/`.
//! - The registry is reached as a pull reaches it (`registry::Registries`: TLS and
//!   certs.d, insecure registries over HTTPS then HTTP, `--allow-registry`), never through
//!   a mirror. Credentials from the CLI go with the request as basic auth, as dockerd sends
//!   them; an identity token alone is not sent.
//! - A registry that does not answer the search (Debian's `docker-registry`, as every
//!   registry of the distribution API alone: 404) is an error in dockerd's words,
//!   "Unexpected status code 404", never an empty list.
//! - The answer is read up to 4 MiB, then filtered (`is-official`, `stars`,
//!   `is-automated`) as dockerd filters it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::pull::Credentials;
use super::registry::{http_client, login_domain, Registries, DOCKER_HUB};
use crate::{EngineError, Result};

/// What dockerd asks for when the client gives no limit.
const DEFAULT_LIMIT: i64 = 25;
/// The most an answer may hold: a hundred results with long descriptions fit many times.
const MAX_ANSWER: usize = 4 << 20;

/// One repository a registry found, in Docker's shape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SearchResult {
    pub star_count: i64,
    pub is_official: bool,
    pub name: String,
    pub is_automated: bool,
    pub description: String,
}

/// A result as a registry sends it: any field may be missing or null.
#[derive(Deserialize)]
struct WireResult {
    #[serde(default)]
    star_count: Option<i64>,
    #[serde(default)]
    is_official: Option<bool>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
struct WireResults {
    #[serde(default)]
    results: Option<Vec<WireResult>>,
}

/// A search as the client asked for it.
pub struct SearchOptions<'a> {
    pub term: &'a str,
    /// The most results to ask for (1 to 100; none: 25).
    pub limit: Option<i64>,
    /// Docker's `filters`: `is-official`, `is-automated`, `stars`.
    pub filters: &'a HashMap<String, Vec<String>>,
    pub credentials: Option<&'a Credentials>,
}

/// What the filters keep.
#[derive(Debug, Default, PartialEq, Eq)]
struct Filters {
    official: Option<bool>,
    automated: bool,
    stars: Option<i64>,
}

fn invalid(message: String) -> EngineError {
    EngineError::InvalidArgument(message)
}

/// A boolean filter as dockerd reads it: every value `true`/`1`, or every one `false`/`0`.
fn bool_filter(key: &str, values: &[String]) -> Result<bool> {
    let truthy = values.iter().any(|v| v == "true" || v == "1");
    let falsy = values.iter().any(|v| v == "false" || v == "0");
    let other = values
        .iter()
        .any(|v| !matches!(v.as_str(), "true" | "1" | "false" | "0"));
    if values.is_empty() || other || (truthy && falsy) {
        return Err(invalid(format!(
            "Invalid filter '{key}={}'",
            values.join(",")
        )));
    }
    Ok(truthy)
}

fn parse_filters(filters: &HashMap<String, Vec<String>>) -> Result<Filters> {
    let mut out = Filters::default();
    for (key, values) in filters {
        match key.as_str() {
            "is-official" => out.official = Some(bool_filter(key, values)?),
            "is-automated" => out.automated = bool_filter(key, values)?,
            "stars" => {
                for v in values {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| invalid(format!("invalid filter 'stars={v}'")))?;
                    out.stars = Some(out.stars.map_or(n, |s| s.max(n)));
                }
            }
            _ => return Err(invalid(format!("Invalid filter '{key}'"))),
        }
    }
    Ok(out)
}

/// The registry a term names and what to search there.
fn split_term(term: &str) -> (String, String) {
    match term.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (login_domain(first), rest.to_string())
        }
        _ => (DOCKER_HUB.to_string(), term.to_string()),
    }
}

/// Searches the registry `opts.term` names.
pub async fn search(
    registries: &Registries,
    opts: &SearchOptions<'_>,
) -> Result<Vec<SearchResult>> {
    let filters = parse_filters(opts.filters)?;
    if opts.term.contains("://") {
        return Err(invalid(format!(
            "invalid repository name: repository name ({}) should not have a scheme",
            opts.term
        )));
    }
    let limit = match opts.limit {
        None | Some(0) => DEFAULT_LIMIT,
        Some(n) if (1..=100).contains(&n) => n,
        Some(n) => {
            return Err(invalid(format!(
                "limit {n} is outside the range of [1, 100]"
            )))
        }
    };
    // "is-automated" is gone from Docker Hub: asking for automated builds finds none.
    if filters.automated {
        return Ok(Vec::new());
    }
    let (index, mut remote) = split_term(opts.term);
    if index == DOCKER_HUB {
        remote = remote
            .strip_prefix("library/")
            .unwrap_or(&remote)
            .to_string();
    }
    let endpoints = registries
        .endpoints(&index, false, &format!("search {index}"))
        .await?;
    let mut attempts = Vec::new();
    for endpoint in &endpoints {
        let url = format!("{}/v1/search", endpoint.base());
        let http = http_client(endpoint)?;
        let mut request = http
            .get(&url)
            .query(&[("q", remote.as_str()), ("n", &limit.to_string())]);
        if let Some(c) = opts.credentials.filter(|c| !c.username.is_empty()) {
            request = request.basic_auth(&c.username, Some(&c.password));
        }
        let mut res = match request.send().await {
            Ok(res) => res,
            Err(e) => {
                attempts.push(format!("{url}: {}", vmm_launcher::chain(&e)));
                continue;
            }
        };
        if res.status() != reqwest::StatusCode::OK {
            return Err(EngineError::Internal(format!(
                "Unexpected status code {}",
                res.status().as_u16()
            )));
        }
        let mut body = Vec::new();
        loop {
            match res.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_ANSWER {
                        return Err(EngineError::Internal(format!(
                            "error decoding registry search results: {url} answered over {} MiB",
                            MAX_ANSWER >> 20
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(EngineError::Internal(format!(
                        "error reading registry search results from {url}: {}",
                        vmm_launcher::chain(&e)
                    )))
                }
            }
        }
        return decode(&body, &filters);
    }
    Err(invalid(format!(
        "invalid registry endpoint for {index}: {}",
        attempts.join("; ")
    )))
}

/// The results of a registry's answer to a search, as dockerd gives them (`is_automated`
/// is always false: Docker Hub's value is no longer kept).
pub fn parse_answer(body: &[u8]) -> Result<Vec<SearchResult>> {
    let wire: WireResults = serde_json::from_slice(body).map_err(|e| {
        EngineError::Internal(format!("error decoding registry search results: {e}"))
    })?;
    Ok(wire
        .results
        .unwrap_or_default()
        .into_iter()
        .map(|r| SearchResult {
            star_count: r.star_count.unwrap_or(0),
            is_official: r.is_official.unwrap_or(false),
            name: r.name.unwrap_or_default(),
            is_automated: false,
            description: r.description.unwrap_or_default(),
        })
        .collect())
}

/// The results of an answer the filters keep.
fn decode(body: &[u8], filters: &Filters) -> Result<Vec<SearchResult>> {
    let mut results = parse_answer(body)?;
    results.retain(|r| {
        filters.official.is_none_or(|o| o == r.is_official)
            && filters.stars.is_none_or(|s| r.star_count >= s)
    });
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn terms_name_their_registry() {
        assert_eq!(split_term("nginx"), ("docker.io".into(), "nginx".into()));
        assert_eq!(
            split_term("someone/app"),
            ("docker.io".into(), "someone/app".into())
        );
        assert_eq!(
            split_term("127.0.0.1:5000/team/app"),
            ("127.0.0.1:5000".into(), "team/app".into())
        );
        assert_eq!(
            split_term("localhost/app"),
            ("localhost".into(), "app".into())
        );
        assert_eq!(
            split_term("index.docker.io/library/redis"),
            ("docker.io".into(), "library/redis".into())
        );
    }

    #[test]
    fn filters_are_read_as_dockerd_reads_them() {
        assert_eq!(parse_filters(&filters(&[])).unwrap(), Filters::default());
        let f = parse_filters(&filters(&[
            ("is-official", &["true"]),
            ("stars", &["3", "10"]),
        ]))
        .unwrap();
        assert_eq!(
            f,
            Filters {
                official: Some(true),
                automated: false,
                stars: Some(10)
            }
        );
        for bad in [
            filters(&[("is-official", &["maybe"])]),
            filters(&[("is-official", &["true", "false"])]),
            filters(&[("stars", &["many"])]),
            filters(&[("name", &["x"])]),
        ] {
            assert!(
                matches!(parse_filters(&bad), Err(EngineError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn answers_are_decoded_and_filtered() {
        let body = br#"{"num_results": 3, "query": "x", "results": [
            {"name": "a", "description": "first", "star_count": 12, "is_official": true, "is_automated": true},
            {"name": "b", "description": null, "star_count": 2},
            {"name": "c", "extra": [1, 2]}
        ]}"#;
        let all = decode(body, &Filters::default()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[0],
            SearchResult {
                star_count: 12,
                is_official: true,
                name: "a".into(),
                is_automated: false,
                description: "first".into()
            }
        );
        assert_eq!(all[1].description, "");
        let official = Filters {
            official: Some(false),
            ..Filters::default()
        };
        let names: Vec<_> = decode(body, &official)
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["b", "c"]);
        let stars = Filters {
            stars: Some(2),
            ..Filters::default()
        };
        assert_eq!(decode(body, &stars).unwrap().len(), 2);
        assert_eq!(decode(b"{}", &Filters::default()).unwrap(), []);
        assert!(decode(b"[1,", &Filters::default()).is_err());
        assert!(decode(
            br#"{"results": [{"star_count": "x"}]}"#,
            &Filters::default()
        )
        .is_err());
    }

    #[tokio::test]
    async fn bad_requests_are_refused_before_anything_is_sent() {
        // No registry is allowed: a request that got as far as the registry would be
        // refused by --allow-registry instead.
        let registries = Registries::new(&super::super::registry::RegistryOptions {
            allowed: vec!["192.0.2.1".into()],
            ..Default::default()
        })
        .unwrap();
        let none = HashMap::new();
        let opts = |term, limit| SearchOptions {
            term,
            limit,
            filters: &none,
            credentials: None,
        };
        for (term, limit, want) in [
            ("https://example.com/x", None, "should not have a scheme"),
            ("x", Some(101), "limit 101 is outside the range of [1, 100]"),
            ("x", Some(-1), "limit -1 is outside the range of [1, 100]"),
            (
                "x",
                None,
                "reaches only the registries given to --allow-registry",
            ),
        ] {
            let e = search(&registries, &opts(term, limit)).await.unwrap_err();
            assert!(e.to_string().contains(want), "{term}: {e}");
        }
        let automated = filters(&[("is-automated", &["true"])]);
        let found = search(
            &registries,
            &SearchOptions {
                term: "x",
                limit: None,
                filters: &automated,
                credentials: None,
            },
        )
        .await
        .unwrap();
        assert!(found.is_empty());
    }
}
