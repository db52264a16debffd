//! The files of the `/ui` pages, built into the binary (no front-end build): the dashboard
//! and the trace page, their scripts and their style sheets. Every answer under `/ui`
//! carries headers that keep a hostile value from ever running as script: a
//! Content-Security-Policy that allows only these files (no inline script, no inline
//! handler, no other origin, no framing), and no sniffing, no referrer, no caching.
//! The pages take their data from the API and set every value as text.

use std::sync::Arc;

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::ingress::AppState;

/// The policy of every `/ui` answer: scripts, styles and data from evrouter itself only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'none'";

/// The headers every `/ui` answer carries.
pub const HEADERS: [(HeaderName, &str); 5] = [
    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::CACHE_CONTROL, "no-store"),
];

/// Each path under `/ui`, its content type and its content.
pub const FILES: [(&str, &str, &str); 6] = [
    (
        "/ui",
        "text/html; charset=utf-8",
        include_str!("index.html"),
    ),
    (
        "/ui/trace",
        "text/html; charset=utf-8",
        include_str!("trace.html"),
    ),
    (
        "/ui/dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard.js"),
    ),
    (
        "/ui/trace.js",
        "text/javascript; charset=utf-8",
        include_str!("trace.js"),
    ),
    (
        "/ui/dashboard.css",
        "text/css; charset=utf-8",
        include_str!("dashboard.css"),
    ),
    (
        "/ui/trace.css",
        "text/css; charset=utf-8",
        include_str!("trace.css"),
    ),
];

/// Whether `path` is one of the files (served to every caller: they hold no data).
pub fn is_file(path: &str) -> bool {
    FILES.iter().any(|(p, _, _)| *p == path)
}

/// One file with the `/ui` headers.
fn answer(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    for (name, value) in HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The router that serves the files.
pub fn router() -> Router<Arc<AppState>> {
    FILES
        .iter()
        .fold(Router::new(), |router, &(path, content_type, body)| {
            router.route(path, get(move || async move { answer(content_type, body) }))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `html` has an attribute such as `onclick=`.
    fn has_inline_handler(html: &str) -> bool {
        let html = html.to_lowercase();
        html.match_indices(" on").any(|(at, _)| {
            let rest = &html[at + 3..];
            let name = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name > 0 && rest[name..].trim_start().starts_with('=')
        })
    }

    #[test]
    fn no_file_holds_inline_script_style_or_handlers() {
        for (path, _, body) in FILES {
            if !path.ends_with(".js") && !path.ends_with(".css") {
                assert!(!body.contains("<script>"), "{path}: inline script");
                assert!(!body.contains("style="), "{path}: inline style");
                assert!(!body.contains("<style"), "{path}: inline style sheet");
                assert!(!has_inline_handler(body), "{path}: inline handler");
            }
            if path.ends_with(".js") {
                assert!(!body.contains("innerHTML"), "{path}: parses HTML");
                assert!(!body.contains("insertAdjacentHTML"), "{path}: parses HTML");
                assert!(!body.contains("document.write"), "{path}: parses HTML");
            }
        }
    }
}
