//! Which namespaces the operator watches: every one, or a listed few.

use std::collections::BTreeSet;

use k8s_openapi::NamespaceResourceScope;
use kube::{Api, Client, Resource};

/// The namespaces whose resources, Secrets, ConfigMaps and pods the operator
/// watches. With a list it makes one watch per namespace, so it needs rights
/// only there (namespaced Roles) and never watches Secrets cluster-wide.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WatchScope {
    /// Every namespace (cluster-wide watches).
    #[default]
    All,
    /// Only these.
    Listed(BTreeSet<String>),
}

impl WatchScope {
    /// The scope a `--watch-namespaces` list gives: empty means every namespace.
    pub fn from_list<I: IntoIterator<Item = String>>(names: I) -> Self {
        let names: BTreeSet<String> = names
            .into_iter()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .collect();
        if names.is_empty() {
            Self::All
        } else {
            Self::Listed(names)
        }
    }

    /// Whether `namespace` is watched.
    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            Self::All => true,
            Self::Listed(names) => names.contains(namespace),
        }
    }

    /// One API handle per watched namespace, or one cluster-wide.
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: Resource<Scope = NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match self {
            Self::All => vec![Api::all(client.clone())],
            Self::Listed(names) => names
                .iter()
                .map(|name| Api::namespaced(client.clone(), name))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_list_means_every_namespace() {
        assert_eq!(WatchScope::from_list(Vec::new()), WatchScope::All);
        assert_eq!(WatchScope::from_list([" ".to_owned()]), WatchScope::All);
        assert!(WatchScope::All.contains("anything"));
    }

    #[test]
    fn a_list_limits_to_its_names() {
        let scope = WatchScope::from_list(["team-a".to_owned(), " team-b ".to_owned(), String::new()]);
        assert_eq!(
            scope,
            WatchScope::Listed(BTreeSet::from(["team-a".to_owned(), "team-b".to_owned()]))
        );
        assert!(scope.contains("team-b"));
        assert!(!scope.contains("team-c"));
    }
}
