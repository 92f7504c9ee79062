//! `--config-file`: etcd's YAML configuration (keys as in etcd's `embed.Config` and
//! `etcd.conf.yml.sample`), turned into flag values so one validation path serves both.
//! Keys are the flag names, except the TLS sections, which nest:
//! `client-transport-security: {cert-file, key-file, client-cert-auth, ...}` and
//! `peer-transport-security: {...}` (mapped to the `peer-` flags), and
//! `socket-options: {reuse-port, reuse-address}`. Lists become comma-joined text.

use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

use super::flags::{self, FlagSpec};
use super::{validate_value, Notice};
use crate::log::Level;

/// Reads the file; returns (flag, value) pairs, each value checked like a flag value.
pub fn read(
    path: &Path,
    notices: &mut Vec<Notice>,
) -> Result<Vec<(&'static FlagSpec, String)>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let docs = YamlLoader::load_from_str(&text)
        .map_err(|e| format!("error converting YAML to JSON: {e}"))?;
    let mut out = Vec::new();
    let Some(Yaml::Hash(top)) = docs.into_iter().next() else {
        return Ok(out);
    };
    for (key, value) in top {
        let Some(key) = key.as_str() else { continue };
        match key {
            "client-transport-security" | "peer-transport-security" | "socket-options" => {
                if let Yaml::Hash(inner) = value {
                    for (sub_key, sub_value) in inner {
                        let Some(sub_key) = sub_key.as_str() else {
                            continue;
                        };
                        let flag = nested_flag_name(key, sub_key);
                        push(&mut out, notices, &flag, &sub_value)?;
                    }
                }
            }
            "experimental-snapshot-catch-up-entries" => push(
                &mut out,
                notices,
                "experimental-snapshot-catchup-entries",
                &value,
            )?,
            _ => push(&mut out, notices, key, &value)?,
        }
    }
    Ok(out)
}

fn nested_flag_name(section: &str, key: &str) -> String {
    match (section, key) {
        ("socket-options", k) => format!("socket-{k}"),
        ("client-transport-security", "allowed-hostname") => "client-cert-allowed-hostname".into(),
        ("client-transport-security", "crl-file") => "client-crl-file".into(),
        ("client-transport-security", k) => k.to_owned(),
        (_, "allowed-cn") => "peer-cert-allowed-cn".into(),
        (_, "allowed-hostname") => "peer-cert-allowed-hostname".into(),
        (_, "client-cert-auth") => "peer-client-cert-auth".into(),
        (_, k) => format!("peer-{k}"),
    }
}

fn scalar_text(value: &Yaml) -> Option<String> {
    Some(match value {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Array(items) => items
            .iter()
            .filter_map(scalar_text)
            .collect::<Vec<_>>()
            .join(","),
        _ => return None,
    })
}

fn push(
    out: &mut Vec<(&'static FlagSpec, String)>,
    notices: &mut Vec<Notice>,
    key: &str,
    value: &Yaml,
) -> Result<(), String> {
    let Some(spec) = flags::find(key).filter(|s| s.name != "config-file" && s.name != "version")
    else {
        notices.push(Notice {
            level: Level::Warn,
            msg: "unknown key in configuration file, ignoring".to_owned(),
            fields: vec![("key", key.into())],
        });
        return Ok(());
    };
    let Some(text) = scalar_text(value) else {
        return Ok(()); // null: keep the default, as etcd's YAML decoding does
    };
    validate_value(spec, &text).map_err(|e| format!("invalid value {text:?} for {key}: {e}"))?;
    out.retain(|(s, _)| s.name != spec.name);
    out.push((spec, text));
    Ok(())
}
