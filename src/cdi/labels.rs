//! PVC labels from an image's environment (contract section 5.1): every
//! `KEY=value` whose key contains `KUBEVIRT_IO_` becomes a label, the part up
//! to and including `KUBEVIRT_IO` giving the prefix (its `_`-separated words
//! joined by `.`), the rest the name (`_` becoming `-`), all lower-cased:
//! `INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=fedora` becomes
//! `instancetype.kubevirt.io/default-preference: fedora`. The controller
//! copies them onto the PVC when the import completes.

use std::collections::BTreeMap;

/// The marker a key must contain.
const MARKER: &str = "KUBEVIRT_IO_";

/// The labels `env` (lines of `KEY=value`) declares.
pub fn labels_from_env(env: &[String]) -> BTreeMap<String, String> {
    env.iter()
        .filter_map(|line| line.split_once('='))
        .filter_map(|(key, value)| Some((label_name(key)?, value.to_string())))
        .collect()
}

/// `PREFIX_KUBEVIRT_IO_NAME` as `prefix.kubevirt.io/name`.
fn label_name(key: &str) -> Option<String> {
    let at = key.find(MARKER)?;
    let prefix = &key[..at + MARKER.len() - 1];
    let name = &key[at + MARKER.len()..];
    if name.is_empty() {
        return None;
    }
    let prefix = prefix
        .split('_')
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(".");
    Some(format!("{prefix}/{}", name.replace('_', "-")).to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instancetype_defaults_become_cdi_labels() {
        let env = [
            "PATH=/usr/bin".to_string(),
            "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_PREFERENCE=fedora".to_string(),
            "INSTANCETYPE_KUBEVIRT_IO_DEFAULT_INSTANCETYPE=u1.medium".to_string(),
            "KUBEVIRT_IO_OS=linux=yes".to_string(),
            "INSTANCETYPE_KUBEVIRT_IO_=nothing".to_string(),
        ];
        let labels = labels_from_env(&env);
        assert_eq!(labels.len(), 3, "{labels:?}");
        assert_eq!(
            labels["instancetype.kubevirt.io/default-preference"],
            "fedora"
        );
        assert_eq!(
            labels["instancetype.kubevirt.io/default-instancetype"],
            "u1.medium"
        );
        assert_eq!(labels["kubevirt.io/os"], "linux=yes");
    }
}
