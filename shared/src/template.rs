//! The URL template: where an item's id or key goes in the URL, and how each is written there.
//!
//! Three placeholders, and nothing else: `{id}` (the integer id, as decimal digits), `{key}` (the
//! item's key, percent-encoded for where it stands) and `{key:raw}` (the key as it is, for keys
//! that are paths or whole URLs). Any other brace is literal text, so a template never needs
//! escaping. A `{key}` is encoded so that the server decodes exactly the key: every byte but the
//! unreserved characters of RFC 3986 (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`, in the path (a `/`
//! in a key is `%2F`, one path segment) as in the query (`&`, `=`, `+`, `#` encoded; a space is
//! `%20`, which form decoders read as a space too). A key that is `.` or `..` is written `%2E` or
//! `%2E%2E`, as such a path segment would otherwise be removed by servers that normalise paths.
//!
//! The template is parsed once (the supervisor checks it, each worker renders with it) and
//! rendered into a reused buffer, so the steady state allocates nothing.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// The longest key, in bytes: its URL must fit a request head (a longer one is refused where
/// the keys are read). 2,000 is the URL length every server and proxy takes.
pub const MAX_KEY_BYTES: usize = 2000;

/// Every byte but RFC 3986's unreserved characters is percent-encoded (as a URL's `{key}`, and
/// as RFC 6749 2.3.1 asks of a client's id and secret in HTTP Basic).
pub const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// How a key is written where a template puts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// In a URL: percent-encoded (all but the unreserved characters).
    Url,
    /// In a JSON body: as the content of a JSON string (quotes, backslashes and control
    /// characters escaped), so `"{key}"` is a JSON string whatever the key.
    Json,
    /// In a form body (`application/x-www-form-urlencoded`): percent-encoded, as in a URL.
    Form,
    /// In a header or a body of another type: as it is (a key holds no CR, LF or NUL).
    Raw,
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Id,
    Key,
    RawKey,
}

/// Why a template is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{key:...}` with a form other than `raw`.
    #[error(
        "`{{key:{0}}}` is not a placeholder: write `{{key}}` (encoded for where it stands) or `{{key:raw}}`"
    )]
    UnknownForm(String),
    /// Neither `{id}` nor `{key}`: every item would fetch the same URL.
    #[error("it has no {{id}} or {{key}} in it")]
    NoPlaceholder,
    /// Both `{id}` and `{key}`: an item is one or the other.
    #[error("it has both {{id}} and {{key}}: a job's items are ids or keys, not both")]
    Both,
}

/// A parsed template: of a URL, a header's value or a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    encoding: Encoding,
}

/// A URL's template.
pub type UrlTemplate = Template;

impl Template {
    /// Parses the URL template `template`, which must hold `{id}` or `{key}` (or `{key:raw}`),
    /// not both.
    pub fn parse(template: &str) -> Result<Template, TemplateError> {
        let t = Self::parse_as(template, Encoding::Url)?;
        match (t.has_id(), t.has_key()) {
            (false, false) => Err(TemplateError::NoPlaceholder),
            (true, true) => Err(TemplateError::Both),
            _ => Ok(t),
        }
    }

    /// Parses `template`, whose keys are written as `encoding` says; it may hold no
    /// placeholder.
    pub fn parse_as(template: &str, encoding: Encoding) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            text.push_str(&rest[..open]);
            let tail = &rest[open..];
            let (part, len) = if tail.starts_with("{id}") {
                (Part::Id, 4)
            } else if tail.starts_with("{key}") {
                (Part::Key, 5)
            } else if tail.starts_with("{key:") {
                let close = tail.find('}').ok_or_else(|| TemplateError::UnknownForm(tail[5..].to_owned()))?;
                match &tail[5..close] {
                    "raw" => (Part::RawKey, close + 1),
                    other => return Err(TemplateError::UnknownForm(other.to_owned())),
                }
            } else {
                text.push('{');
                rest = &tail[1..];
                continue;
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(part);
            rest = &tail[len..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts, encoding })
    }

    /// Whether items are integer ids (`{id}`).
    pub fn has_id(&self) -> bool {
        self.parts.contains(&Part::Id)
    }

    /// Whether items are keys (`{key}` or `{key:raw}`).
    pub fn has_key(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Key | Part::RawKey))
    }

    /// Whether the template is a key as it is and nothing before it: the key is the URL, or
    /// begins it.
    pub fn starts_with_raw_key(&self) -> bool {
        self.parts.first() == Some(&Part::RawKey)
    }

    /// How many placeholders it holds.
    pub fn placeholders(&self) -> usize {
        self.parts.iter().filter(|p| !matches!(p, Part::Text(_))).count()
    }

    /// `text` as it is, with no placeholder.
    pub fn literal(text: &str) -> Template {
        Template { parts: vec![Part::Text(text.to_owned())], encoding: Encoding::Raw }
    }

    /// Whether it is only text.
    pub fn is_constant(&self) -> bool {
        self.placeholders() == 0
    }

    /// Its text, when it holds no placeholder: what every item's rendering would be.
    pub fn as_text(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// The template for the item `id` (with `key`, for a keyed job), written into `out`.
    pub fn render<'o>(&self, id: u64, key: &str, out: &'o mut String) -> &'o str {
        out.clear();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Id => {
                    let mut digits = [0u8; 20];
                    out.push_str(itoa(id, &mut digits));
                }
                Part::Key => match self.encoding {
                    // A path segment of "." or ".." is removed by normalising servers (and
                    // proxies): encoded, it is a name like any other.
                    Encoding::Url if key == "." || key == ".." => {
                        key.chars().for_each(|_| out.push_str("%2E"))
                    }
                    Encoding::Url | Encoding::Form => {
                        out.extend(percent_encoding::utf8_percent_encode(key, NOT_UNRESERVED));
                    }
                    Encoding::Json => json_escape(key, out),
                    Encoding::Raw => out.push_str(key),
                },
                Part::RawKey => out.push_str(key),
            }
        }
        out
    }
}

