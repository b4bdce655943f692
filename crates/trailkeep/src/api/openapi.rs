//! The OpenAPI 3.1 document, generated from the handlers' annotations.
//! A copy is checked in at `openapi.json`; a test fails when they drift.

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::native;

#[derive(OpenApi)]
#[openapi(
    info(title = "trailkeep", description = "Tamper-evident audit log: native API."),
    paths(
        native::create_event,
        native::create_batch,
        native::list_events,
        native::get_event,
        native::event_proof,
        native::checkpoint,
        native::consistency,
        native::export,
        native::create_webhook,
        native::list_webhooks,
        native::delete_webhook,
    ),
    components(schemas(native::EventIn, native::BatchIn, native::ReceiptOut, native::ProofOut, native::ConsistencyOut,
        native::WebhookIn,
        native::WebhookOut, crate::ingest::Violation)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as pretty JSON, as checked in.
#[must_use]
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut s = doc
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    s.push('\n');
    s
}

pub(crate) async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document())
}
