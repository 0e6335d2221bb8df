//! Which destinations an event goes to: each destination's `sources` list,
//! `event_types` globs and payload `filter` ([`crate::filter`]), decided once at ingest
//! so the outbox rows say it all (and the event keeps which filters refused it).

use super::payload::Payload;
use crate::config::DestinationConfig;
use crate::filter::{Filter, Outcome};

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
    filter: Option<Filter>,
}

/// A destination an event goes to.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    pub destination: &'a str,
    pub ordering: Option<&'a super::ordering::KeyRule>,
}

/// A destination whose filter refused an event, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal<'a> {
    pub destination: &'a str,
    /// `None`: the filter said no; else why it could not be evaluated.
    pub error: Option<String>,
}

impl Refusal<'_> {
    /// As the event keeps it: `no match`, or `error: …` (cut to 200 characters).
    pub fn reason(&self) -> String {
        match &self.error {
            None => "no match".to_string(),
            Some(error) => format!("error: {}", error.chars().take(200).collect::<String>()),
        }
    }
}

/// Matches events to destinations.
#[derive(Debug)]
pub struct Router {
    subscriptions: Vec<Subscription>,
}

impl Subscription {
    fn route(&self) -> Route<'_> {
        Route {
            destination: &self.destination,
            ordering: self.ordering.as_ref(),
        }
    }
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
                // Validated with the configuration; one that still fails is logged and
                // then matches nothing, like a pattern.
                filter: d.filter.as_ref().map(|text| {
                    Filter::compile(text).unwrap_or_else(|e| {
                        tracing::error!(destination = %d.name, error = %e, "filter does not compile; it matches nothing");
                        Filter::compile("false").expect("`false` compiles")
                    })
                }),
            })
            .collect();
        Self { subscriptions }
    }

    /// The subscriptions to `event_type` from `source`, in configuration order.
    fn subscribed<'a>(
        &'a self,
        source: &'a str,
        event_type: &'a str,
    ) -> impl Iterator<Item = &'a Subscription> + 'a {
        self.subscriptions
            .iter()
            .filter(move |s| s.sources.is_empty() || s.sources.iter().any(|name| name == source))
            .filter(move |s| s.event_types.is_empty() || s.event_types.iter().any(|p| p.matches(event_type)))
    }

    /// The destinations subscribed to `event_type` from `source`, in configuration
    /// order, before any payload filter.
    pub fn destinations_for<'a>(
        &'a self,
        source: &'a str,
        event_type: &'a str,
    ) -> impl Iterator<Item = Route<'a>> + 'a {
        self.subscribed(source, event_type).map(Subscription::route)
    }

    /// Where this event goes: the subscribed destinations whose filter (if any) passes
    /// it, and those whose filter refused it. The payload is parsed only if a filter
    /// reads it.
    pub fn route<'a>(
        &'a self,
        source: &'a str,
        event_type: &'a str,
        payload: &Payload<'_>,
    ) -> (Vec<Route<'a>>, Vec<Refusal<'a>>) {
        let mut routes = Vec::new();
        let mut refused = Vec::new();
        for subscription in self.subscribed(source, event_type) {
            let outcome = match &subscription.filter {
                None => Outcome::Match,
                Some(filter) => filter.evaluate(payload.json(), source, event_type),
            };
            match outcome {
                Outcome::Match => routes.push(subscription.route()),
                Outcome::NoMatch => refused.push(Refusal {
                    destination: &subscription.destination,
                    error: None,
                }),
                Outcome::Failed(error) => refused.push(Refusal {
                    destination: &subscription.destination,
                    error: Some(error),
                }),
            }
        }
        (routes, refused)
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
            filter: None,
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
    fn filters_pass_refuse_or_fail_and_each_refusal_says_why() {
        let mut live = destination("live-invoices", &[], &["invoice.*"]);
        live.filter = Some("body.livemode && body.data.object.amount_paid > 1000".into());
        let router = Router::new(&[live, destination("all", &[], &[])]);
        let routed = |body: &[u8]| {
            let payload = Payload::new(body);
            let (routes, refused) = router.route("stripe", "invoice.paid", &payload);
            let routes: Vec<String> = routes.iter().map(|r| r.destination.to_string()).collect();
            let refused: Vec<(String, Option<String>)> = refused
                .into_iter()
                .map(|r| (r.destination.to_string(), r.error))
                .collect();
            (routes, refused)
        };
        let (routes, refused) = routed(br#"{"livemode":true,"data":{"object":{"amount_paid":5000}}}"#);
        assert_eq!(
            (routes, refused),
            (vec!["live-invoices".to_string(), "all".into()], vec![])
        );
        let (routes, refused) = routed(br#"{"livemode":false,"data":{"object":{"amount_paid":5000}}}"#);
        assert_eq!(
            (routes, refused),
            (vec!["all".to_string()], vec![("live-invoices".to_string(), None)])
        );
        let (routes, refused) = routed(br#"{"livemode":true,"data":{}}"#);
        assert_eq!(routes, ["all"]);
        assert!(
            refused[0].1.as_deref().is_some_and(|e| e.contains("object")),
            "{refused:?}"
        );
        // A type no filter subscribes to is never evaluated.
        let payload = Payload::new(b"not json");
        assert_eq!(router.route("stripe", "customer.created", &payload).1, vec![]);
    }

    #[test]
    fn no_destination_matches_when_none_subscribes() {
        let router = Router::new(&[destination("a", &["github"], &["push"])]);
        assert!(route(&router, "stripe", "push").is_empty());
        assert!(Router::new(&[]).destinations_for("stripe", "x").next().is_none());
    }
}