/// How a body of `content_type` writes its keys: JSON string content for any JSON type
/// (`application/json`, `application/graphql-response+json`, `...+json`), form-encoded for
/// `application/x-www-form-urlencoded`, as they are otherwise.
pub fn body_encoding(content_type: &str) -> Encoding {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        Encoding::Json
    } else if essence == "application/x-www-form-urlencoded" {
        Encoding::Form
    } else {
        Encoding::Raw
    }
}

/// `s` as the content of a JSON string (serde_json's escaping, without its quotes).
fn json_escape(s: &str, out: &mut String) {
    let quoted = serde_json::to_string(s).expect("a string always serializes");
    out.push_str(&quoted[1..quoted.len() - 1]);
}

/// `n` in decimal, without allocating.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ASCII digits")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, id: u64, key: &str) -> String {
        UrlTemplate::parse(t).expect("parses").render(id, key, &mut String::new()).to_owned()
    }

    #[test]
    fn ids_are_written_in_decimal_everywhere_they_stand() {
        assert_eq!(render("http://h/a/{id}/b?id={id}&x=1", 42, ""), "http://h/a/42/b?id=42&x=1");
        for n in [0, 7, 10, 999_999, u64::MAX] {
            assert_eq!(render("{id}", n, ""), n.to_string());
        }
    }

    #[test]
    fn keys_are_encoded_so_the_server_decodes_exactly_the_key() {
        let t = "http://h/users/{key}?q={key}";
        assert_eq!(render(t, 0, "octocat"), "http://h/users/octocat?q=octocat");
        assert_eq!(render(t, 0, "a/b c"), "http://h/users/a%2Fb%20c?q=a%2Fb%20c");
        assert_eq!(
            render(t, 0, "x&y=z+w#f?%"),
            "http://h/users/x%26y%3Dz%2Bw%23f%3F%25?q=x%26y%3Dz%2Bw%23f%3F%25"
        );
        assert_eq!(render(t, 0, "é🙂"), "http://h/users/%C3%A9%F0%9F%99%82?q=%C3%A9%F0%9F%99%82");
        assert_eq!(render(t, 0, "a-b.c_d~e"), "http://h/users/a-b.c_d~e?q=a-b.c_d~e");
        assert_eq!(render(t, 0, ".."), "http://h/users/%2E%2E?q=%2E%2E");
        assert_eq!(render(t, 0, "."), "http://h/users/%2E?q=%2E");
        assert_eq!(render("{key:raw}", 0, "http://h/a b/c"), "http://h/a b/c");
        assert_eq!(render("http://h/{key:raw}.json", 0, "a/b"), "http://h/a/b.json");
    }

    #[test]
    fn keys_in_a_json_body_are_json_string_content_and_braces_stay_literal() {
        let body = r#"{"query":"query($k: ID!){ user(key: $k){ key } }","variables":{"k":"{key}","n":{id}}}"#;
        let t = Template::parse_as(body, Encoding::Json).expect("parses");
        for key in ["plain", "quo\"te", "back\\slash", "tab\tnew\nline", "emoji🙂 é", "\u{1}"] {
            let text = t.render(7, key, &mut String::new()).to_owned();
            let v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{key:?}: {e}: {text}"));
            assert_eq!(v["variables"]["k"].as_str(), Some(key), "{text}");
            assert_eq!(v["variables"]["n"].as_u64(), Some(7));
            assert!(v["query"].as_str().expect("query").contains("{ user(key: $k){ key } }"));
        }
        let form = Template::parse_as("name={key}&x=1", Encoding::Form).expect("parses");
        assert_eq!(form.render(0, "a b&c=d", &mut String::new()), "name=a%20b%26c%3Dd&x=1");
        let raw = Template::parse_as("Bearer {key}", Encoding::Raw).expect("parses");
        assert_eq!(raw.render(0, "a b", &mut String::new()), "Bearer a b");
        let constant = Template::parse_as("no placeholder", Encoding::Json).expect("parses");
        assert!(constant.is_constant());
        assert_eq!(constant.as_text(), Some("no placeholder"));
        assert_eq!(raw.as_text(), None);
    }

    #[test]
    fn any_other_brace_is_literal() {
        assert_eq!(
            render("http://h/q?v={\"a\":{key}}&{x}&{keys}&{", 0, "k"),
            "http://h/q?v={\"a\":k}&{x}&{keys}&{"
        );
    }

    #[test]
    fn templates_without_an_item_or_with_both_or_an_unknown_form_are_refused() {
        assert_eq!(UrlTemplate::parse("http://h/x"), Err(TemplateError::NoPlaceholder));
        assert_eq!(UrlTemplate::parse("http://h/{id}/{key}"), Err(TemplateError::Both));
        assert_eq!(UrlTemplate::parse("http://h/{key:path}"), Err(TemplateError::UnknownForm("path".into())));
        let t = UrlTemplate::parse("{key:raw}").expect("parses");
        assert!(t.has_key() && !t.has_id() && t.starts_with_raw_key());
        assert_eq!(UrlTemplate::parse("http://h/{id}").map(|t| t.placeholders()), Ok(1));
    }
}
