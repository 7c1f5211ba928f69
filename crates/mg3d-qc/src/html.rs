//! HTML building blocks of the QC page: escaping, tables, notes, embedded images (data URIs) and
//! the page skeleton (inline CSS, a tiny inline script that records whether every image loaded).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A visible note replacing (part of) a section whose data is missing or unreadable.
pub fn note(text: &str) -> String {
    format!("<p class=\"note\">{}</p>\n", escape(text))
}

/// A number for a table cell: integers without decimals, others with 4 significant digits,
/// NaN and infinities spelled out.
pub fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v.abs() >= 1e-3 && v.abs() < 1e6 {
        let digits = (3 - v.abs().log10().floor() as i32).max(0) as usize;
        format!("{v:.digits$}")
    } else {
        format!("{v:.3e}")
    }
}

/// An HTML table; cells are escaped, numeric columns right-aligned.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    numeric: Vec<bool>,
}

impl Table {
    /// A table with these column headers; columns listed in `numeric` (by index) align right.
    pub fn new(header: &[&str], numeric: &[usize]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            numeric: (0..header.len()).map(|i| numeric.contains(&i)).collect(),
        }
    }

    /// Appends a row (missing cells are empty, extra cells dropped).
    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) -> &mut Self {
        let mut r: Vec<String> = cells.iter().map(|c| c.as_ref().to_string()).collect();
        r.resize(self.header.len(), String::new());
        self.rows.push(r);
        self
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as HTML.
    pub fn html(&self) -> String {
        let mut s = String::from("<table>\n<thead><tr>");
        for (h, n) in self.header.iter().zip(&self.numeric) {
            s.push_str(&format!("<th{}>{}</th>", class_num(*n), escape(h)));
        }
        s.push_str("</tr></thead>\n<tbody>\n");
        for r in &self.rows {
            s.push_str("<tr>");
            for (c, n) in r.iter().zip(&self.numeric) {
                s.push_str(&format!("<td{}>{}</td>", class_num(*n), escape(c)));
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</tbody>\n</table>\n");
        s
    }
}

fn class_num(numeric: bool) -> &'static str {
    if numeric { " class=\"num\"" } else { "" }
}

/// An embedded image: `<img>` with a base64 data URI, its alt text and display size in CSS px.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// MIME type, e.g. `image/svg+xml` or `image/png`.
    pub mime: &'static str,
    /// The encoded file.
    pub bytes: Vec<u8>,
    /// Alternative text (also names the image when the page reports one that did not load).
    pub alt: String,
    /// Display width and height (CSS px).
    pub size: (u32, u32),
}

impl Image {
    /// An SVG drawing of `size` px.
    pub fn svg(svg: String, alt: &str, size: (u32, u32)) -> Image {
        Image {
            mime: "image/svg+xml",
            bytes: svg.into_bytes(),
            alt: alt.to_string(),
            size,
        }
    }

    /// A PNG file shown at `size` px.
    pub fn png(png: Vec<u8>, alt: &str, size: (u32, u32)) -> Image {
        Image {
            mime: "image/png",
            bytes: png,
            alt: alt.to_string(),
            size,
        }
    }

    /// The `<img>` element.
    pub fn html(&self) -> String {
        format!(
            "<img alt=\"{}\" width=\"{}\" height=\"{}\" src=\"data:{};base64,{}\">",
            escape(&self.alt),
            self.size.0,
            self.size.1,
            self.mime,
            STANDARD.encode(&self.bytes)
        )
    }
}

/// Builds a section's HTML and counts the images it embeds (the page states the total, which the
/// browser test compares with the images that loaded).
#[derive(Debug, Default)]
pub struct Html {
    /// The markup so far.
    pub body: String,
    /// `<img>` elements added.
    pub images: usize,
    /// Notes added (missing or unreadable data).
    pub notes: usize,
}

impl Html {
    /// Appends raw markup.
    pub fn raw(&mut self, s: &str) -> &mut Self {
        self.body.push_str(s);
        self
    }

    /// Appends an escaped paragraph.
    pub fn para(&mut self, text: &str) -> &mut Self {
        self.body.push_str(&format!("<p>{}</p>\n", escape(text)));
        self
    }

    /// Appends an escaped heading of `level` (3 or 4 inside sections).
    pub fn heading(&mut self, level: u8, text: &str) -> &mut Self {
        self.body
            .push_str(&format!("<h{level}>{}</h{level}>\n", escape(text)));
        self
    }

    /// Appends a note and counts it.
    pub fn note(&mut self, text: &str) -> &mut Self {
        self.body.push_str(&note(text));
        self.notes += 1;
        self
    }

    /// Appends an image and counts it.
    pub fn image(&mut self, img: &Image) -> &mut Self {
        self.body.push_str(&img.html());
        self.body.push('\n');
        self.images += 1;
        self
    }

    /// Appends a table (or `empty` as a paragraph when it has no rows).
    pub fn table(&mut self, t: &Table, empty: &str) -> &mut Self {
        if t.is_empty() {
            self.para(empty)
        } else {
            self.raw(&t.html())
        }
    }

    /// Appends another fragment, adding its counts.
    pub fn append(&mut self, other: Html) -> &mut Self {
        self.body.push_str(&other.body);
        self.images += other.images;
        self.notes += other.notes;
        self
    }
}

