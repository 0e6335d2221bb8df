//! A downstream HTTP service for tests: records every request it gets and answers as
//! told (succeed, fail the first N tries of each webhook, ask to retry later, hang, or
//! whatever a test's plan says, streamed bodies included). It also watches ordering:
//! the events of one key (the payload's `/data/object/customer`) must never be answered
//! at the same time, and it keeps each request's key and answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use relayd::listener::LocalServer;

/// How the sink answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 every time.
    Succeed,
    /// `status` for the first `n` requests of each `webhook-id`, then 200.
    FailFirst { n: usize, status: u16 },
    /// `status` forever.
    AlwaysFail { status: u16 },
    /// Answers 200 after `delay` (longer than the destination's timeout: a hang).
    Slow { delay: Duration },
    /// `status` with this body, every time.
    Answer { status: u16, body: Vec<u8> },
    /// Whatever the plan answers for this request and its try number (1-based).
    Planned(Plan),
    /// 200 after `service`, serving as many requests at once as `slots` has permits;
    /// the rest wait their turn (a destination with a fixed capacity).
    Capacity {
        slots: Arc<tokio::sync::Semaphore>,
        service: Duration,
    },
}

/// A test's own answer for each request and its try number.
type Planner = dyn Fn(&Received, usize) -> Answer + Send + Sync;

#[derive(Clone)]
pub struct Plan(Arc<Planner>);

impl Behaviour {
    pub fn capacity(slots: usize, service: Duration) -> Self {
        Behaviour::Capacity {
            slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            service,
        }
    }

    pub fn planned(plan: impl Fn(&Received, usize) -> Answer + Send + Sync + 'static) -> Self {
        Behaviour::Planned(Plan(Arc::new(plan)))
    }
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Plan(..)")
    }
}

/// One answer of a [`Plan`].
#[derive(Debug, Clone)]
pub enum Answer {
    /// `status` with `body`, whole.
    Whole { status: u16, body: Vec<u8> },
    /// `status` (429 or 503) with `Retry-After: seconds`.
    RetryAfter { status: u16, seconds: u64 },
    /// `status`, then `chunk` every `every`, `count` times, or without end when `None`
    /// (until the client goes away).
    Stream {
        status: u16,
        chunk: Vec<u8>,
        every: Duration,
        count: Option<usize>,
    },
    /// `answer` after `delay` (longer than the destination's timeout: a hang).
    After { delay: Duration, answer: Box<Answer> },
}

impl Answer {
    pub fn ok() -> Self {
        Answer::Whole {
            status: 200,
            body: b"ok".to_vec(),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Answer::Whole { status, .. }
            | Answer::RetryAfter { status, .. }
            | Answer::Stream { status, .. } => *status,
            Answer::After { answer, .. } => answer.status(),
        }
    }

