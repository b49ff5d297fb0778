//! The built-in pages and SDK, embedded in the binary (no build step).

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::RustEmbed;

use super::AppState;

#[derive(RustEmbed)]
#[folder = "web/"]
struct Web;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { file("index.html") }))
        .route("/cast/{live}", get(|| async { file("cast.html") }))
        .route("/play/{live}", get(|| async { file("play.html") }))
        .route("/vessel.js", get(|| async { file("vessel.js") }))
        .route(
            "/assets/{*file}",
            get(|Path(f): Path<String>| async move { file(&f) }),
        )
}

fn file(name: &str) -> Response {
    match Web::get(name) {
        Some(f) => (
            [
                (header::CONTENT_TYPE, f.metadata.mimetype().to_string()),
                (header::CACHE_CONTROL, "no-cache".to_string()),
            ],
            f.data,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}
