//! A bounded XML reader for imported files, on quick-xml: the document is streamed, and handed
//! out as its root element's children, one small tree at a time, so a 100,000-part file costs
//! little more than its bytes. A DOCTYPE is refused outright, which makes entity expansion
//! ("billion laughs") and external entities impossible; only XML's five predefined entities and
//! character references are resolved. Nesting, attributes, children, elements per part and in
//! the whole document, and text per element are capped ([`Limits`]). Errors name the line.

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use super::{line_of, ImportError};

/// What one document may hold. Each cap is far above what a real file needs; together they bound
/// the tree of one part (at most `part_elements` elements of `attributes` attributes each: a few
/// MB, whatever the file), which is all the reader holds at a time.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Deepest element nesting (RFC 6030 documents need about ten levels).
    pub depth: usize,
    /// Attributes on one element, namespace declarations aside (PSKC elements carry at most
    /// four).
    pub attributes: usize,
    /// Children of one element below the root (a PSKC `Key` has about a dozen kinds of child;
    /// the root's children are the parts, read one at a time, and not capped here).
    pub children: usize,
    /// Elements in one child of the root (a key package holds 15 to 40).
    pub part_elements: usize,
    /// Elements in the whole document: 50 for each of 100,000 key packages (jobs.max_items'
    /// default), where vendors' files hold 15 to 40 per package.
    pub elements: usize,
    /// Characters of text in one element (base64 values of a few hundred bytes are typical).
    pub text: usize,
}

impl Limits {
    pub const DEFAULT: Self = Self {
        depth: 32,
        attributes: 32,
        children: 100,
        part_elements: 1_000,
        elements: 5_000_000,
        text: 64 * 1024,
    };
}

/// A parsed element: local names only (PSKC, XML Encryption and XML Signature names do not
/// collide, and vendors are loose with namespaces).
#[derive(Debug, Default)]
pub struct Element {
    pub name: String,
    pub attributes: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Element>,
    /// Byte offset of the start tag, for messages.
    pub offset: usize,
}

impl Element {
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn path(&self, names: &[&str]) -> Option<&Element> {
        names.iter().try_fold(self, |e, n| e.child(n))
    }

    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn trimmed(&self) -> &str {
        self.text.trim()
    }
}

/// A document read as its root element and the root's children, in order.
pub struct Parts<'a> {
    doc: Document<'a>,
}

impl<'a> Parts<'a> {
    /// Checks the encoding (UTF-8, with or without a byte order mark) before anything is read.
    pub fn new(body: &'a [u8], limits: Limits) -> Result<Self, ImportError> {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        if body.starts_with(&[0xFE, 0xFF]) || body.starts_with(&[0xFF, 0xFE]) {
            return Err(ImportError::Unreadable(
                "The file is UTF-16; send it as UTF-8.".into(),
            ));
        }
        let text = std::str::from_utf8(body).map_err(|e| {
            ImportError::at_line(
                line_of(body, e.valid_up_to()),
                "the file is not UTF-8 text.",
            )
        })?;
        let mut reader = Reader::from_str(text);
        reader.config_mut().check_end_names = true;
        Ok(Self {
            doc: Document {
                bytes: body,
                reader,
                limits,
                stack: Vec::new(),
                elements: 0,
                total_elements: 0,
                pending_close: false,
                event_start: 0,
            },
        })
    }

    /// An error at byte `offset`, naming its line.
    pub fn error(&self, offset: usize, message: impl std::fmt::Display) -> ImportError {
        self.doc.error(offset, message)
    }

    /// The root element, with its attributes (its children come from [`Parts::next_part`]).
    pub fn root(&mut self) -> Result<Element, ImportError> {
        loop {
            match self.doc.next()? {
                Node::Open(root) => {
                    let shallow = Element {
                        name: root.name.clone(),
                        attributes: root.attributes.clone(),
                        offset: root.offset,
                        ..Element::default()
                    };
                    self.doc.stack.push(root);
                    // The root is no part's element.
                    self.doc.elements = 0;
                    return Ok(shallow);
                }
                Node::Text(text) if text.trim().is_empty() => {}
                Node::Text(_) => {
                    return Err(self.doc.error(
                        self.doc.event_start,
                        "text outside the root element: this is not an XML document.",
                    ))
                }
                Node::Close | Node::End => {
                    return Err(ImportError::Unreadable(
                        "The file is not an XML document: it has no root element.".into(),
                    ))
                }
            }
        }
    }

    /// The next child of the root, whole; None once the root is closed. Call after
    /// [`Parts::root`].
    pub fn next_part(&mut self) -> Result<Option<Element>, ImportError> {
        let doc = &mut self.doc;
        loop {
            match doc.next()? {
                Node::Open(start) => doc.stack.push(start),
                Node::Close => {
                    let element = doc.stack.pop().expect("a close follows an open");
                    match doc.stack.len() {
                        0 => return Ok(None),
                        1 => {
                            doc.elements = 0;
                            return Ok(Some(element));
                        }
                        _ => doc
                            .stack
                            .last_mut()
                            .expect("a parent")
                            .children
                            .push(element),
                    }
                }
                Node::Text(text) => {
                    // Text directly in the root is the whitespace between its children.
                    if doc.stack.len() <= 1 {
                        continue;
                    }
                    let open = doc.stack.last_mut().expect("an open element");
                    if open.text.len() + text.len() > doc.limits.text {
                        let offset = open.offset;
                        return Err(doc.error(offset, "an element holds too much text."));
                    }
                    open.text.push_str(&text);
                }
                Node::End => {
                    let open = doc.stack.last().map(|e| (e.name.clone(), e.offset));
                    return Err(match open {
                        Some((name, offset)) => doc.error(
                            doc.bytes.len(),
                            format!(
                                "the file ends before the element {} (line {}) is closed.",
                                name,
                                line_of(doc.bytes, offset)
                            ),
                        ),
                        None => {
                            ImportError::Unreadable("The file ends before its root element.".into())
                        }
                    });
                }
            }
        }
    }
}

