//! How the roles are configured: flags over a TOML file over defaults, from one definition of
//! each key.
//!
//! A role's configuration (`ServerConfig`, `AgentConfig`) is one struct that derives both
//! `clap::Args` and serde: each field is a flag (kebab-case) and a TOML key (snake_case) with one
//! default for both. [`layered`] merges them: the file's keys, then every flag the user actually
//! gave (clap's value source says which), then serde's defaults for the rest, so a new option is
//! added in one place and needs no merge code.

use std::path::Path;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A path flag whose default is empty (the roles' `--data-dir`): clap's own path parser
/// refuses an empty value, but "not given" must reach `validate`, which names the flag.
pub(crate) fn path_or_empty(s: &str) -> Result<std::path::PathBuf, std::convert::Infallible> {
    Ok(std::path::PathBuf::from(s))
}

/// `flags` (parsed from `matches`) over the TOML file at `file`, if any. Without a file the
/// flags (with their defaults) are the configuration. With one, a key of the file is replaced
/// only by a flag given on the command line or in the environment, never by a flag's default.
pub fn layered<T>(flags: T, matches: &ArgMatches, file: Option<&Path>) -> anyhow::Result<T>
where
    T: Serialize + DeserializeOwned,
{
    let Some(path) = file else {
        return Ok(flags);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let given = toml::Table::try_from(&flags).context("the flags as TOML")?;
    for (key, value) in given {
        // Fields without a flag (`#[arg(skip)]`) are not ids of `matches`: only the file sets them.
        let is_flag = matches.ids().any(|id| id.as_str() == key);
        let from_user = is_flag
            && matches!(
                matches.value_source(&key),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
        if from_user {
            table.insert(key, value);
        }
    }
    T::deserialize(table).with_context(|| format!("{} is not a valid config", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches};
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, Args, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Example {
        /// Has a default.
        #[arg(long, default_value_t = 7)]
        #[serde(default = "seven")]
        port: u16,
        /// Optional.
        #[arg(long)]
        #[serde(default)]
        name: Option<String>,
        /// Repeatable, with a flag name other than its key.
        #[arg(long = "peer")]
        #[serde(default)]
        peers: Vec<String>,
        /// Only in the file.
        #[arg(skip)]
        #[serde(default)]
        table_only: u32,
    }

    fn seven() -> u16 {
        7
    }

    fn load(args: &[&str], file: Option<&str>) -> anyhow::Result<Example> {
        let cmd = Example::augment_args(clap::Command::new("x"));
        let m = cmd.try_get_matches_from(std::iter::once("x").chain(args.iter().copied()))?;
        let flags = Example::from_arg_matches(&m)?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.toml");
        if let Some(text) = file {
            std::fs::write(&path, text)?;
        }
        layered(flags, &m, file.map(|_| path.as_path()))
    }

    #[test]
    fn flags_alone_with_their_defaults() {
        let e = load(&["--peer", "a", "--peer", "b"], None).unwrap();
        assert_eq!(
            e,
            Example {
                port: 7,
                name: None,
                peers: vec!["a".into(), "b".into()],
                table_only: 0
            }
        );
    }

    #[test]
    fn the_file_wins_over_defaults_and_given_flags_win_over_the_file() {
        let file = "port = 9\nname = \"f\"\npeers = [\"x\"]\ntable_only = 3\n";
        let e = load(&[], Some(file)).unwrap();
        assert_eq!((e.port, e.name.as_deref(), e.table_only), (9, Some("f"), 3));
        assert_eq!(e.peers, vec!["x".to_string()]);
        let e = load(&["--port", "11", "--peer", "y"], Some(file)).unwrap();
        assert_eq!((e.port, e.name.as_deref()), (11, Some("f")));
        assert_eq!(
            e.peers,
            vec!["y".to_string()],
            "a given list replaces the file's"
        );
        let e = load(&[], Some("name = \"only\"\n")).unwrap();
        assert_eq!(
            e.port, 7,
            "a key missing from the file takes the one default"
        );
    }

    #[test]
    fn unknown_keys_and_bad_files_are_refused_with_the_path() {
        let e = load(&[], Some("prot = 1\n")).unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `prot`"), "{e:#}");
        let e = load(&[], Some("port = \n")).unwrap_err();
        assert!(format!("{e:#}").contains("c.toml"), "{e:#}");
    }
}
