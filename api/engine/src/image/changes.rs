//! `docker import --change` and `docker commit --change`: Dockerfile instructions applied to
//! a container config. dockerd accepts CMD, ENTRYPOINT, ENV, EXPOSE, HEALTHCHECK, LABEL,
//! ONBUILD, USER, VOLUME and WORKDIR here (not STOPSIGNAL: dockerd 20.10 refuses it), with
//! the Dockerfile's quoting, line continuations and `$VAR` substitution.

use std::collections::BTreeMap;

use super::config::ContainerConfig;

/// Why a change does not apply. Messages follow Docker's where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// dockerd names the instruction lowercased, as its Dockerfile parser keeps it.
    #[error("{0} is not a valid change command")]
    NotAllowed(String),
    #[error("{0} requires at least one argument")]
    MissingArgument(String),
    #[error("{instruction}: {message}")]
    Invalid {
        instruction: String,
        message: String,
    },
}

fn invalid(instruction: &str, message: impl Into<String>) -> ChangeError {
    ChangeError::Invalid {
        instruction: instruction.to_string(),
        message: message.into(),
    }
}

/// Applies `changes` (each one or more Dockerfile lines) to `config`.
pub fn apply(config: &mut ContainerConfig, changes: &[String]) -> Result<(), ChangeError> {
    apply_with(config, changes, &BTreeMap::new())
}

/// [`apply`], with `args` (a build's arguments in scope) also substituted for `$VAR`, below
/// the config's own environment, as the classic builder substitutes.
pub fn apply_with(
    config: &mut ContainerConfig,
    changes: &[String],
    args: &BTreeMap<String, String>,
) -> Result<(), ChangeError> {
    let text = changes.join("\n");
    let mut cmd_set = false;
    for line in logical_lines(&text) {
        let (keyword, rest) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((k, r)) => (k, r.trim()),
            None => (line.as_str(), ""),
        };
        let upper = keyword.to_ascii_uppercase();
        let mut env = args.clone();
        env.extend(env_map(config));
        match upper.as_str() {
            "CMD" => {
                config.cmd = Some(command(&upper, rest)?);
                cmd_set = true;
            }
            "ENTRYPOINT" => {
                config.entrypoint = Some(command(&upper, rest)?);
                if !cmd_set {
                    config.cmd = None;
                }
            }
            "ENV" => {
                for (k, v) in name_values(&upper, rest, &env)? {
                    let list = config.env.get_or_insert_with(Vec::new);
                    let prefix = format!("{k}=");
                    match list.iter_mut().find(|e| e.starts_with(&prefix) || **e == k) {
                        Some(e) => *e = format!("{k}={v}"),
                        None => list.push(format!("{k}={v}")),
                    }
                }
            }
            "LABEL" => {
                for (k, v) in name_values(&upper, rest, &env)? {
                    config.labels.get_or_insert_with(BTreeMap::new).insert(k, v);
                }
            }
            "EXPOSE" => {
                let words = words(rest, &env).map_err(|m| invalid(&upper, m))?;
                if words.is_empty() {
                    return Err(ChangeError::MissingArgument(upper));
                }
                for w in words {
                    for port in ports(&w).map_err(|m| invalid(&upper, m))? {
                        config
                            .exposed_ports
                            .get_or_insert_with(BTreeMap::new)
                            .insert(port, serde_json::json!({}));
                    }
                }
            }
            "USER" => config.user = single(&upper, rest, &env)?,
            "WORKDIR" => {
                let dir = single(&upper, rest, &env)?;
                config.working_dir = if dir.starts_with('/') {
                    clean(&dir)
                } else {
                    let base = if config.working_dir.is_empty() {
                        "/".to_string()
                    } else {
                        config.working_dir.clone()
                    };
                    clean(&format!("{base}/{dir}"))
                };
            }
            "VOLUME" => {
                let vols = match json_array(rest) {
                    Some(v) => v,
                    None => words(rest, &env).map_err(|m| invalid(&upper, m))?,
                };
                if vols.is_empty() {
                    return Err(ChangeError::MissingArgument(upper));
                }
                for v in vols {
                    if v.trim().is_empty() {
                        return Err(invalid(
                            &upper,
                            "VOLUME specified can not be an empty string",
                        ));
                    }
                    config
                        .volumes
                        .get_or_insert_with(BTreeMap::new)
                        .insert(v, serde_json::json!({}));
                }
            }
            "ONBUILD" => {
                let (inner, _) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                match inner.to_ascii_uppercase().as_str() {
                    "" => return Err(ChangeError::MissingArgument(upper)),
                    "ONBUILD" => {
                        return Err(invalid(
                            &upper,
                            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
                        ))
                    }
                    "FROM" | "MAINTAINER" => {
                        return Err(invalid(
                            &upper,
                            format!("{inner} isn't allowed as an ONBUILD trigger"),
                        ))
                    }
                    _ => {}
                }
                config
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(rest.to_string());
            }
            "HEALTHCHECK" => config.healthcheck = Some(healthcheck(rest)?),
            _ => return Err(ChangeError::NotAllowed(keyword.to_ascii_lowercase())),
        }
    }
    Ok(())
}

