//! The config file. Every flag `--some-flag` is the top-level key
//! `some-flag`; `[lives.<name>]` tables hold per-live rules. The file's
//! values are fed to clap as if typed before the real arguments, but only
//! for settings that neither a flag nor a `VESSEL_*` variable gave, so the
//! precedence is flags > environment > file > defaults and every value is
//! checked by the same parser as its flag.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command, FromArgMatches};

use crate::access::LiveRules;
use crate::http::valid_live_name;

/// A `[lives.<name>]` table.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveFile {
    /// The stream key casters must present.
    pub key: Option<String>,
    /// Viewers need a token (see `viewer-token-secret`).
    #[serde(default)]
    pub private: bool,
    /// Recorded while on air, into --record-dir.
    #[serde(default)]
    pub record: bool,
}

#[derive(Debug)]
pub enum LoadError {
    /// From clap: help, version, or a bad flag (`exit()` prints it).
    Clap(clap::Error),
    /// The file or the environment: a message naming the key.
    Invalid(String),
}

/// Parses the command line, the environment and the `--config` file into
/// `T` (whose flags include `Config`'s), and the file's per-live rules.
pub fn parse<T: clap::CommandFactory + FromArgMatches>(
    args: Vec<OsString>,
) -> Result<(T, HashMap<String, LiveRules>), LoadError> {
    let command = T::command();
    check_environment(&command);
    let matches = command
        .clone()
        .try_get_matches_from(&args)
        .map_err(LoadError::Clap)?;
    let path = match (
        matches.subcommand_name(),
        matches.get_one::<PathBuf>("config"),
    ) {
        (None, Some(path)) => path.clone(),
        _ => {
            return Ok((
                T::from_arg_matches(&matches).map_err(LoadError::Clap)?,
                HashMap::new(),
            ));
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        LoadError::Invalid(format!(
            "cannot read the config file {}: {e}",
            path.display()
        ))
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| LoadError::Invalid(format!("{}: {e}", path.display())))?;
    let (file_args, file_keys, lives) = file_args(&command, &matches, table, &path)?;
    let mut all = Vec::with_capacity(args.len() + file_args.len());
    all.extend(args.first().cloned());
    all.extend(file_args);
    all.extend(args.into_iter().skip(1));
    let matches = command.try_get_matches_from(all).map_err(|e| {
        match file_key_of(&e).filter(|k| file_keys.contains(k)) {
            Some(key) => LoadError::Invalid(format!(
                "{}: key `{key}`: {}",
                path.display(),
                e.kind_message()
            )),
            None => LoadError::Clap(e),
        }
    })?;
    Ok((
        T::from_arg_matches(&matches).map_err(LoadError::Clap)?,
        lives,
    ))
}

/// The flags the file stands for, the keys it set, and its lives.
type FileArgs = (Vec<OsString>, HashSet<String>, HashMap<String, LiveRules>);

fn file_args(
    command: &Command,
    matches: &ArgMatches,
    table: toml::Table,
    path: &Path,
) -> Result<FileArgs, LoadError> {
    let bad = |msg: String| LoadError::Invalid(format!("{}: {msg}", path.display()));
    let mut args = Vec::new();
    let mut keys = HashSet::new();
    let mut lives = HashMap::new();
    for (key, value) in table {
        if key == "lives" {
            lives = read_lives(value).map_err(bad)?;
            continue;
        }
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && a.get_id() != "config")
        else {
            return Err(bad(format!(
                "unknown key `{key}` (keys are the flags of `vessel --help` without the \
                 leading --, plus [lives.<name>] tables)"
            )));
        };
        let explicit = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if explicit {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items,
            single => vec![single],
        };
        for value in values {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) if !arg.get_action().takes_values() => {
                    if b {
                        args.push(OsString::from(format!("--{key}")));
                    }
                    continue;
                }
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(bad(format!(
                        "key `{key}`: expected a string, number or boolean, got a {}",
                        other.type_str()
                    )));
                }
            };
            if !arg.get_action().takes_values() {
                return Err(bad(format!(
                    "key `{key}`: expected true or false, got '{text}'"
                )));
            }
            args.push(OsString::from(format!("--{key}={text}")));
        }
        keys.insert(key);
    }
    Ok((args, keys, lives))
}

fn read_lives(value: toml::Value) -> Result<HashMap<String, LiveRules>, String> {
    let toml::Value::Table(table) = value else {
        return Err("`lives` must be tables: [lives.<name>]".into());
    };
    let mut lives = HashMap::new();
    for (name, rules) in table {
        if !valid_live_name(&name) {
            return Err(format!(
                "[lives.{name}]: invalid live name: use 1-64 letters, digits, '-' or '_'"
            ));
        }
        let rules: LiveFile = rules
            .try_into()
            .map_err(|e: toml::de::Error| format!("[lives.{name}]: {}", e.message()))?;
        if rules.key.as_deref().is_some_and(|k| k.trim().len() < 8) {
            return Err(format!(
                "[lives.{name}]: key `key` is too short: use at least 8 characters"
            ));
        }
        lives.insert(
            name,
            LiveRules {
                key: rules.key,
                private: rules.private,
                record: rules.record,
            },
        );
    }
    Ok(lives)
}

/// `VESSEL_*` variables that match no setting get a warning: a typo must
/// not pass silently (a server meant to be closed left open), but other
/// tools' variables with the same prefix must not stop Vessel either.
fn check_environment(command: &Command) {
    let known: HashSet<String> = command
        .get_arguments()
        .chain(command.get_subcommands().flat_map(Command::get_arguments))
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("VESSEL_") && !known.contains(&*name) {
            // Logging is not set up yet: straight to stderr.
            eprintln!(
                "warning: {name} is not a Vessel setting and is ignored (settings are VESSEL_ \
                 plus the flag name in capitals, e.g. VESSEL_HTTP; see vessel --help)"
            );
        }
    }
}

/// The flag clap complained about, as a file key (`--workers <N>` → `workers`).
fn file_key_of(e: &clap::Error) -> Option<String> {
    let arg = e.get(clap::error::ContextKind::InvalidArg)?.to_string();
    let flag = arg.strip_prefix("--")?;
    Some(flag.split([' ', '=']).next()?.to_string())
}

trait KindMessage {
    fn kind_message(&self) -> String;
}

impl KindMessage for clap::Error {
    /// clap's message without its "error:" prefix and usage footer.
    fn kind_message(&self) -> String {
        let text = self.render().to_string();
        let first = text.lines().next().unwrap_or_default();
        first.strip_prefix("error: ").unwrap_or(first).to_string()
    }
}

#[cfg(test)]
mod tests;
