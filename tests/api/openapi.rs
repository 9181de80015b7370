//! `/openapi.json`: a well-formed OpenAPI 3 document that lists exactly the (method, path) pairs
//! the app serves, with the scopes the handlers really demand and request examples the parsers
//! really accept.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use oath_service::auth::Scope;
use oath_service::routes::ROUTES;
use reqwest::Method;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::app::{assert_error, expect_error, parts, spawn_app, TestApp};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

async fn document(app: &TestApp) -> Value {
    let res = app
        .get_anonymous_ok("/openapi.json", "application/json")
        .await;
    let (_, doc) = parts(res).await;
    doc
}

/// Every operation of the document: (method, path) -> operation object.
fn operations(doc: &Value) -> BTreeMap<(String, String), &Value> {
    let mut ops = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if METHODS.contains(&method.to_ascii_uppercase().as_str()) {
                ops.insert((method.to_ascii_uppercase(), path.clone()), op);
            }
        }
    }
    ops
}

/// What the app serves, from the route table that `routes::configure` registers.
fn served() -> BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .flat_map(|r| {
            r.paths.iter().flat_map(move |path| {
                r.methods
                    .iter()
                    .map(move |(m, _)| (m.as_str().to_string(), path.to_string()))
            })
        })
        .collect()
}

/// `{name}` segments of a path template.
fn template_params(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(str::to_string)
        .collect()
}