/// Joins `\`-continued lines; drops blank lines and comments.
fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for raw in text.lines() {
        let trimmed = raw.trim();
        if cur.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(body) = raw.trim_end().strip_suffix('\\') {
            cur.push_str(body);
            continue;
        }
        cur.push_str(raw);
        out.push(std::mem::take(&mut cur).trim().to_string());
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn env_map(config: &ContainerConfig) -> BTreeMap<String, String> {
    config
        .env
        .iter()
        .flatten()
        .map(|e| {
            let (k, v) = e.split_once('=').unwrap_or((e, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn json_array(rest: &str) -> Option<Vec<String>> {
    if !rest.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(rest).ok()
}

/// CMD/ENTRYPOINT: the JSON (exec) form, or the shell form run by `/bin/sh -c`.
fn command(instruction: &str, rest: &str) -> Result<Vec<String>, ChangeError> {
    if let Some(v) = json_array(rest) {
        return Ok(v);
    }
    if rest.is_empty() && instruction == "CMD" {
        return Err(ChangeError::MissingArgument(instruction.to_string()));
    }
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
}

fn single(
    instruction: &str,
    rest: &str,
    env: &BTreeMap<String, String>,
) -> Result<String, ChangeError> {
    let w = words(rest, env).map_err(|m| invalid(instruction, m))?;
    match w.as_slice() {
        [] => Err(ChangeError::MissingArgument(instruction.to_string())),
        [one] => Ok(one.clone()),
        _ => Ok(w.join(" ")),
    }
}

/// ENV/LABEL arguments: `k=v k2="v 2"`, or the legacy `k v with spaces`.
fn name_values(
    instruction: &str,
    rest: &str,
    env: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, ChangeError> {
    if rest.is_empty() {
        return Err(ChangeError::MissingArgument(instruction.to_string()));
    }
    let words = words(rest, env).map_err(|m| invalid(instruction, m))?;
    let first_raw = rest.split_whitespace().next().unwrap_or("");
    if !first_raw.contains('=') {
        // Legacy form: one pair, the value is the rest of the line.
        let (k, v) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        if v.trim().is_empty() {
            return Err(invalid(
                instruction,
                format!("{instruction} must have two arguments"),
            ));
        }
        let v = words_joined(v.trim(), env).map_err(|m| invalid(instruction, m))?;
        return Ok(vec![(k.to_string(), v)]);
    }
    let mut out = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(invalid(
                instruction,
                format!("Syntax error - can't find = in {w:?}. Must be of the form: name=value"),
            ));
        };
        if k.is_empty() {
            return Err(invalid(instruction, "name can't be empty"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The legacy form's value: one word, inner whitespace kept as written.
fn words_joined(s: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    Ok(split_words(s, env, false)?.concat())
}

/// Splits on unquoted whitespace with quote removal, backslash escapes and `$VAR`
/// substitution.
fn words(s: &str, env: &BTreeMap<String, String>) -> Result<Vec<String>, String> {
    split_words(s, env, true)
}

fn split_words(
    s: &str,
    env: &BTreeMap<String, String>,
    split: bool,
) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut quote: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        match (quote, c) {
            (None, c) if split && c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                i += 1;
            }
            (None, '\'') | (None, '"') => {
                quote = Some(c);
                in_word = true;
                i += 1;
            }
            (Some(q), c) if c == q => {
                quote = None;
                i += 1;
            }
            (Some('\''), c) => {
                cur.push(c);
                i += 1;
            }
            (_, '\\') => {
                in_word = true;
                if let Some(&n) = chars.get(i + 1) {
                    // In double quotes only \" \\ \$ are escapes.
                    if quote == Some('"') && !matches!(n, '"' | '\\' | '$') {
                        cur.push('\\');
                    }
                    cur.push(n);
                    i += 2;
                } else {
                    i += 1;
                }
            }
            (_, '$') => {
                in_word = true;
                let (value, used) = expand(&chars[i + 1..], env)?;
                cur.push_str(&value);
                i += 1 + used;
            }
            (_, c) => {
                in_word = true;
                cur.push(c);
                i += 1;
            }
        }
    }
    if quote.is_some() {
        return Err("unexpected end of statement while looking for matching quote".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `$NAME`, `${NAME}`, `${NAME:-default}`, `${NAME:+alt}`: returns the value and how many
/// characters after the `$` it consumed.
fn expand(rest: &[char], env: &BTreeMap<String, String>) -> Result<(String, usize), String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if rest.first() == Some(&'{') {
        let Some(end) = rest.iter().position(|&c| c == '}') else {
            return Err("missing '}' in variable substitution".into());
        };
        let inner: String = rest[1..end].iter().collect();
        let value = if let Some((name, default)) = inner.split_once(":-") {
            env.get(name)
                .filter(|v| !v.is_empty())
                .cloned()
                .unwrap_or_else(|| default.to_string())
        } else if let Some((name, alt)) = inner.split_once(":+") {
            if env.get(name).is_some_and(|v| !v.is_empty()) {
                alt.to_string()
            } else {
                String::new()
            }
        } else if inner.chars().all(is_name) && !inner.is_empty() {
            env.get(&inner).cloned().unwrap_or_default()
        } else {
            return Err(format!("unsupported modifier in ${{{inner}}}"));
        };
        return Ok((value, end + 1));
    }
    let len = rest.iter().take_while(|&&c| is_name(c)).count();
    if len == 0 {
        return Ok(("$".to_string(), 0));
    }
    let name: String = rest[..len].iter().collect();
    Ok((env.get(&name).cloned().unwrap_or_default(), len))
}

/// `80`, `80/udp`, `8000-8002/tcp`.
fn ports(spec: &str) -> Result<Vec<String>, String> {
    let (range, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid proto: {proto}"));
    }
    let parse = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("invalid containerPort: {p}"))
    };
    let (lo, hi) = match range.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(range)?;
            (p, p)
        }
    };
    if hi < lo {
        return Err(format!(
            "invalid range specified for containerPort: {range}"
        ));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// Lexical path clean (`/a/./b/../c` → `/a/c`).
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Go durations: `30s`, `1m30s`, `500ms`, `1h`.
fn duration_ns(s: &str) -> Option<i64> {
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * mult;
        rest = &rest[unit_len..];
    }
    Some(total as i64)
}

/// HEALTHCHECK [options] CMD ... | NONE
fn healthcheck(rest: &str) -> Result<serde_json::Value, ChangeError> {
    const I: &str = "HEALTHCHECK";
    let mut rest = rest.trim();
    let mut hc = serde_json::Map::new();
    while let Some(opt) = rest.strip_prefix("--") {
        let (flag, after) = opt.split_once(char::is_whitespace).unwrap_or((opt, ""));
        let (name, value) = flag
            .split_once('=')
            .ok_or_else(|| invalid(I, format!("missing value for --{flag}")))?;
        let field = match name {
            "interval" => "Interval",
            "timeout" => "Timeout",
            "start-period" => "StartPeriod",
            "start-interval" => "StartInterval",
            "retries" => "Retries",
            _ => return Err(invalid(I, format!("Unknown flag: {name}"))),
        };
        let v = if field == "Retries" {
            value
                .parse::<i64>()
                .map_err(|_| invalid(I, format!("invalid retries value {value:?}")))?
        } else {
            duration_ns(value)
                .ok_or_else(|| invalid(I, format!("time: invalid duration {value:?}")))?
        };
        hc.insert(field.to_string(), serde_json::json!(v));
        rest = after.trim_start();
    }
    let (kind, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    match kind.to_ascii_uppercase().as_str() {
        "NONE" => {
            if !args.trim().is_empty() || !hc.is_empty() {
                return Err(invalid(I, "HEALTHCHECK NONE takes no arguments"));
            }
            Ok(serde_json::json!({ "Test": ["NONE"] }))
        }
        "CMD" => {
            let args = args.trim();
            if args.is_empty() {
                return Err(ChangeError::MissingArgument(I.to_string()));
            }
            let test = match json_array(args) {
                Some(v) => std::iter::once("CMD".to_string())
                    .chain(v)
                    .collect::<Vec<_>>(),
                None => vec!["CMD-SHELL".to_string(), args.to_string()],
            };
            hc.insert("Test".into(), serde_json::json!(test));
            Ok(serde_json::Value::Object(hc))
        }
        _ => Err(invalid(I, "Unknown type, must be one of CMD, NONE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(changes: &[&str]) -> ContainerConfig {
        let mut c = ContainerConfig::default();
        apply(
            &mut c,
            &changes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        c
    }

    #[test]
    fn applies_docker_instructions() {
        let c = applied(&[
            r#"CMD ["sh", "-c", "echo hi"]"#,
            "ENV A=1 B=\"two words\"",
            "ENV PATH /bin:/usr/bin",
            "ENV SPACED a  \"b c\"",
            "ENV C=$A-${B} D=${MISSING:-dflt}",
            "LABEL com.example=\"x y\" other=z",
            "EXPOSE 80 53/udp 8000-8001",
            "WORKDIR /srv",
            "WORKDIR app/../data",
            "USER nobody",
            "VOLUME [\"/v1\", \"/v2\"]",
            "ONBUILD RUN echo x",
            "HEALTHCHECK --interval=30s --retries=3 CMD curl -f http://localhost/",
        ]);
        assert_eq!(c.cmd.unwrap(), ["sh", "-c", "echo hi"]);
        assert_eq!(
            c.env.unwrap(),
            [
                "A=1",
                "B=two words",
                "PATH=/bin:/usr/bin",
                "SPACED=a  b c",
                "C=1-two words",
                "D=dflt"
            ]
        );
        let labels = c.labels.unwrap();
        assert_eq!(labels["com.example"], "x y");
        assert_eq!(labels["other"], "z");
        let ports: Vec<_> = c.exposed_ports.unwrap().into_keys().collect();
        assert_eq!(ports, ["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
        assert_eq!(c.working_dir, "/srv/data");
        assert_eq!(c.user, "nobody");
        assert_eq!(c.volumes.unwrap().len(), 2);
        assert_eq!(c.on_build.unwrap(), ["RUN echo x"]);
        let hc = c.healthcheck.unwrap();
        assert_eq!(hc["Test"][0], "CMD-SHELL");
        assert_eq!(hc["Interval"], 30_000_000_000i64);
        assert_eq!(hc["Retries"], 3);
    }

    #[test]
    fn shell_forms_and_entrypoint_rules() {
        let c = applied(&["CMD echo hello"]);
        assert_eq!(c.cmd.unwrap(), ["/bin/sh", "-c", "echo hello"]);
        let c = applied(&["CMD [\"a\"]", "ENTRYPOINT [\"b\"]"]);
        assert_eq!(c.cmd.unwrap(), ["a"]);
        let mut c = ContainerConfig {
            cmd: Some(vec!["old".into()]),
            ..Default::default()
        };
        apply(&mut c, &["ENTRYPOINT [\"b\"]".to_string()]).unwrap();
        assert_eq!(c.cmd, None, "ENTRYPOINT resets an inherited CMD");
        let c = applied(&["ENV X=1 \\\n Y=2", "# a comment", "", "healthcheck NONE"]);
        assert_eq!(c.env.unwrap(), ["X=1", "Y=2"]);
        assert_eq!(c.healthcheck.unwrap()["Test"][0], "NONE");
    }

    #[test]
    fn refuses_what_docker_refuses() {
        let err = |s: &str| {
            let mut c = ContainerConfig::default();
            apply(&mut c, &[s.to_string()]).unwrap_err().to_string()
        };
        assert_eq!(err("RUN echo"), "run is not a valid change command");
        assert_eq!(err("FROM busybox"), "from is not a valid change command");
        assert_eq!(err("FOO bar"), "foo is not a valid change command");
        assert_eq!(
            err("STOPSIGNAL SIGINT"),
            "stopsignal is not a valid change command"
        );
        assert!(err("EXPOSE 99999").contains("invalid containerPort"));
        assert!(err("ENV A=\"unterminated").contains("matching quote"));
        assert!(err("ENV").contains("requires at least one argument"));
        assert!(err("ENV =x").contains("name can't be empty"));
        assert!(err("ONBUILD ONBUILD RUN x").contains("Chaining"));
        assert!(err("HEALTHCHECK --interval=x CMD true").contains("invalid duration"));
    }
}
