//! Validated topic names: `persistent://tenant/namespace/topic`.
//!
//! A short form `tenant/namespace/topic` and a bare `topic` (meaning `public/default`) are
//! accepted on input, as Pulsar does; [`TopicName`] always displays the full form.

use std::fmt;
use std::str::FromStr;

/// Why a topic or namespace name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicNameError {
    #[error("topic name is empty")]
    Empty,
    #[error("unsupported topic domain {0:?}: only \"persistent\" is supported")]
    UnsupportedDomain(String),
    #[error("topic name {0:?} must look like persistent://tenant/namespace/topic")]
    WrongShape(String),
    #[error("{part} {value:?} is invalid: use 1-{max} characters of a-z A-Z 0-9 - _ . = :", max = MAX_PART_LEN)]
    InvalidPart { part: &'static str, value: String },
}

/// Longest tenant, namespace or local topic name.
pub const MAX_PART_LEN: usize = 255;
const DEFAULT_TENANT: &str = "public";
const DEFAULT_NAMESPACE: &str = "default";

/// A namespace: `tenant/namespace`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespaceName {
    tenant: String,
    namespace: String,
}

impl NamespaceName {
    pub fn new(tenant: &str, namespace: &str) -> Result<Self, TopicNameError> {
        validate_part("tenant", tenant)?;
        validate_part("namespace", namespace)?;
        Ok(Self {
            tenant: tenant.to_owned(),
            namespace: namespace.to_owned(),
        })
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

impl fmt::Display for NamespaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.namespace)
    }
}

impl FromStr for NamespaceName {
    type Err = TopicNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split('/').collect::<Vec<_>>().as_slice() {
            [t, n] => Self::new(t, n),
            _ => Err(TopicNameError::WrongShape(s.to_owned())),
        }
    }
}

/// A persistent topic's full name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicName {
    namespace: NamespaceName,
    local: String,
}

impl TopicName {
    /// Parses a full, short (`tenant/ns/topic`) or bare (`topic`) name.
    pub fn parse(s: &str) -> Result<Self, TopicNameError> {
        if s.is_empty() {
            return Err(TopicNameError::Empty);
        }
        let rest = match s.split_once("://") {
            Some(("persistent", rest)) => rest,
            Some((domain, _)) => return Err(TopicNameError::UnsupportedDomain(domain.to_owned())),
            None => s,
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (tenant, namespace, local) = match parts.as_slice() {
            [local] if !s.contains("://") => (DEFAULT_TENANT, DEFAULT_NAMESPACE, *local),
            [t, n, local] => (*t, *n, *local),
            _ => return Err(TopicNameError::WrongShape(s.to_owned())),
        };
        validate_part("topic", local)?;
        Ok(Self {
            namespace: NamespaceName::new(tenant, namespace)?,
            local: local.to_owned(),
        })
    }

    pub fn namespace(&self) -> &NamespaceName {
        &self.namespace
    }

    /// The last path element, e.g. `orders` in `persistent://public/default/orders`.
    pub fn local_name(&self) -> &str {
        &self.local
    }

    /// `tenant/namespace/topic`, the form used in metastore keys.
    pub fn path(&self) -> String {
        format!("{}/{}", self.namespace, self.local)
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "persistent://{}/{}", self.namespace, self.local)
    }
}

impl FromStr for TopicName {
    type Err = TopicNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn validate_part(part: &'static str, value: &str) -> Result<(), TopicNameError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=' | ':');
    if value.is_empty() || value.len() > MAX_PART_LEN || !value.chars().all(ok_char) {
        return Err(TopicNameError::InvalidPart {
            part,
            value: value.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_short_and_bare_names_normalise_to_the_full_form() {
        for input in [
            "persistent://public/default/orders",
            "public/default/orders",
            "orders",
        ] {
            let t = TopicName::parse(input).expect(input);
            assert_eq!(t.to_string(), "persistent://public/default/orders");
            assert_eq!(t.path(), "public/default/orders");
        }
    }

    #[test]
    fn malformed_names_are_refused_with_the_reason() {
        assert_eq!(TopicName::parse(""), Err(TopicNameError::Empty));
        assert!(matches!(
            TopicName::parse("non-persistent://a/b/c"),
            Err(TopicNameError::UnsupportedDomain(d)) if d == "non-persistent"
        ));
        assert!(matches!(
            TopicName::parse("a/b"),
            Err(TopicNameError::WrongShape(_))
        ));
        assert!(matches!(
            TopicName::parse("persistent://a/b/c/d"),
            Err(TopicNameError::WrongShape(_))
        ));
        assert!(matches!(
            TopicName::parse("persistent://orders"),
            Err(TopicNameError::WrongShape(_))
        ));
        assert!(matches!(
            TopicName::parse("public/default/has space"),
            Err(TopicNameError::InvalidPart { part: "topic", .. })
        ));
        assert!(matches!(
            TopicName::parse("pub lic/default/t"),
            Err(TopicNameError::InvalidPart { part: "tenant", .. })
        ));
        let long = "x".repeat(MAX_PART_LEN + 1);
        assert!(TopicName::parse(&long).is_err());
        assert!(TopicName::parse(&"x".repeat(MAX_PART_LEN)).is_ok());
    }
}