    async fn respond(self) -> HttpResponse {
        if let Answer::After { delay, answer } = self {
            tokio::time::sleep(delay).await;
            return Box::pin(answer.respond()).await;
        }
        let code = |status| actix_web::http::StatusCode::from_u16(status).unwrap();
        match self {
            Answer::Whole { status, body } => HttpResponse::build(code(status)).body(body),
            Answer::RetryAfter { status, seconds } => HttpResponse::build(code(status))
                .insert_header(("retry-after", seconds.to_string()))
                .body("slow down"),
            Answer::Stream {
                status,
                chunk,
                every,
                count,
            } => {
                let chunk = web::Bytes::from(chunk);
                let chunks = futures_util::stream::unfold(0usize, move |sent| {
                    let chunk = chunk.clone();
                    async move {
                        if count.is_some_and(|count| sent >= count) {
                            return None;
                        }
                        if !every.is_zero() {
                            tokio::time::sleep(every).await;
                        }
                        Some((Ok::<_, std::convert::Infallible>(chunk), sent + 1))
                    }
                });
                HttpResponse::build(code(status)).streaming(chunks)
            }
            Answer::After { .. } => unreachable!("answered above"),
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn webhook_id(&self) -> String {
        self.header("webhook-id").unwrap_or_default().to_string()
    }

    /// The ordering key the tests use: the payload's `/data/object/customer`.
    pub fn ordering_key(&self) -> Option<String> {
        let json: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        json.pointer("/data/object/customer")?.as_str().map(String::from)
    }

    /// The provider event id in the body (the tests' Stripe events carry one).
    pub fn event_id(&self) -> String {
        let json: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        // Most providers' bodies carry `id`; Slack's, Paddle's and Square's `event_id`;
        // Zoom's none (send-test-event puts it in `payload.object.id`, and Linear's
        // in `data.id`).
        json["id"]
            .as_str()
            .or_else(|| json["event_id"].as_str())
            .or_else(|| json["payload"]["object"]["id"].as_str())
            // Linear's: in `data.id`; Meta's, in its first message.
            .or_else(|| json["data"]["id"].as_str())
            .or_else(|| json["entry"][0]["changes"][0]["value"]["messages"][0]["id"].as_str())
            // A body that is not JSON (Twilio's forms): the id relayd stored.
            .or_else(|| self.header("x-relayd-event-id"))
            .unwrap_or_default()
            .to_string()
    }
}

struct State {
    behaviour: Behaviour,
    received: Mutex<Vec<Received>>,
    tries: Mutex<HashMap<String, usize>>,
    /// Requests being answered now, and the most at once since the last reset.
    active: AtomicUsize,
    peak: AtomicUsize,
    /// Requests being answered now, by ordering key.
    keys_active: Mutex<HashMap<String, usize>>,
    /// Requests that arrived while another of their key was being answered.
    overlaps: Mutex<Vec<String>>,
    /// Every answer given (the client did not go away first), in order.
    answered: Mutex<Vec<Answered>>,
}

/// One request that was answered.
#[derive(Debug, Clone)]
pub struct Answered {
    pub status: u16,
}

/// Counts a request of its key as active while it lives.
struct KeyActive<'a> {
    state: &'a State,
    key: Option<String>,
}

impl<'a> KeyActive<'a> {
    fn new(state: &'a State, key: Option<String>, event_id: &str) -> Self {
        if let Some(key) = &key {
            let mut active = state.keys_active.lock().unwrap();
            let now = active.entry(key.clone()).or_default();
            if *now > 0 {
                state.overlaps.lock().unwrap().push(format!(
                    "{event_id} of key {key} arrived while {now} of its key were in flight"
                ));
            }
            *now += 1;
        }
        Self { state, key }
    }
}

impl Drop for KeyActive<'_> {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            *self
                .state
                .keys_active
                .lock()
                .unwrap()
                .entry(key.clone())
                .or_default() -= 1;
        }
    }
}

/// Counts a request as active while it lives.
struct Active<'a>(&'a State);

