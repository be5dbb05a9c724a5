//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas can
//! run: only the holder reconciles, the other takes over when the holder
//! stops renewing.
//!
//! The decision is a pure function of the Lease and the clock
//! ([`next_step`]); writes use the Lease's `resourceVersion`, so two
//! candidates racing for an expired Lease cannot both win. A leader that
//! cannot renew stops writing ([`Fence`]) before anyone else may take the
//! Lease over.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;

use crate::Error;

/// Where the Lease lives and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// The Lease's namespace (the operator's own).
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a holder that stops renewing keeps the Lease. 15 s, as
    /// Kubernetes' own controllers use: a failover is noticed within it,
    /// while a slow API server does not cost a healthy leader its Lease.
    pub duration: Duration,
}

/// What a candidate should do with the Lease as it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// No Lease yet: create it, held by us.
    Create,
    /// We hold it: renew.
    Renew,
    /// Another holder stopped renewing: take it over.
    TakeOver,
    /// Another holder is live: wait.
    Wait,
}

/// The step for `identity` given the Lease (if any) at `now`.
pub fn next_step(lease: Option<&Lease>, identity: &str, now: Timestamp) -> Step {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_some() {
            Step::TakeOver
        } else {
            Step::Create
        };
    };
    if spec.holder_identity.as_deref() == Some(identity) {
        return Step::Renew;
    }
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(renewed)), Some(seconds)) => {
            let expiry = renewed.checked_add(jiff::SignedDuration::from_secs(i64::from(seconds)));
            expiry.is_ok_and(|expiry| expiry < now)
        }
        // A Lease without a renew time or duration is no one's.
        _ => true,
    };
    if expired || spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        Step::TakeOver
    } else {
        Step::Wait
    }
}

/// Whether this replica may still act as the leader: until a renew deadline
/// after the start of its last successful renewal. The deadline is shorter
/// than the Lease's duration, so the replica stops before another candidate
/// may see the Lease as expired (the rest is a margin for clock skew).
#[derive(Clone, Debug, Default)]
pub struct Leadership(Arc<parking_lot::Mutex<Option<Instant>>>);

impl Leadership {
    /// Whether the leadership is confirmed now.
    pub fn is_held(&self) -> bool {
        self.0.lock().is_some_and(|until| Instant::now() < until)
    }

    fn confirm(&self, until: Instant) {
        *self.0.lock() = Some(until);
    }

    fn revoke(&self) {
        *self.0.lock() = None;
    }
}

/// The error a fenced call returns instead of reaching the API server.
#[derive(Debug, thiserror::Error)]
#[error("not the leader: the leader Lease is not confirmed, so no write is sent")]
pub struct NotLeader;

/// A `tower` layer for the leader's API client: writes (anything but
/// GET, HEAD and OPTIONS) are refused unless [`Leadership::is_held`], so a
/// reconcile that was mid-way when the Lease was lost writes nothing.
#[derive(Clone, Debug)]
pub struct Fence(Leadership);

impl Fence {
    /// A fence that opens while `leadership` is held.
    pub fn new(leadership: Leadership) -> Self {
        Self(leadership)
    }
}

impl<S> tower::Layer<S> for Fence {
    type Service = Fenced<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Fenced {
            inner,
            leadership: self.0.clone(),
        }
    }
}

/// The service [`Fence`] wraps.
#[derive(Clone, Debug)]
pub struct Fenced<S> {
    inner: S,
    leadership: Leadership,
}

impl<S, B> tower::Service<http::Request<B>> for Fenced<S>
where
    S: tower::Service<http::Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let reads = [http::Method::GET, http::Method::HEAD, http::Method::OPTIONS];
        if !reads.contains(request.method()) && !self.leadership.is_held() {
            return Box::pin(std::future::ready(Err(NotLeader.into())));
        }
        let call = self.inner.call(request);
        Box::pin(async move { call.await.map_err(Into::into) })
    }
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    leadership: Leadership,
}

