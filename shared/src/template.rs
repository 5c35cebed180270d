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

/// Every byte but RFC 3986's unreserved characters is percent-encoded.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

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

/// A parsed URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    parts: Vec<Part>,
}

impl UrlTemplate {
    /// Parses `template`, which must hold `{id}` or `{key}` (or `{key:raw}`), not both.
    pub fn parse(template: &str) -> Result<UrlTemplate, TemplateError> {
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
        let t = UrlTemplate { parts };
        match (t.has_id(), t.has_key()) {
            (false, false) => Err(TemplateError::NoPlaceholder),
            (true, true) => Err(TemplateError::Both),
            _ => Ok(t),
        }
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

    /// The template's literal length.
    pub fn text_len(&self) -> usize {
        self.parts.iter().map(|p| if let Part::Text(t) = p { t.len() } else { 0 }).sum()
    }

    /// The URL of the item `id` (with `key`, for a keyed job), written into `out`.
    pub fn render<'o>(&self, id: u64, key: &str, out: &'o mut String) -> &'o str {
        out.clear();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Id => {
                    let mut digits = [0u8; 20];
                    out.push_str(itoa(id, &mut digits));
                }
                // A path segment of "." or ".." is removed by normalising servers (and
                // proxies): encoded, it is a name like any other.
                Part::Key if key == "." || key == ".." => key.chars().for_each(|_| out.push_str("%2E")),
                Part::Key => out.extend(percent_encoding::utf8_percent_encode(key, NOT_UNRESERVED)),
                Part::RawKey => out.push_str(key),
            }
        }
        out
    }
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
