//! A small option parser: `--name value`, `--name=value`, flags, and `--` before a command.

use std::collections::HashMap;

/// Parsed options.
#[derive(Debug, Default)]
pub struct Args {
    values: HashMap<String, Vec<String>>,
    flags: Vec<String>,
    /// Everything after `--`.
    pub command: Vec<String>,
}

/// Declares which options take a value and which are flags.
pub struct Spec {
    pub valued: &'static [&'static str],
    pub flags: &'static [&'static str],
}

impl Args {
    /// Parses `argv` against `spec`; unknown options are errors.
    pub fn parse(argv: &[String], spec: &Spec) -> Result<Args, String> {
        let mut args = Args::default();
        let mut it = argv.iter();
        while let Some(arg) = it.next() {
            if arg == "--" {
                args.command = it.cloned().collect();
                break;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            if spec.flags.contains(&name.as_str()) {
                if inline.is_some() {
                    return Err(format!("{name} takes no value"));
                }
                args.flags.push(name);
            } else if spec.valued.contains(&name.as_str()) {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("{name} needs a value"))?,
                };
                args.values.entry(name).or_default().push(value);
            } else {
                return Err(format!("unknown option {arg:?}"));
            }
        }
        Ok(args)
    }

    /// The last value of `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// Every value of `name`, in order.
    pub fn values(&self, name: &str) -> &[String] {
        self.values.get(name).map_or(&[], Vec::as_slice)
    }

    /// Whether flag `name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    /// The value of `name` parsed as a number, or `default`.
    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.value(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("{name}: {v:?} is not a valid number")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Spec = Spec {
        valued: &["--cpus", "--env"],
        flags: &["--tty"],
    };

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_values_flags_and_command() {
        let a = Args::parse(
            &s(&[
                "--cpus",
                "2",
                "--env=A=1",
                "--env",
                "B=2",
                "--tty",
                "--",
                "sh",
                "-c",
                "x",
            ]),
            &SPEC,
        )
        .unwrap();
        assert_eq!(a.number::<u8>("--cpus", 1).unwrap(), 2);
        assert_eq!(a.values("--env"), &["A=1".to_string(), "B=2".to_string()]);
        assert!(a.flag("--tty"));
        assert_eq!(a.command, s(&["sh", "-c", "x"]));
    }

    #[test]
    fn rejects_unknown_and_missing() {
        assert!(Args::parse(&s(&["--nope"]), &SPEC).is_err());
        assert!(Args::parse(&s(&["--cpus"]), &SPEC).is_err());
        assert!(Args::parse(&s(&["--tty=1"]), &SPEC).is_err());
        let a = Args::parse(&s(&["--cpus", "x"]), &SPEC).unwrap();
        assert!(a.number::<u8>("--cpus", 1).is_err());
    }
}
