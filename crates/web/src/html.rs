//! The HTML shell every page shares (head, styles, scripts, foot) and the
//! escaped-text builder; `pages` and `activation` render through it.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An HTML document under construction. Dynamic text goes through
/// [`Html::text`], which escapes it; [`Html::raw`] takes only string
/// literals, so no request or stored value can be written unescaped.
pub struct Html(String);

impl Html {
    pub(crate) fn new() -> Html {
        Html(String::with_capacity(4096))
    }

    pub(crate) fn raw(&mut self, s: &'static str) -> &mut Html {
        self.0.push_str(s);
        self
    }

    /// Escapes `& < > " '`, so the value is safe in text and in quoted
    /// attributes alike.
    pub(crate) fn text(&mut self, s: &str) -> &mut Html {
        for c in s.chars() {
            match c {
                '&' => self.0.push_str("&amp;"),
                '<' => self.0.push_str("&lt;"),
                '>' => self.0.push_str("&gt;"),
                '"' => self.0.push_str("&quot;"),
                '\'' => self.0.push_str("&#39;"),
                c => self.0.push(c),
            }
        }
        self
    }

    pub(crate) fn num(&mut self, n: i64) -> &mut Html {
        self.0.push_str(&n.to_string());
        self
    }

    pub(crate) fn into_response(self, status: StatusCode) -> Response {
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            self.0,
        )
            .into_response()
    }
}

pub(crate) fn page_start(
    h: &mut Html,
    title: &'static str,
    page: &'static str,
    handle: Option<&str>,
) {
    h.raw("<!doctype html>\n<html lang=\"fr\"><head><meta charset=\"utf-8\">")
        .raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .raw("<title>")
        .raw(title)
        .raw(" — Rempart</title>");
    if let Some(handle) = handle {
        h.raw("<meta name=\"rempart-session\" content=\"")
            .text(handle)
            .raw("\">");
    }
    h.raw("<link rel=\"stylesheet\" href=\"/static/rempart.css\">")
        .raw("<script src=\"/static/device.js\" defer></script>")
        .raw("<script src=\"/static/passkey.js\" defer></script>")
        .raw("<script src=\"/static/portail.js\" defer></script>")
        .raw("</head><body data-page=\"")
        .raw(page)
        .raw("\">");
}

pub(crate) fn page_end(h: &mut Html) {
    h.raw("</body></html>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_everywhere() {
        let mut h = Html::new();
        h.raw("<p title=\"")
            .text("\"><script>alert('x')</script>&")
            .raw("\">");
        assert_eq!(
            h.0,
            "<p title=\"&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;\">"
        );
    }
}