impl<'a> Active<'a> {
    fn new(state: &'a State) -> Self {
        let now = state.active.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak.fetch_max(now, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Sink {
    pub url: String,
    state: Arc<State>,
    server: LocalServer,
}

impl Sink {
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_at("127.0.0.1:0", behaviour).await
    }

    /// A sink on `addr`, for a target that goes away and comes back where it was.
    pub async fn start_at(addr: &str, behaviour: Behaviour) -> Self {
        let state = Arc::new(State {
            behaviour,
            received: Mutex::new(Vec::new()),
            tries: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            keys_active: Mutex::new(HashMap::new()),
            overlaps: Mutex::new(Vec::new()),
            answered: Mutex::new(Vec::new()),
        });
        let data = web::Data::from(state.clone());
        let server = LocalServer::start_at(addr, 2, move |cfg| {
            cfg.app_data(data.clone())
                .route("/hooks", web::post().to(receive));
        })
        .unwrap();
        Self {
            url: server.url("/hooks"),
            state,
            server,
        }
    }

    /// Requests that arrived while another of their ordering key was in flight.
    pub fn overlaps(&self) -> Vec<String> {
        self.state.overlaps.lock().unwrap().clone()
    }

    /// Every answer given, in order.
    pub fn answered(&self) -> Vec<Answered> {
        self.state.answered.lock().unwrap().clone()
    }

    /// What the receiver saw keeps each key's order: no request arrived while another of
    /// its key was in flight, and each key's requests (retries and redeliveries included)
    /// came in the order its events were accepted — never an earlier event after a later
    /// one — and every event came.
    pub fn assert_in_order(&self, expected: &HashMap<String, Vec<String>>) {
        let overlaps = self.overlaps();
        let received = self.received();
        assert!(
            overlaps.is_empty(),
            "{} overlaps, first: {}",
            overlaps.len(),
            overlaps[0]
        );
        let mut arrivals: HashMap<String, Vec<String>> = HashMap::new();
        for request in &received {
            if let Some(key) = request.ordering_key() {
                arrivals.entry(key).or_default().push(request.event_id());
            }
        }
        for (key, ids) in expected {
            let position: HashMap<&str, usize> =
                ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
            let seen: Vec<usize> = arrivals
                .get(key)
                .map(|a| a.iter().map(|id| position[id.as_str()]).collect())
                .unwrap_or_default();
            assert!(
                seen.windows(2).all(|w| w[0] <= w[1]),
                "key {key} arrived out of order: {seen:?}"
            );
            let mut distinct = seen.clone();
            distinct.dedup();
            assert_eq!(
                distinct,
                (0..ids.len()).collect::<Vec<_>>(),
                "key {key}: not every event came"
            );
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// The most requests it was answering at once since the last call.
    pub fn take_peak_active(&self) -> usize {
        self.state
            .peak
            .swap(self.state.active.load(Ordering::SeqCst), Ordering::SeqCst)
    }

    /// Waits until at least `n` requests arrived (panics after `timeout`).
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "sink got {} of {n} requests",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until requests for every event id in `ids` arrived.
    pub async fn wait_for_events(&self, ids: &std::collections::HashSet<String>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let got: std::collections::HashSet<String> =
                self.received().iter().map(Received::event_id).collect();
            let missing = ids.difference(&got).count();
            if missing == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sink still misses {missing} of {} events",
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

async fn receive(state: web::Data<State>, request: HttpRequest, body: web::Bytes) -> HttpResponse {
    let _active = Active::new(&state);
    let headers = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let received = Received {
        headers,
        body: body.to_vec(),
        at: Instant::now(),
    };
    let try_number = {
        let mut tries = state.tries.lock().unwrap();
        let n = tries.entry(received.webhook_id()).or_default();
        *n += 1;
        *n
    };
    let planned = match &state.behaviour {
        Behaviour::Planned(plan) => Some((plan.0)(&received, try_number)),
        _ => None,
    };
    let key = received.ordering_key();
    let event_id = received.event_id();
    let _key_active = KeyActive::new(&state, key, &event_id);
    state.received.lock().unwrap().push(received);
    let response = answer(&state, planned, try_number).await;
    state.answered.lock().unwrap().push(Answered {
        status: response.status().as_u16(),
    });
    response
}

async fn answer(state: &State, planned: Option<Answer>, try_number: usize) -> HttpResponse {
    match &state.behaviour {
        Behaviour::Succeed => HttpResponse::Ok().body("ok"),
        Behaviour::FailFirst { n, status } if try_number <= *n => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(*status).unwrap()).body("try again")
        }
        Behaviour::FailFirst { .. } => HttpResponse::Ok().body("ok"),
        Behaviour::AlwaysFail { status } => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(*status).unwrap()).body("broken")
        }
        Behaviour::Slow { delay } => {
            tokio::time::sleep(*delay).await;
            HttpResponse::Ok().body("late")
        }
        Behaviour::Answer { status, body } => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(*status).unwrap()).body(body.clone())
        }
        Behaviour::Planned(_) => planned.expect("planned above").respond().await,
        Behaviour::Capacity { slots, service } => {
            let _slot = slots.acquire().await;
            tokio::time::sleep(*service).await;
            HttpResponse::Ok().body("ok")
        }
    }
}