/// A concrete path in environment `env`: every other parameter a fresh UUID.
fn concrete(path: &str, env: Uuid) -> String {
    path.split('/')
        .map(|s| match s {
            "{env_id}" => env.to_string(),
            _ if s.starts_with('{') => Uuid::new_v4().to_string(),
            _ => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[sqlx::test]
async fn the_document_is_openapi_3_and_lists_exactly_the_served_routes(pool: PgPool) {
    let app = spawn_app(pool).await;
    let doc = document(&app).await;

    // OpenAPI 3.1, read by a parser independent of the generator: the operations it finds are
    // exactly the served routes, and each one's parameters, request body and responses resolve.
    let spec = oas3::from_json(doc.to_string()).expect("an OpenAPI 3.1 document");
    spec.validate_version()
        .expect("a supported OpenAPI version");
    assert!(!spec.info.title.is_empty() && !spec.info.version.is_empty());
    let mut parsed = BTreeSet::new();
    for (path, method, op) in spec.operations() {
        op.parameters(&spec).expect("parameters resolve");
        op.request_body(&spec).expect("the request body resolves");
        let declared = op.responses.as_ref().map_or(0, |r| r.len());
        assert_eq!(
            op.responses(&spec).len(),
            declared,
            "{method} {path}: responses resolve"
        );
        parsed.insert((method.as_str().to_string(), path));
    }
    assert_eq!(
        parsed,
        served(),
        "(method, path) pairs of the document vs the route table"
    );

    // Every reference resolves inside the document.
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    assert!(!all_refs.is_empty());
    for r in all_refs {
        let pointer = r.strip_prefix('#').expect("local reference");
        assert!(doc.pointer(pointer).is_some(), "unresolved {r}");
    }

    let ops = operations(&doc);
    assert_eq!(ops.keys().cloned().collect::<BTreeSet<_>>(), served());

    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    let mut operation_ids = HashSet::new();
    for ((method, path), op) in &ops {
        let what = format!("{method} {path}");
        assert!(
            operation_ids.insert(op["operationId"].as_str().expect("operationId")),
            "{what}: duplicate operationId"
        );
        assert!(op["summary"].as_str().is_some(), "{what}: summary");
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{what}: a success response"
        );

        // Path parameters: exactly the template's, all required.
        let declared: BTreeSet<String> = op["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["in"] == "path")
                    .inspect(|p| assert_eq!(p["required"], true, "{what}: {p}"))
                    .map(|p| p["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(declared, template_params(path), "{what}: path parameters");

        if let Some(body) = op.get("requestBody") {
            assert!(
                !body["content"].as_object().expect("content").is_empty(),
                "{what}: request media types"
            );
            for status in ["400", "413", "415"] {
                assert!(responses.contains_key(status), "{what}: {status}");
            }
        }

        if path.starts_with("/v1/") {
            // Authenticated, authorised per environment, database-backed.
            for status in ["401", "403", "404", "500", "503"] {
                assert!(responses.contains_key(status), "{what}: {status}");
            }
            // One requirement, or alternatives (any one scope allows the operation).
            let security = op["security"].as_array().expect("security");
            assert!(!security.is_empty(), "{what}");
            for requirement in security {
                for (scheme, scopes) in requirement.as_object().unwrap() {
                    assert!(schemes.contains_key(scheme), "{what}: scheme {scheme}");
                    assert_eq!(scopes.as_array().unwrap().len(), 1, "{what}: one scope");
                }
            }
        } else {
            assert!(op.get("security").is_none(), "{what}: no authentication");
        }
    }
}

/// Probes the running app: every documented (method, path) is routed (a `/v1` route asks for a
/// token first; the operational ones answer), every other method on those paths is 405, and an
/// unknown path is 404.
#[sqlx::test]
async fn every_documented_route_is_served_and_other_methods_are_405(pool: PgPool) {
    let app = spawn_app(pool).await;
    let doc = document(&app).await;
    let ops = operations(&doc);
    let paths: BTreeSet<&String> = ops.keys().map(|(_, p)| p).collect();
    for path in paths {
        let url = app.url(&concrete(path, app.env));
        for method in METHODS {
            let res = app
                .client
                .request(Method::from_bytes(method.as_bytes()).unwrap(), &url)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let what = format!("{method} {path}");
            if ops.contains_key(&(method.to_string(), path.clone())) {
                if path.starts_with("/v1/") {
                    assert_eq!(status, 401, "{what}");
                } else {
                    assert!(status == 200 || status == 503, "{what}: {status}");
                }
            } else {
                expect_error(res, 405, "METHOD_NOT_ALLOWED").await;
            }
        }
    }
    let (status, body) = app.get_json("/v1/nothing/here").await;
    assert_error(status, &body, 404, "NOT_FOUND");
}

/// The documented scope is the one the handler demands: with it alone the request gets past
/// authorisation, with every other scope it is 403.
#[sqlx::test]
async fn documented_scopes_are_the_ones_demanded(pool: PgPool) {
    let app = spawn_app(pool).await;
    let doc = document(&app).await;
    for ((method, path), op) in operations(&doc) {
        let Some(security) = op["security"].as_array() else {
            continue;
        };
        // Alternatives (OR): each documented scope alone is enough; every other one is not.
        let documented: Vec<Scope> = security
            .iter()
            .map(|requirement| {
                let name = requirement["bearer"][0].as_str().unwrap();
                Scope::ALL
                    .into_iter()
                    .find(|s| s.as_str() == name)
                    .unwrap_or_else(|| panic!("{method} {path}: unknown scope {name}"))
            })
            .collect();
        let others: Vec<Scope> = Scope::ALL
            .into_iter()
            .filter(|s| !documented.contains(s))
            .collect();
        let url = app.url(&concrete(&path, app.env));
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let with_scopes = |scopes: Vec<Scope>| {
            app.client
                .request(method.clone(), &url)
                .bearer_auth(app.token(&scopes))
                .send()
        };
        for scope in &documented {
            let status = with_scopes(vec![*scope]).await.unwrap().status().as_u16();
            assert!(
                status != 401 && status != 403,
                "{method} {path} with {}: {status}",
                scope.as_str()
            );
        }
        expect_error(with_scopes(others).await.unwrap(), 403, "ACCESS_FAILED").await;
    }
}

/// The request examples of the document are accepted by the service's parsers.
#[sqlx::test]
async fn request_examples_are_accepted(pool: PgPool) {
    let app = spawn_app(pool).await;
    let doc = document(&app).await;
    let schema_example = |media: &Value| -> Value {
        let pointer = media["schema"]["$ref"]
            .as_str()
            .expect("a schema reference")
            .trim_start_matches('#');
        doc.pointer(pointer).expect("schema")["example"].clone()
    };
    let mut checked = 0;
    for ((method, path), op) in operations(&doc) {
        let Some(content) = op["requestBody"]["content"].as_object() else {
            continue;
        };
        for (media_type, media) in content {
            if !media_type.contains("json") {
                continue; // file imports: exercised by their own tests
            }
            let example = schema_example(media);
            assert!(example.is_object(), "{method} {path} {media_type}: example");
            let res = app
                .request(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    &concrete(&path, app.env),
                )
                .header("content-type", media_type.as_str())
                .body(example.to_string())
                .send()
                .await
                .unwrap();
            let (status, body) = parts(res).await;
            // Single-resource operations on a random token id get past parsing to the lookup.
            let accepted = if path.ends_with("{token_id}/validate")
                || path.ends_with("{token_id}/resync")
                || path.ends_with("{token_id}/pairing")
                || (method == "PATCH" && path.ends_with("{token_id}"))
                || (method == "PUT" && path.ends_with("{subscription_id}"))
            {
                status == 404
            } else {
                status == 201 || status == 202
            };
            assert!(accepted, "{method} {path} {media_type}: {status} {body}");
            checked += 1;
        }
    }
    assert_eq!(
        checked, 10,
        "create token, two job types, validate, resync, pairing, update (two media types), \
         create and replace a subscription"
    );
}

/// Routes are registered only from the route table: no `web::resource`, `web::scope` or
/// `.route(` anywhere but `routes::configure`, so nothing can be served that the table (and so
/// the test above) does not know.
#[test]
fn routes_are_registered_only_from_the_table() {
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for needle in [
            "web::resource(",
            "web::scope(",
            ".route(",
            "web::get()",
            "web::post()",
        ] {
            for (n, line) in text.lines().enumerate() {
                if line.contains(needle) {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    // `configure`'s `web::resource(r.paths...)` and `.route(handler()...)`, nothing else.
    let table = src.join("routes").join("mod.rs").display().to_string();
    assert_eq!(found.len(), 2, "route registrations: {found:#?}");
    assert!(
        found.iter().all(|f| f.starts_with(&format!("{table}:"))),
        "route registrations outside the route table: {found:#?}"
    );
}

/// `docs/openapi.json` is the document the service serves, so that a change of the API shows in
/// review. `OATH_WRITE_OPENAPI=1` rewrites the file instead of comparing.
#[sqlx::test]
async fn the_committed_document_is_the_served_one(pool: PgPool) {
    let app = spawn_app(pool).await;
    let served = format!("{:#}\n", document(&app).await);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    if std::env::var_os("OATH_WRITE_OPENAPI").is_some_and(|v| v == "1") {
        std::fs::write(path, &served).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == served,
        "docs/openapi.json differs from GET /openapi.json: rewrite it with \
         OATH_WRITE_OPENAPI=1 cargo test --test api the_committed_document_is_the_served_one, \
         then review and commit the change"
    );
}