/// What the reader hands the parser.
enum Node {
    Open(Element),
    Close,
    Text(String),
    End,
}

struct Document<'a> {
    bytes: &'a [u8],
    reader: Reader<&'a [u8]>,
    limits: Limits,
    stack: Vec<Element>,
    /// Elements read in the current top-level part (header element or key package).
    elements: usize,
    /// Elements read in the whole document.
    total_elements: usize,
    /// The last element was empty (`<a/>`): its close is due.
    pending_close: bool,
    /// Byte offset where the last event began.
    event_start: usize,
}

impl Document<'_> {
    fn position(&self) -> usize {
        self.reader.buffer_position() as usize
    }

    fn error(&self, offset: usize, message: impl std::fmt::Display) -> ImportError {
        ImportError::at_line(line_of(self.bytes, offset), message)
    }

    fn next(&mut self) -> Result<Node, ImportError> {
        if std::mem::take(&mut self.pending_close) {
            return Ok(Node::Close);
        }
        loop {
            let before = self.position();
            self.event_start = before;
            let event = self.reader.read_event().map_err(|e| {
                let at = self.reader.error_position() as usize;
                let mut message = e.to_string();
                message.truncate(200);
                self.error(at, format!("the file is not well-formed XML ({message})."))
            })?;
            return Ok(match event {
                Event::Start(start) => Node::Open(self.open(&start, before)?),
                Event::Empty(start) => {
                    // Reported as an open followed by a close.
                    self.pending_close = true;
                    Node::Open(self.open(&start, before)?)
                }
                Event::End(_) => Node::Close,
                Event::Text(t) => Node::Text(t.xml10_content().into_owned()),
                Event::CData(t) => Node::Text(t.xml10_content().into_owned()),
                Event::GeneralRef(r) => {
                    let resolved = match r.resolve_char_ref() {
                        Ok(Some(c)) => Some(c.to_string()),
                        Ok(None) => {
                            quick_xml::escape::resolve_predefined_entity(&r).map(str::to_string)
                        }
                        Err(_) => None,
                    };
                    match resolved {
                        Some(text) => Node::Text(text),
                        None => {
                            return Err(self.error(
                                before,
                                format!(
                                    "the entity reference &{}; is not defined; entity declarations are not accepted.",
                                    shown(&r)
                                ),
                            ))
                        }
                    }
                }
                Event::DocType(_) => {
                    return Err(self.error(
                        before,
                        "a DOCTYPE declaration is not accepted (it could declare entities).",
                    ))
                }
                Event::Decl(decl) => {
                    if let Some(Ok(encoding)) = decl.encoding() {
                        if !matches!(encoding.to_ascii_lowercase().as_str(), "utf-8" | "utf8") {
                            return Err(self.error(
                                before,
                                format!("the XML declaration names the encoding {:?}; send the file as UTF-8.", shown(&encoding)),
                            ));
                        }
                    }
                    continue;
                }
                Event::Comment(_) | Event::PI(_) => continue,
                Event::Eof => Node::End,
            });
        }
    }
}

