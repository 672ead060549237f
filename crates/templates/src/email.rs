//! Email HTML after rendering: click tracking (rewrite the `href` of `<a>` and `<area>`
//! links through a caller-supplied function), the open pixel, and finding the
//! unsubscribe link. A small tag scanner, not an HTML parser: it skips comments and
//! reads attributes with double, single or no quotes, which is what email HTML uses.

/// Rewrite every trackable link of `html` with `track(url, index)`, where `index`
/// counts the tracked links from 0 in document order. Not tracked: anything but
/// absolute `http://`/`https://` URLs (so `mailto:`, `tel:`, `#anchors`, relative
/// links) and the unsubscribe link: a URL that starts with `skip` (when not empty;
/// compared after HTML-unescaping).
/// The URL handed to `track` is HTML-unescaped; its result is escaped back.
pub fn track_links(html: &str, skip: &str, track: &dyn Fn(&str, usize) -> String) -> String {
    let mut out = String::with_capacity(html.len() + html.len() / 8);
    let mut index = 0;
    let mut pos = 0;
    while let Some(rel) = html[pos..].find('<') {
        let start = pos + rel;
        if html[start..].starts_with("<!--") {
            let end = html[start..].find("-->").map_or(html.len(), |e| start + e + 3);
            out.push_str(&html[pos..end]);
            pos = end;
            continue;
        }
        let name_end = html[start + 1..].find(|c: char| !c.is_ascii_alphanumeric()).map_or(html.len(), |e| start + 1 + e);
        let name = &html[start + 1..name_end];
        if name.is_empty() {
            // Not a start tag (`</p>`, `<!DOCTYPE`, a stray `<`).
            out.push_str(&html[pos..start + 1]);
            pos = start + 1;
            continue;
        }
        let close = tag_end(html, name_end);
        if !(name.eq_ignore_ascii_case("a") || name.eq_ignore_ascii_case("area")) {
            out.push_str(&html[pos..close]);
            pos = close;
            continue;
        }
        out.push_str(&html[pos..name_end]);
        // Attributes of a link tag.
        let mut i = name_end;
        while i < close {
            let Some((attr_name, (v_start, v_end, next))) = next_attr(html, i, close) else {
                out.push_str(&html[i..close]);
                break;
            };
            if attr_name.eq_ignore_ascii_case("href") && v_end > v_start {
                let url = unescape(&html[v_start..v_end]);
                let lower = url.trim().to_ascii_lowercase();
                let unsubscribe = !skip.is_empty() && url.trim().starts_with(skip);
                let trackable = (lower.starts_with("http://") || lower.starts_with("https://")) && !unsubscribe;
                out.push_str(&html[i..v_start]);
                if trackable {
                    out.push_str(&escape_attr(&track(url.trim(), index)));
                    index += 1;
                } else {
                    out.push_str(&html[v_start..v_end]);
                }
                out.push_str(&html[v_end..next]);
            } else {
                out.push_str(&html[i..next]);
            }
            i = next;
        }
        pos = close;
    }
    out.push_str(&html[pos..]);
    out
}

/// The index just after the `>` closing a tag whose name ends at `from`, honouring quotes.
fn tag_end(html: &str, from: usize) -> usize {
    let b = html.as_bytes();
    let mut quote = None;
    let mut i = from;
    while i < b.len() {
        match (quote, b[i]) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') => quote = Some(b[i]),
            (None, b'>') => return i + 1,
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// The next attribute in `html[from..end]`: (its name, (value start, value end, index
/// after the attribute)). A value-less attribute has an empty value.
fn next_attr(html: &str, from: usize, end: usize) -> Option<(&str, (usize, usize, usize))> {
    let b = html.as_bytes();
    let mut i = from;
    while i < end && (b[i].is_ascii_whitespace() || b[i] == b'/') {
        i += 1;
    }
    if i >= end || b[i] == b'>' {
        return None;
    }
    let name_start = i;
    while i < end && !b[i].is_ascii_whitespace() && !matches!(b[i], b'=' | b'>' | b'/') {
        i += 1;
    }
    let name = &html[name_start..i];
    let mut j = i;
    while j < end && b[j].is_ascii_whitespace() {
        j += 1;
    }
    if j >= end || b[j] != b'=' {
        return Some((name, (i, i, i)));
    }
    j += 1;
    while j < end && b[j].is_ascii_whitespace() {
        j += 1;
    }
    if j < end && (b[j] == b'"' || b[j] == b'\'') {
        let q = b[j];
        let v_start = j + 1;
        let v_end = html[v_start..end].find(q as char).map_or(end, |e| v_start + e);
        return Some((name, (v_start, v_end, (v_end + 1).min(end))));
    }
    let v_start = j;
    while j < end && !b[j].is_ascii_whitespace() && b[j] != b'>' {
        j += 1;
    }
    Some((name, (v_start, j, j)))
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Insert a 1×1 open-tracking image for `pixel_url` just before `</body>`, or at the
/// end when there is no `</body>`.
pub fn insert_open_pixel(html: &str, pixel_url: &str) -> String {
    let img = format!("<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">", escape_attr(pixel_url));
    let lower = html.to_ascii_lowercase();
    match lower.rfind("</body") {
        Some(at) => format!("{}{img}{}", &html[..at], &html[at..]),
        None => format!("{html}{img}"),
    }
}

/// Whether `text` contains `url`, as written or HTML-escaped.
pub fn contains_url(text: &str, url: &str) -> bool {
    !url.is_empty() && (text.contains(url) || text.contains(&escape_attr(url)))
}