impl std::fmt::Debug for Elector {
    // `kube::Api` is not `Debug`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Elector {
    /// A candidate for the Lease described by `settings`.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            leadership: Leadership::default(),
        }
    }

    /// This replica's leadership, for [`Fence`]: held from a successful
    /// [`Self::try_lead`] until the renew deadline, two thirds of the Lease's duration.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// One attempt, given up after a retry period: an API server that never
    /// answers must not keep [`Self::hold`] from noticing the Lease is gone.
    async fn attempt(&self) -> Result<bool, Error> {
        tokio::time::timeout(self.retry_period(), self.try_lead())
            .await
            .unwrap_or(Err(Error::LeaseTimeout(self.retry_period())))
    }

    /// One attempt to hold the Lease; returns whether we hold it afterwards.
    ///
    /// # Errors
    /// An API call failed other than by losing a race (a conflict is `Ok(false)`).
    pub async fn try_lead(&self) -> Result<bool, Error> {
        let started = Instant::now();
        let leads = self.try_lead_once().await;
        match leads {
            Ok(true) => self.leadership.confirm(started + self.renew_deadline()),
            Ok(false) => self.leadership.revoke(),
            // Unknown: the leadership runs out at its deadline unless renewed.
            Err(_) => {}
        }
        leads
    }

    async fn try_lead_once(&self) -> Result<bool, Error> {
        let current = self.api.get_opt(&self.settings.name).await.map_err(lease_error)?;
        let now = Timestamp::now();
        let step = next_step(current.as_ref(), &self.settings.identity, now);
        let result = match (step, current) {
            (Step::Wait, _) => return Ok(false),
            (Step::Create, _) => {
                self.api
                    .create(&PostParams::default(), &self.lease(None, now, 0))
                    .await
            }
            (step, Some(current)) => {
                let spec = current.spec.clone().unwrap_or_default();
                let transitions = spec.lease_transitions.unwrap_or(0);
                let (acquired, transitions) = match step {
                    Step::Renew => (spec.acquire_time.map(|MicroTime(t)| t), transitions),
                    _ => (None, transitions.saturating_add(1)),
                };
                let mut lease = self.lease(acquired, now, transitions);
                lease.metadata.resource_version = current.metadata.resource_version;
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await
            }
            (_, None) => return Ok(false),
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(lease_error(error)),
        }
    }

    /// Waits until this replica holds the Lease. `on_contact` runs after each
    /// attempt the API server answered, so a standby can report itself ready.
    pub async fn acquire(&self, on_contact: impl Fn()) {
        loop {
            match self.attempt().await {
                Ok(true) => return,
                Ok(false) => on_contact(),
                Err(error) => tracing::warn!(%error, "leader election"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    /// Renews the Lease until it is lost (or cannot be renewed before the
    /// renew deadline); returns then, so the caller stops reconciling.
    pub async fn hold(&self) {
        loop {
            tokio::time::sleep(self.retry_period()).await;
            match self.attempt().await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    tracing::warn!(%error, "renewing the leader Lease");
                    if !self.leadership.is_held() {
                        return;
                    }
                }
            }
        }
    }

    /// How long after a renewal the leadership holds: two thirds of the
    /// Lease's duration (10 s of 15 s, as Kubernetes' own controllers).
    fn renew_deadline(&self) -> Duration {
        self.settings.duration * 2 / 3
    }

    /// Renew or retry three times per Lease duration, so one failed call does not lose the Lease.
    fn retry_period(&self) -> Duration {
        self.settings.duration / 3
    }

    fn lease(&self, acquired: Option<Timestamp>, now: Timestamp, transitions: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.settings.identity.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX),
                ),
                acquire_time: Some(MicroTime(acquired.unwrap_or(now))),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }
}

fn lease_error(source: kube::Error) -> Error {
    Error::Lease(Box::new(source))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: &str, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                renew_time: Some(MicroTime(renewed.parse().expect("time"))),
                lease_duration_seconds: Some(seconds),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn the_step_follows_the_holder_and_the_clock() {
        let now: Timestamp = "2026-11-22T04:00:00Z".parse().expect("time");
        assert_eq!(next_step(None, "a", now), Step::Create);
        assert_eq!(
            next_step(Some(&lease("a", "2026-11-22T03:00:00Z", 15)), "a", now),
            Step::Renew
        );
        assert_eq!(
            next_step(Some(&lease("b", "2026-11-22T03:59:50Z", 15)), "a", now),
            Step::Wait
        );
        assert_eq!(
            next_step(Some(&lease("b", "2026-11-22T03:59:40Z", 15)), "a", now),
            Step::TakeOver
        );
        assert_eq!(
            next_step(Some(&lease("", "2026-11-22T03:59:59Z", 15)), "a", now),
            Step::TakeOver
        );
    }
}
