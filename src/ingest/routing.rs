//! Which destinations an event goes to: each destination's `sources` list and
//! `event_types` globs, decided once at ingest so the outbox rows say it all.

use crate::config::DestinationConfig;

/// The subscription of one destination, compiled from its configuration.
#[derive(Debug)]
struct Subscription {
    destination: String,
    /// Empty: every source.
    sources: Vec<String>,
    /// Empty: every event type.
    event_types: Vec<glob::Pattern>,
    /// Where its events' ordering key is, when it is ordered.
    ordering: Option<super::ordering::KeyRule>,
}

/// A destination an event goes to.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub destination: &'a str,
    pub ordering: Option<&'a super::ordering::KeyRule>,
}

/// Matches events to destinations.
#[derive(Debug)]
pub struct Router {
    subscriptions: Vec<Subscription>,
}

impl Router {
    /// Compiles the destinations' filters. Patterns were validated with the
    /// configuration; one that still fails to compile matches nothing.
    pub fn new(destinations: &[DestinationConfig]) -> Self {
        let subscriptions = destinations
            .iter()
            .map(|d| Subscription {
                destination: d.name.clone(),
                sources: d.sources.clone(),
                event_types: d
                    .event_types
                    .iter()
                    .filter_map(|p| glob::Pattern::new(p).ok())
                    .collect(),
                ordering: d.ordering.as_ref().and_then(super::ordering::KeyRule::of),
            })
            .collect();
        Self { subscriptions }
    }

    /// The destinations subscribed to `event_type` from `source`, in configuration order.
    pub fn destinations_for<'a>(
        &'a self,
        source: &'a str,
        event_type: &'a str,
    ) -> impl Iterator<Item = Route<'a>> + 'a {
        self.subscriptions
            .iter()
            .filter(move |s| s.sources.is_empty() || s.sources.iter().any(|name| name == source))
            .filter(move |s| s.event_types.is_empty() || s.event_types.iter().any(|p| p.matches(event_type)))
            .map(|s| Route {
                destination: s.destination.as_str(),
                ordering: s.ordering.as_ref(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use std::time::Duration;

    fn destination(name: &str, sources: &[&str], event_types: &[&str]) -> DestinationConfig {
        DestinationConfig {
            name: name.into(),
            url: crate::config::Secret::new("http://127.0.0.1:1/"),
            signing_secret: Secret::new("whsec_AQID"),
            sources: sources.iter().map(|s| s.to_string()).collect(),
            event_types: event_types.iter().map(|s| s.to_string()).collect(),
            max_in_flight: 1,
            min_in_flight: 1,
            timeout: Duration::from_secs(1),
            breaker: Default::default(),
            rate_limit: None,
            ordering: None,
        }
    }

    fn route(router: &Router, source: &str, event_type: &str) -> Vec<String> {
        router
            .destinations_for(source, event_type)
            .map(|r| r.destination.to_string())
            .collect()
    }

    #[test]
    fn globs_select_event_types() {
        let router = Router::new(&[destination(
            "billing",
            &[],
            &["invoice.*", "payment_intent.succeeded"],
        )]);
        assert_eq!(route(&router, "stripe", "invoice.paid"), ["billing"]);
        assert_eq!(route(&router, "stripe", "payment_intent.succeeded"), ["billing"]);
        assert!(route(&router, "stripe", "payment_intent.failed").is_empty());
        assert!(route(&router, "stripe", "customer.created").is_empty());
    }

    #[test]
    fn sources_filter_and_empty_means_every_source() {
        let router = Router::new(&[
            destination("only-stripe", &["stripe"], &[]),
            destination("everything", &[], &[]),
        ]);
        assert_eq!(route(&router, "stripe", "x"), ["only-stripe", "everything"]);
        assert_eq!(route(&router, "github", "x"), ["everything"]);
    }

    #[test]
    fn no_destination_matches_when_none_subscribes() {
        let router = Router::new(&[destination("a", &["github"], &["push"])]);
        assert!(route(&router, "stripe", "push").is_empty());
        assert!(Router::new(&[]).destinations_for("stripe", "x").next().is_none());
    }
}
