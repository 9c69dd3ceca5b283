//! The dashboard: a page served at `/` with its assets under `/ui/`, all
//! compiled into the binary (no second server, no CDN, nothing fetched
//! from outside). The page signs in with a token it keeps for the tab
//! only and reads nothing but the documented API.
//!
//! Its sources are `host/dashboard/`: plain HTML, CSS and JavaScript (no
//! build step, so `cargo build` needs no Node), and uPlot (MIT, vendored
//! with its licence) for the charts.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// One embedded file.
struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $mime:literal) => {
        Asset {
            name: $name,
            mime: $mime,
            body: include_bytes!(concat!("../../dashboard/", $name)),
        }
    };
}

const ASSETS: &[Asset] = &[
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("vendor/uplot.min.js", "text/javascript; charset=utf-8"),
    asset!("vendor/uplot.min.css", "text/css; charset=utf-8"),
    asset!("vendor/uplot.LICENSE", "text/plain; charset=utf-8"),
];

const INDEX: &[u8] = include_bytes!("../../dashboard/index.html");

/// What the page may load and talk to: itself only.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

fn answer(mime: &'static str, body: &'static [u8]) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The page (`GET /`).
pub async fn index() -> Response {
    answer("text/html; charset=utf-8", INDEX)
}

/// One of its assets (`GET /ui/{*file}`).
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == file) {
        Some(a) => answer(a.mime, a.body),
        None => ApiError::not_found(format_args!("dashboard file {file:?}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_assets_that_are_embedded() {
        let page = std::str::from_utf8(INDEX).unwrap();
        let mut named = 0;
        for part in page.split("/ui/").skip(1) {
            let file = &part[..part.find('"').unwrap()];
            assert!(
                ASSETS.iter().any(|a| a.name == file),
                "{file} is not embedded"
            );
            named += 1;
        }
        assert!(named >= 4, "the page loads its script, styles and charts");
    }
}