/// One section of the page: an anchor id, a title and its content.
#[derive(Debug)]
pub struct Section {
    /// Anchor id (`<section id>`), also what the browser test looks for.
    pub id: &'static str,
    /// Heading.
    pub title: &'static str,
    /// Content.
    pub content: Html,
}

const STYLE: &str = "\
body{font-family:sans-serif;margin:1.5em auto;max-width:1180px;color:#222;padding:0 1em}\
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ccd;padding-bottom:.2em;margin-top:2em}\
nav a{margin-right:1em}\
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}\
th,td{border:1px solid #ccd;padding:.2em .5em;text-align:left;vertical-align:top}\
th{background:#eef}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}\
.note{background:#fff4e0;border-left:4px solid #e8a33d;padding:.4em .7em}\
.grid{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}\
.card{border:1px solid #ccd;border-radius:6px;padding:.6em;margin:.8em 0;display:flex;gap:1em;flex-wrap:wrap}\
.views{display:flex;gap:6px;align-items:flex-end}.views figure{margin:0;text-align:center;font-size:.8em}\
.views img{background:#000;image-rendering:auto}\
.findings{min-width:260px;max-width:480px;font-size:.9em}.findings ul{padding-left:1.2em;margin:.3em 0}\
.chip{display:inline-block;border-radius:3px;padding:0 .4em;margin:1px;font-size:.85em}\
.present{background:#f6c9c4}.uncertain{background:#f8e7b0}\
pre{background:#f6f6fa;padding:.6em;overflow:auto;max-height:30em;font-size:.8em}\
code{font-size:.9em}";

/// On load, counts the images that decoded (`complete` with a non-zero natural width) and records
/// `loaded/total` in `body[data-images]`, and the alt texts of the others in `body[data-broken]`.
const SCRIPT: &str = "window.addEventListener('load',function(){\
var im=document.images,ok=0,bad=[];\
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0){ok++;}else{bad.push(im[i].alt);}}\
document.body.dataset.images=ok+'/'+im.length;document.body.dataset.broken=bad.join('|');});";

/// The whole page: title, table of contents, sections, script. `body[data-expected-images]` is the
/// number of images the page embeds.
pub fn page(title: &str, intro: &str, sections: &[Section]) -> String {
    let images: usize = sections.iter().map(|s| s.content.images).sum();
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    s.push_str(&format!("<title>{}</title>\n", escape(title)));
    s.push_str(&format!("<style>{STYLE}</style>\n</head>\n"));
    s.push_str(&format!(
        "<body data-images=\"pending\" data-expected-images=\"{images}\">\n<h1>{}</h1>\n",
        escape(title)
    ));
    s.push_str(&format!("<p>{}</p>\n<nav>", escape(intro)));
    for sec in sections {
        s.push_str(&format!(
            "<a href=\"#{}\">{}</a>",
            sec.id,
            escape(sec.title)
        ));
    }
    s.push_str("</nav>\n");
    for sec in sections {
        s.push_str(&format!(
            "<section id=\"{}\">\n<h2>{}</h2>\n{}</section>\n",
            sec.id,
            escape(sec.title),
            sec.content.body
        ));
    }
    s.push_str(&format!("<script>{SCRIPT}</script>\n</body>\n</html>\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">R&D's</a>"#),
            "&lt;a href=&quot;x&quot;&gt;R&amp;D&#39;s&lt;/a&gt;"
        );
        assert_eq!(escape("rule: x <= 3.0"), "rule: x &lt;= 3.0");
    }

    #[test]
    fn numbers_are_short_and_stable() {
        assert_eq!(num(3.0), "3");
        assert_eq!(num(0.123456), "0.1235");
        assert_eq!(num(13.776535), "13.78");
        assert_eq!(num(1234.5678), "1235");
        assert_eq!(num(f64::NAN), "NaN");
        assert_eq!(num(1e-5), "1.000e-5");
    }

    #[test]
    fn tables_escape_cells_and_pad_rows() {
        let mut t = Table::new(&["rule", "n"], &[1]);
        t.row(&["a < b"]);
        let h = t.html();
        assert!(
            h.contains("<td>a &lt; b</td><td class=\"num\"></td>"),
            "{h}"
        );
    }

    #[test]
    fn images_are_data_uris_and_counted() {
        let mut h = Html::default();
        h.image(&Image::svg("<svg/>".into(), "a \"plot\"", (10, 20)));
        assert_eq!(h.images, 1);
        assert!(h.body.starts_with(
            "<img alt=\"a &quot;plot&quot;\" width=\"10\" height=\"20\" src=\"data:image/svg+xml;base64,PHN2Zy8+\">"
        ));
    }

    #[test]
    fn page_states_expected_images_and_links_sections() {
        let mut c = Html::default();
        c.image(&Image::png(vec![1, 2], "x", (1, 1)));
        let p = page(
            "QC <report>",
            "intro",
            &[Section {
                id: "counts",
                title: "Counts",
                content: c,
            }],
        );
        assert!(p.contains("data-expected-images=\"1\""));
        assert!(p.contains("<title>QC &lt;report&gt;</title>"));
        assert!(p.contains("<a href=\"#counts\">Counts</a>"));
        assert!(p.contains("<section id=\"counts\">"));
        assert!(!p.contains("http://") && !p.contains("https://"));
    }
}
