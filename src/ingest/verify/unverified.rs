//! Kind `none`: no signature check at all, for local testing. `check-config` warns
//! about every such source. The id and type come from the configured header or JSON
//! pointer (default: the body's `/id`; type `unknown`).

use std::time::SystemTime;

use actix_web::http::header::HeaderMap;

use super::extract::{Body, IdSource, TypeSource};
use super::sample::Draft;
use super::{Error, SampleEvent, SignedRequest, VerifiedEvent, Verifier};

pub struct UnverifiedSource {
    id: IdSource,
    event_type: TypeSource,
}

impl UnverifiedSource {
    pub fn new(id: IdSource, event_type: TypeSource) -> Self {
        Self { id, event_type }
    }
}

impl Verifier for UnverifiedSource {
    fn verify(&self, headers: &HeaderMap, body: &[u8], _now: SystemTime) -> Result<VerifiedEvent, Error> {
        let body = Body::new(body);
        Ok(VerifiedEvent {
            event_id: self.id.extract(headers, &body)?,
            event_type: self.event_type.extract(headers, &body),
        })
    }

    fn kept_headers(&self) -> Vec<String> {
        [self.id.header(), self.event_type.header(), Some("user-agent")]
            .into_iter()
            .flatten()
            .map(String::from)
            .collect()
    }

    fn sign(&self, event: &SampleEvent) -> Result<SignedRequest, Error> {
        let mut draft = Draft::new(event);
        draft.place_id(&self.id, &event.id);
        draft.place_type(&self.event_type, &event.event_type);
        let body = draft.body();
        Ok(draft.finish(body))
    }
}
