//! The OpenAPI document of the JSON API, generated from the handlers' annotations in
//! [`super::json`], served at `/openapi.json` with an interactive page at `/docs` whose assets
//! the node serves itself (no internet needed).

use super::json::{AppendBody, AppendedBody, ErrorBody, GoneBody, MessageBody, MessagesBody};
use super::{Health, SecondaryHealth};
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "replog",
        description = "A replicated log: one master, any number of secondaries, every append replicated before it is acknowledged. The same API runs on every node; appends on a secondary are forwarded to the master. The gRPC service replog.v1.Log (gRPC and gRPC-Web, same port) offers the same operations plus a live Watch stream; GET /api/messages/stream is the same live tail as Server-Sent Events."
    ),
    paths(
        super::json::append,
        super::json::list,
        super::stream::stream,
        super::json::node_health,
        super::json::metrics,
        super::json::health,
    ),
    components(schemas(
        AppendBody,
        AppendedBody,
        ErrorBody,
        GoneBody,
        MessagesBody,
        MessageBody,
        super::stream::StreamEvent,
        Health,
        SecondaryHealth
    ))
)]
struct ApiDoc;

/// The document; with `nodes` known (on the master), `w` gets its exact maximum.
pub fn document(nodes: Option<u64>) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::schema::{Object, Schema};
    use utoipa::openapi::RefOr;
    let mut doc = ApiDoc::openapi();
    let append_w = doc
        .components
        .as_mut()
        .and_then(|c| c.schemas.get_mut("AppendBody"))
        .and_then(|body| match body {
            RefOr::T(Schema::Object(body)) => body.properties.get_mut("w"),
            _ => None,
        });
    if let (Some(nodes), Some(RefOr::T(Schema::Object(w)))) = (nodes, append_w) {
        let w: &mut Object = w;
        w.maximum = Some(utoipa::Number::UInt(nodes as usize));
        w.description = Some(format!(
            "Write concern: nodes (master included) that must hold the message before the answer; 1..={nodes} in this cluster, default {nodes} (all)."
        ));
    }
    doc
}

/// The interactive docs page at `/docs`: Swagger UI, its assets served by the node.
///
/// The page is ours rather than the crate's so that it sets `validatorUrl: null`: without it,
/// Swagger UI opened through any host but localhost sends the document's URL to an external
/// validator (validator.swagger.io), a call to the internet the node never needs.
pub fn docs_page() -> axum::Router {
    use axum::routing::get;
    let assets = swagger_ui_dist::generate_routes(swagger_ui_dist::ApiDefinition {
        uri_prefix: "/docs",
        api_definition: swagger_ui_dist::OpenApiSource::Uri("/openapi.json"),
        title: Some("replog API"),
    });
    axum::Router::new()
        .route("/docs", get(docs_index))
        .route("/docs/", get(docs_index))
        .route_service("/docs/{*asset}", assets.into_service::<axum::body::Body>())
}

/// The page that loads Swagger UI from `/docs/` and points it at `/openapi.json`.
async fn docs_index() -> axum::response::Html<&'static str> {
    axum::response::Html(DOCS_INDEX)
}

const DOCS_INDEX: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
    <meta charset="utf-8" />
    <meta name="viewport" content="width=device-width, initial-scale=1" />
    <title>replog API</title>
    <link rel="stylesheet" href="/docs/swagger-ui.css" />
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js" crossorigin></script>
<script>
    window.onload = () => {
    window.ui = SwaggerUIBundle({
        url: '/openapi.json',
        dom_id: '#swagger-ui',
        validatorUrl: null,
    });
    };
</script>
</body>
</html>"#;
