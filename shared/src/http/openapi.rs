//! The OpenAPI 3.1 document of the HTTP API, served at `/openapi.json`.
//!
//! Generated from the handlers' `#[utoipa::path]` annotations and the wire types of
//! [`super::api`] (the same types the handlers answer with). The error answers every guarded
//! route shares (401, 413, 415, 500, 503) are added here once, from each operation's security
//! and body, so they cannot be forgotten on a new route.

use std::sync::LazyLock;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::handlers;

/// The document's source: every route of [`super::router`] (a test keeps the two equal).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "recall",
        description = "Long-term memory for chat companions: append messages, search a \
                       (user, character) pair's memories, get a context block or an enhanced \
                       system prompt. Errors are `{\"error\":{\"code\",\"message\",\"field\"}}`; \
                       `field` names the bad input."
    ),
    paths(
        handlers::message_created,
        handlers::append_message,
        handlers::check_batch,
        handlers::search,
        handlers::stats,
        handlers::context,
        handlers::enhance_prompt,
        handlers::erase_user,
        handlers::erase_pair,
        handlers::health,
        handlers::liveness,
        handlers::readiness,
        handlers::metrics,
        handlers::openapi,
    ),
    components(schemas(super::api::ErrorBody)),
    modifiers(&SecuritySchemes, &CommonErrors),
    tags(
        (name = "memory", description = "Messages in, memories, context and prompts out."),
        (name = "events", description = "The Cloud Function's webhook."),
        (name = "health", description = "Probes, metrics and this document (no auth)."),
    )
)]
pub struct ApiDoc;

/// The document as served.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document's JSON, built once.
pub(crate) fn document_json() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        document()
            .to_pretty_json()
            .expect("the document serialises")
    });
    &JSON
}

/// `bearer`: `Authorization: Bearer <RECALL_API_KEY>`; `signature`: the webhook's HMAC header.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "RECALL_API_KEY (on the webhook: RECALL_WEBHOOK_SECRET when it is set)",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                super::SIGNATURE_HEADER,
                "sha256=<hex HMAC-SHA256 of the raw body, keyed with RECALL_WEBHOOK_SECRET>",
            ))),
        );
    }
}

/// Adds the shared error answers to every operation that needs them.
struct CommonErrors;

fn error_response(description: &str, retry_after: bool) -> RefOr<Response> {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if retry_after {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer))
                .description(Some("seconds to wait before retrying"))
                .build(),
        );
    }
    response.build().into()
}

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in operations.into_iter().flatten() {
                let guarded = op.security.as_ref().is_some_and(|s| !s.is_empty());
                if !guarded {
                    continue;
                }
                let mut add = |status: &str, response| {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert(response);
                };
                add("401", error_response("missing or wrong credentials", false));
                add(
                    "500",
                    error_response(
                        "a dependency rejected the request (details in the logs)",
                        false,
                    ),
                );
                add(
                    "503",
                    error_response("a dependency is down: retry after `Retry-After`", true),
                );
                if op.request_body.is_some() {
                    add("413", error_response("the body is over 256 KiB", false));
                    add(
                        "415",
                        error_response("the body is not Content-Type: application/json", false),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn doc() -> Value {
        serde_json::from_str(document_json()).unwrap()
    }

    #[test]
    fn every_route_of_the_router_is_documented_and_nothing_else() {
        let served: BTreeSet<(String, String)> = super::super::routes()
            .into_iter()
            .map(|(m, p)| (m.as_str().to_lowercase(), p.to_owned()))
            .collect();
        let doc = doc();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .filter(|k| ["get", "post", "put", "patch", "delete"].contains(&k.as_str()))
                    .map(move |m| (m.clone(), path.clone()))
            })
            .collect();
        assert_eq!(served.len(), 14);
        assert_eq!(served, documented);
    }

    #[test]
    fn rate_limited_routes_and_only_they_document_429_with_retry_after() {
        let doc = doc();
        for route in super::super::route_table() {
            let method = route.method.as_str().to_lowercase();
            let op = &doc["paths"][route.path][&method];
            let answer = &op["responses"]["429"];
            assert_eq!(
                answer.is_object(),
                route.rate_limited,
                "{method} {}",
                route.path
            );
            if route.rate_limited {
                assert_eq!(
                    answer["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody"
                );
                assert_eq!(
                    answer["headers"]["Retry-After"]["schema"]["type"], "integer",
                    "{answer}"
                );
            }
        }
    }

    /// Every `$ref` in `v`, as JSON pointers.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(o) => {
                if let Some(Value::String(r)) = o.get("$ref") {
                    out.push(r.clone());
                }
                o.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_is_well_formed_openapi_3() {
        let doc = doc();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3."),
            "{}",
            doc["openapi"]
        );
        assert_eq!(doc["info"]["title"], "recall");
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r.strip_prefix('#').expect("local refs only");
            assert!(doc.pointer(pointer).is_some(), "dangling {r}");
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                assert!(!responses.is_empty(), "{method} {path}");
                // Every `{segment}` of the template is a declared path parameter.
                let declared: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                let in_template: BTreeSet<&str> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                    .collect();
                assert_eq!(declared, in_template, "{method} {path}");
                let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
                let open = [
                    "/memory/health",
                    "/healthz",
                    "/readyz",
                    "/metrics",
                    "/openapi.json",
                ]
                .contains(&path.as_str());
                assert_eq!(secured, !open, "{method} {path}");
                if secured {
                    for status in ["400", "401", "503"] {
                        let schema = &responses[status]["content"]["application/json"]["schema"];
                        assert_eq!(
                            schema["$ref"], "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
        let error = &doc["components"]["schemas"]["ErrorDetail"];
        for field in ["code", "message", "field"] {
            assert!(error["properties"][field].is_object(), "{field}");
        }
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["signature"]["name"], "x-recall-signature");
        // The parameters the clients send.
        let search = &doc["paths"]["/memory/search/{user_id}/{character_name}"]["get"];
        let names: Vec<&str> = search["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "user_id",
                "character_name",
                "query",
                "limit",
                "include_superseded"
            ]
        );
    }
}
