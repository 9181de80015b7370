//! `GET /docs`: the API reference, Redoc rendering `/openapi.json` in the browser. Redoc's script
//! is vendored (`assets/redoc/`, see its README) and served by the service itself; the page's
//! Content-Security-Policy lets the browser load nothing from another origin.

use actix_web::http::header;
use actix_web::{HttpResponse, HttpResponseBuilder};

/// Redoc's standalone bundle, without its one request to another host (version, checksums and
/// the change: `assets/redoc/README.md`).
const REDOC_JS: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js");

/// Redoc finds the `<redoc>` element when its script loads and fetches `spec-url`. The URLs are
/// relative, so that the page also works behind a proxy that serves the service under a prefix.
const PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>oath-service API reference</title>
</head>
<body>
<redoc spec-url="openapi.json"></redoc>
<script src="docs/redoc.standalone.js"></script>
</body>
</html>
"#;

/// Same origin only: the script and the document from here, no inline script. Redoc needs inline
/// styles (styled-components), `data:` images and a `blob:` worker for its search index.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
    connect-src 'self'; worker-src 'self' blob:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The API reference (HTML).
///
/// Redoc renders `/openapi.json`; every asset comes from this service. No authentication.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "Operations",
    operation_id = "apiReference",
    responses(
        (status = 200, description = "The API reference page.", body = String,
        content_type = "text/html"),
    ),
)]
pub async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", "no-cache")
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .body(PAGE)
}

/// The API reference's script (Redoc, vendored).
#[utoipa::path(
    get,
    path = "/docs/redoc.standalone.js",
    tag = "Operations",
    operation_id = "apiReferenceScript",
    responses(
        (status = 200, description = "Redoc's standalone bundle.", body = String,
        content_type = "text/javascript"),
    ),
)]
pub async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", "public, max-age=3600").body(REDOC_JS)
}

/// A file of the API reference: of `content_type`, never sniffed as another, cached as
/// `cache_control` says.
fn asset(content_type: &'static str, cache_control: &'static str) -> HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response
        .content_type(content_type)
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, cache_control));
    response
}
