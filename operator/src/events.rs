//! Kubernetes Events for what a person should see in `kubectl describe`: a
//! resource turning invalid or valid again, a key generated or rotated, a new
//! configuration written, a pod that missed the sidecar.
//!
//! A reconcile collects [`Notice`]s (plain data, so tests check them without
//! an Event API); the controller publishes them. Notes never carry a key.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use llmesh_crds::VirtualKey;

/// One Event to publish.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    /// The object the Event is about.
    pub regarding: ObjectReference,
    /// Warning (something to fix) rather than Normal.
    pub warning: bool,
    /// `PascalCase` reason, e.g. `KeyRotated`.
    pub reason: &'static str,
    /// What happened, for a person.
    pub note: String,
}

impl Notice {
    /// A key was generated into the Secret named like the `VirtualKey`.
    pub fn key_generated(key: &VirtualKey) -> Self {
        Self {
            regarding: key.object_ref(&()),
            warning: false,
            reason: "KeyGenerated",
            note: format!("generated a new key into Secret {}, key key", key.name_any()),
        }
    }

    /// A key was replaced; the old one works until `valid_until`.
    pub fn key_rotated(key: &VirtualKey, valid_until: jiff::Timestamp) -> Self {
        Self {
            regarding: key.object_ref(&()),
            warning: false,
            reason: "KeyRotated",
            note: format!(
                "rotated the key in Secret {}; the previous key works until {valid_until}",
                key.name_any()
            ),
        }
    }

    /// The `rotate-at` annotation is unreadable, so nothing was rotated.
    pub fn bad_rotate_at(key: &VirtualKey, value: &str) -> Self {
        Self {
            regarding: key.object_ref(&()),
            warning: true,
            reason: "RotateAtInvalid",
            note: format!(
                "annotation {} {value:?} is not an RFC 3339 instant (e.g. 2026-06-01T12:00:00Z); the key was not rotated",
                llmesh_crds::generated_key::ROTATE_AT_ANNOTATION
            ),
        }
    }

    /// A resource's `Ready` condition changed to `ready`; `message` says why.
    pub fn ready_changed<K: Resource<DynamicType = ()>>(resource: &K, ready: bool, message: &str) -> Self {
        Self {
            regarding: resource.object_ref(&()),
            warning: !ready,
            reason: if ready { "Ready" } else { "Invalid" },
            note: message.to_owned(),
        }
    }

    /// A pod asked for the llmesh sidecar and was created without it.
    pub fn sidecar_missing(pod: ObjectReference) -> Self {
        Self {
            regarding: pod,
            warning: true,
            reason: "SidecarMissing",
            note: format!(
                "asked for the llmesh sidecar but was created without it (the webhook was unreachable); \
                 restart the workload, or set {}: \"true\"",
                llmesh_crds::injection::RESTART_ON_MISS_ANNOTATION
            ),
        }
    }

    /// A new configuration version was written to the namespace's ConfigMap.
    pub fn config_written(config_map: ObjectReference, version: &str, summary: &str) -> Self {
        Self {
            regarding: config_map,
            warning: false,
            reason: "ConfigWritten",
            note: format!("configuration version {version} written ({summary})"),
        }
    }
}

/// Publishes `notices`. A failure is logged, not returned: an Event is for
/// people, and losing one must not fail or repeat the reconcile.
pub async fn publish(recorder: &Recorder, notices: Vec<Notice>) {
    for notice in notices {
        let event = Event {
            type_: if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: notice.reason.to_owned(),
            note: Some(notice.note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &notice.regarding).await {
            tracing::warn!(%error, reason = notice.reason, "publishing an Event failed");
        }
    }
}