impl Document<'_> {
    fn open(&mut self, start: &BytesStart, offset: usize) -> Result<Element, ImportError> {
        let limits = self.limits;
        if self.stack.len() >= limits.depth {
            return Err(self.error(
                offset,
                format!("elements nest deeper than {} levels.", limits.depth),
            ));
        }
        // Children are added to their parent as they close: the parent holds every earlier
        // sibling of this one.
        if let [_, .., parent] = self.stack.as_slice() {
            if parent.children.len() >= limits.children {
                return Err(self.error(
                    offset,
                    format!(
                        "the element {} has more than {} child elements.",
                        shown(&parent.name),
                        limits.children
                    ),
                ));
            }
        }
        self.elements += 1;
        if self.elements > limits.part_elements {
            return Err(self.error(
                offset,
                format!(
                    "a part of the document (a KeyPackage, say) holds more than {} elements.",
                    limits.part_elements
                ),
            ));
        }
        self.total_elements += 1;
        if self.total_elements > limits.elements {
            return Err(self.error(
                offset,
                format!(
                    "the document holds more than {} elements; split it into smaller files.",
                    limits.elements
                ),
            ));
        }
        let mut element = Element {
            name: start.local_name().as_ref().to_string(),
            offset,
            ..Element::default()
        };
        for attribute in start.attributes() {
            let attribute = attribute
                .map_err(|e| self.error(offset, format!("an attribute is malformed ({e}).")))?;
            let key = attribute.key;
            if key.as_ref() == "xmlns" || key.as_ref().starts_with("xmlns:") {
                continue;
            }
            if element.attributes.len() == limits.attributes {
                return Err(self.error(
                    offset,
                    format!("an element has more than {} attributes.", limits.attributes),
                ));
            }
            let value = attribute
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| {
                    self.error(
                        offset,
                        format!("an attribute value of {} cannot be read ({e}); entity declarations are not accepted.", shown(&element.name)),
                    )
                })?;
            element
                .attributes
                .push((key.local_name().as_ref().to_string(), value.into_owned()));
        }
        Ok(element)
    }
}

/// Shortens text from the file for a message.
pub fn shown(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limits = Limits {
        depth: 4,
        attributes: 2,
        children: 3,
        part_elements: 10,
        elements: 12,
        text: 8,
    };

    /// The number of parts of `body`, read under `SMALL`.
    fn parts(body: &str) -> Result<usize, String> {
        let mut parts = Parts::new(body.as_bytes(), SMALL).map_err(|e| e.to_string())?;
        parts.root().map_err(|e| e.to_string())?;
        let mut n = 0;
        while parts.next_part().map_err(|e| e.to_string())?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    #[test]
    fn each_cap_is_reached_then_refused_with_its_line() {
        let tree = "<p><a><b/><b/></a><a><b/><b/></a><a><b/><b/></a></p>";
        let cases = [
            // Children below the root: 3, then 4.
            ("<r><p><a/><a/><a/></p></r>", Ok(1)),
            (
                "<r><p><a/><a/><a/>\n<a/></p></r>",
                Err("Line 2: the element p has more than 3 child elements."),
            ),
            // Depth: the root and three levels, then four.
            ("<r><p><a><b/></a></p></r>", Ok(1)),
            (
                "<r><p><a>\n<b><c/></b></a></p></r>",
                Err("Line 2: elements nest deeper than 4 levels."),
            ),
            // Attributes.
            ("<r><p x=\"1\" y=\"2\" xmlns:z=\"urn:z\"/></r>", Ok(1)),
            (
                "<r><p x=\"1\" y=\"2\" z=\"3\"/></r>",
                Err("Line 1: an element has more than 2 attributes."),
            ),
            // Elements in one part: 10, then 11.
            (&format!("<r>{tree}</r>"), Ok(1)),
            (
                &format!("<r>{}</r>", tree.replace("<b/></a></p>", "<b/>\n<b/></a></p>")),
                Err("Line 2: a part of the document (a KeyPackage, say) holds more than 10 elements."),
            ),
            // Elements in the document, the root included: 12, then 13.
            (&format!("<r>{}</r>", "<p/>".repeat(11)), Ok(11)),
            (
                &format!("<r>{}\n<p/></r>", "<p/>".repeat(11)),
                Err("Line 2: the document holds more than 12 elements; split it into smaller files."),
            ),
            // Text.
            ("<r><p>12345678</p></r>", Ok(1)),
            (
                "<r>\n<p>123456789</p></r>",
                Err("Line 2: an element holds too much text."),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(parts(body), want.map_err(str::to_string), "{body}");
        }
    }
}
