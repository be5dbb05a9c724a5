//! Failure drills: fault injection switched at runtime, per mock provider,
//! from the admin port — to rehearse "this provider is down" in staging and
//! watch fallbacks and breakers act, without editing resources.

use std::collections::BTreeMap;

use llmesh_crds::resources::MockFault;
use parking_lot::RwLock;

/// Runtime fault overrides, by `ProviderSecret` name.
#[derive(Debug, Default)]
pub struct Drills {
    overrides: RwLock<BTreeMap<String, Vec<MockFault>>>,
}

impl Drills {
    /// The faults in force for `provider`, if a drill overrides its configured ones.
    pub fn faults(&self, provider: &str) -> Option<Vec<MockFault>> {
        self.overrides.read().get(provider).cloned()
    }

    /// Overrides `provider`'s faults; an empty list means "no faults".
    pub fn set(&self, provider: &str, faults: Vec<MockFault>) {
        self.overrides.write().insert(provider.to_owned(), faults);
    }

    /// Ends the drill for `provider`: its configured faults apply again.
    pub fn clear(&self, provider: &str) -> bool {
        self.overrides.write().remove(provider).is_some()
    }

    /// Every override in force.
    pub fn all(&self) -> BTreeMap<String, Vec<MockFault>> {
        self.overrides.read().clone()
    }
}
