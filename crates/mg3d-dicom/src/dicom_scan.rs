//! A pre-scan of a DICOM Part 10 file's element headers, before dicom-rs parses it.
//!
//! dicom-rs allocates whatever an element's length declares before it finds the file too short,
//! so a 1 KB file could ask for gigabytes and seconds; and it recurses into nested sequences, so deep
//! nesting could overflow a worker's stack. This scan walks the meta group and the data set up to
//! the pixel data (inflating a deflated data set), checking every declared length against the bytes
//! that remain and the nesting depth, and rejects what dicom-rs would misread: elements without a
//! valid VR under an explicit transfer syntax, nested undefined-length UN elements. Defects pydicom
//! reads through are reported as [`Repairs`] for the parser instead: a meta group length that
//! disagrees with the meta group, a data set that is implicit VR from its first element although
//! the meta group says explicit, and top-level undefined-length UN elements (dropped).

use std::io::Read;

use mg3d_volume::Reject;

/// Deepest sequence nesting accepted (real objects nest a handful of levels).
pub const MAX_SEQUENCE_DEPTH: usize = 64;

/// Largest inflated data set scanned (a deflated file inflating past it is left to the parser).
const MAX_INFLATED: u64 = 256 << 20;

/// How far [`check_element_lengths`] got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    /// Every element header before the pixel data was checked (or the rest is the parser's); the
    /// file can be parsed after these repairs.
    Done(Repairs),
    /// The bytes ended before the pixel data: a longer prefix is needed.
    NeedMore,
}

/// What the parser must be given instead of the file's bytes, for defects pydicom reads through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Repairs {
    /// The meta group length (its value at byte .0) disagrees with where the meta elements end
    /// (a writer changed an element and not the length); the parser is given .1.
    pub meta_group_length: Option<(usize, u32)>,
    /// The data set, from this byte (after the meta group), is implicit VR little endian although
    /// the meta group says explicit VR little endian: it is to be parsed as implicit VR.
    pub implicit_vr_from: Option<usize>,
    /// Top-level undefined-length UN elements (sequences re-encoded as UN, implicit VR inside,
    /// which dicom-rs cannot parse), as byte ranges to drop; mg3d reads none of them.
    pub dropped: Vec<std::ops::Range<usize>>,
}

impl Repairs {
    /// True when the file can be parsed as it is.
    pub fn is_empty(&self) -> bool {
        self.meta_group_length.is_none()
            && self.implicit_vr_from.is_none()
            && self.dropped.is_empty()
    }
}

/// How far a walk got (inside the scan).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    Done,
    NeedMore,
}

/// The value representations of DICOM PS3.5 (6.2).
const KNOWN_VRS: [[u8; 2]; 34] = [
    *b"AE", *b"AS", *b"AT", *b"CS", *b"DA", *b"DS", *b"DT", *b"FD", *b"FL", *b"IS", *b"LO", *b"LT",
    *b"OB", *b"OD", *b"OF", *b"OL", *b"OV", *b"OW", *b"PN", *b"SH", *b"SL", *b"SQ", *b"SS", *b"ST",
    *b"SV", *b"TM", *b"UC", *b"UI", *b"UL", *b"UN", *b"UR", *b"US", *b"UT", *b"UV",
];

const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

/// Checks the start of a file (`prefix`, preamble included) whose whole size is `file_len`.
/// Files without the DICM magic are left to the parser.
pub fn check_element_lengths(prefix: &[u8], file_len: u64) -> Result<Scan, Reject> {
    if prefix.get(128..132) != Some(b"DICM") {
        return Ok(Scan::Done(Repairs::default()));
    }
    let mut repairs = Repairs::default();
    Ok(match walk(prefix, file_len, &mut repairs)? {
        Walk::Done => Scan::Done(repairs),
        Walk::NeedMore => Scan::NeedMore,
    })
}

fn walk(prefix: &[u8], file_len: u64, repairs: &mut Repairs) -> Result<Walk, Reject> {
    let complete = prefix.len() as u64 >= file_len;
    let mut meta = Cursor {
        b: prefix,
        pos: 132,
        total: file_len,
        explicit: true,
        big: false,
        complete,
    };
    let Some(ts) = meta.meta_group(&mut repairs.meta_group_length)? else {
        return Ok(meta.out_of_bytes());
    };
    let mut data = Cursor {
        explicit: ts.as_deref() != Some(IMPLICIT_LE),
        big: ts.as_deref() == Some(EXPLICIT_BE),
        ..meta
    };
    if ts.as_deref() == Some(DEFLATED) {
        if !complete {
            return Ok(Walk::NeedMore);
        }
        let mut inflated = Vec::new();
        flate2::read::DeflateDecoder::new(&prefix[data.pos..])
            .take(MAX_INFLATED)
            .read_to_end(&mut inflated)
            .map_err(|e| corrupt(format!("the deflated data set does not inflate: {e}")))?;
        data = Cursor {
            b: &inflated,
            pos: 0,
            total: inflated.len() as u64,
            complete: true,
            ..data
        };
        // Repairs are offsets into the file's bytes, which an inflated data set is not.
        return data.data_set(None);
    }
    // pydicom's test: a first element without a valid VR means the data set is implicit VR.
    if ts.as_deref() == Some(EXPLICIT_LE)
        && let Some(vr) = data.b.get(data.pos + 4..data.pos + 6)
        && !KNOWN_VRS.iter().any(|k| k == vr)
    {
        repairs.implicit_vr_from = Some(data.pos);
        data.explicit = false;
    }
    data.data_set(Some(&mut repairs.dropped))
}

fn corrupt(m: String) -> Reject {
    Reject::new("dicom_corrupt", m)
}

fn unreadable(m: String) -> Reject {
    Reject::new("dicom_unreadable", m)
}

/// A position in a byte buffer holding the start (or all) of a data set of `total` bytes.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    total: u64,
    explicit: bool,
    big: bool,
    /// Whether `b` holds all `total` bytes.
    complete: bool,
}

/// One element header.
struct Element {
    group: u16,
    elem: u16,
    vr: [u8; 2],
    len: u32,
    header: usize,
}

impl Cursor<'_> {
    fn u16(&self, at: usize) -> Option<u16> {
        let b: [u8; 2] = self.b.get(at..at + 2)?.try_into().ok()?;
        Some(if self.big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.b.get(at..at + 4)?.try_into().ok()?;
        Some(if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn out_of_bytes(&self) -> Walk {
        if self.complete {
            Walk::Done
        } else {
            Walk::NeedMore
        }
    }

    /// Bytes of the data set after `n` more from the cursor.
    fn remaining_after(&self, n: usize) -> u64 {
        self.total.saturating_sub((self.pos + n) as u64)
    }

    /// The element header at the cursor (`None`: the bytes end inside it).
    fn element(&self) -> Result<Option<Element>, Reject> {
        let (Some(group), Some(elem)) = (self.u16(self.pos), self.u16(self.pos + 2)) else {
            return Ok(None);
        };
        if group == 0xFFFE || !self.explicit {
            // Items and delimiters never have a VR; implicit VR elements neither.
            let Some(len) = self.u32(self.pos + 4) else {
                return Ok(None);
            };
            return Ok(Some(Element {
                group,
                elem,
                vr: *b"  ",
                len,
                header: 8,
            }));
        }
        let Some(vr) = self.b.get(self.pos + 4..self.pos + 6) else {
            return Ok(None);
        };
        let vr = [vr[0], vr[1]];
        if !KNOWN_VRS.contains(&vr) {
            // Implicit VR under an explicit syntax (pydicom guesses and reads on) or a VR nobody
            // defines: dicom-rs would take value bytes for lengths.
            return Err(unreadable(format!(
                "element ({group:04X},{elem:04X}) has no valid VR ({:?}) although the transfer syntax is explicit VR",
                String::from_utf8_lossy(&vr)
            )));
        }
        let long = matches!(
            &vr,
            b"OB"
                | b"OD"
                | b"OF"
                | b"OL"
                | b"OV"
                | b"OW"
                | b"SQ"
                | b"SV"
                | b"UC"
                | b"UN"
                | b"UR"
                | b"UT"
                | b"UV"
        );
        let (len, header) = if long {
            (self.u32(self.pos + 8), 12)
        } else {
            (self.u16(self.pos + 6).map(u32::from), 8)
        };
        Ok(len.map(|len| Element {
            group,
            elem,
            vr,
            len,
            header,
        }))
    }

    /// Walks the meta group (explicit VR little endian); returns its transfer syntax (`None`
    /// inside: absent) with the cursor on the data set, or `None` when the bytes end first.
    /// A group length (0002,0000) that disagrees with where the group's elements end (pydicom reads
    /// by group number) is put in `fix` as (byte of its value, the right value).
    #[allow(clippy::option_option)]
    fn meta_group(
        &mut self,
        fix: &mut Option<(usize, u32)>,
    ) -> Result<Option<Option<String>>, Reject> {
        let start = self.pos;
        // (byte of the group length's value, where it says the group ends)
        let mut declared: Option<(usize, usize)> = None;
        loop {
            let Some(group) = self.u16(self.pos) else {
                return Ok(None);
            };
            if group != 0x0002 {
                if let Some((at, end)) = declared
                    && end != self.pos
                {
                    *fix = Some((at, (self.pos - (at + 4)) as u32));
                }
                return Ok(Some(transfer_syntax(&self.b[start..self.pos])));
            }
            let Some(e) = self.element()? else {
                return Ok(None);
            };
            if e.elem == 0x0000 && e.len == 4 {
                let at = self.pos + e.header;
                declared = self.u32(at).map(|n| (at, at + 4 + n as usize));
            }
            if e.len as u64 > self.remaining_after(e.header) {
                return Err(corrupt(format!("a meta element declares {} bytes", e.len)));
            }
            self.pos += e.header + e.len as usize;
        }
    }

    /// Walks the data set to the pixel data. Top-level undefined-length UN elements are skipped
    /// and their ranges pushed to `dropped`; without it (or nested) they are unreadable.
    fn data_set(
        &mut self,
        mut dropped: Option<&mut Vec<std::ops::Range<usize>>>,
    ) -> Result<Walk, Reject> {
        // Open sequences: the end of a defined-length one, `None` for one closed by a delimiter.
        let mut open: Vec<Option<usize>> = Vec::new();
        loop {
            while let Some(Some(end)) = open.last()
                && self.pos >= *end
            {
                open.pop();
            }
            let Some(e) = self.element()? else {
                return Ok(self.out_of_bytes());
            };
            let remaining = self.remaining_after(e.header);
            let defined = e.len != u32::MAX;
            if e.group == 0xFFFE {
                if e.elem == 0xE000 && defined && e.len as u64 > remaining {
                    return Err(corrupt(format!(
                        "an item declares {} bytes; {remaining} remain",
                        e.len
                    )));
                }
                if e.elem == 0xE0DD {
                    // Closes the innermost delimited sequence (and any defined one left inside it).
                    while let Some(Some(_)) = open.last() {
                        open.pop();
                    }
                    open.pop();
                }
                self.pos += e.header; // item contents are elements: walked, not skipped
                continue;
            }
            if (e.group, e.elem) == (0x7FE0, 0x0010) {
                // Short pixel data is decided when the series is assembled (`dicom_truncated` for
                // the whole series). The parser reads this header before it stops: it must be here.
                return Ok(if self.b.len() >= self.pos + e.header {
                    Walk::Done
                } else {
                    self.out_of_bytes()
                });
            }
            if &e.vr == b"UN" && !defined {
                // A sequence re-encoded as UN (implicit VR inside an explicit data set): pydicom
                // reads it, dicom-rs cannot and misreads the lengths inside it. At the top level
                // (no enclosing length to fix) it is dropped for the parser.
                if open.is_empty()
                    && let Some(dropped) = dropped.as_deref_mut()
                {
                    let start = self.pos;
                    let mut inner = Cursor {
                        pos: self.pos + e.header,
                        explicit: false,
                        ..*self
                    };
                    match inner.implicit_sequence()? {
                        Some(()) => {
                            dropped.push(start..inner.pos);
                            self.pos = inner.pos;
                            continue;
                        }
                        None if self.complete => {
                            return Err(corrupt(format!(
                                "the undefined-length UN ({:04X},{:04X}) has no sequence delimiter before the file ends",
                                e.group, e.elem
                            )));
                        }
                        None => return Ok(Walk::NeedMore),
                    }
                }
                return Err(unreadable(format!(
                    "element ({:04X},{:04X}) is an undefined-length UN (a sequence in implicit VR), which mg3d's DICOM parser cannot read",
                    e.group, e.elem
                )));
            }
            if defined && e.len as u64 > remaining {
                return Err(corrupt(format!(
                    "element ({:04X},{:04X}) declares {} bytes; {remaining} remain",
                    e.group, e.elem, e.len
                )));
            }
            let starts_item = self.b.get(self.pos + e.header..self.pos + e.header + 4)
                == Some(&[0xFE, 0xFF, 0x00, 0xE0][..]);
            let sequence = &e.vr == b"SQ"
                || (!defined && &e.vr != b"OB" && &e.vr != b"OW")
                || (!self.explicit && defined && starts_item);
            if sequence {
                open.push(defined.then_some(self.pos + e.header + e.len as usize));
                if open.len() > MAX_SEQUENCE_DEPTH {
                    return Err(corrupt(format!(
                        "sequences nest deeper than {MAX_SEQUENCE_DEPTH} levels"
                    )));
                }
                self.pos += e.header;
                continue;
            }
            self.pos += e.header;
            if !defined {
                // An undefined-length OB/OW outside the pixel data holds fragments (items of
                // bytes) up to a sequence delimiter: their lengths are checked and skipped.
                match self.fragments()? {
                    Some(()) => continue,
                    None => return Ok(self.out_of_bytes()),
                }
            }
            self.pos += e.len as usize;
        }
    }
}

impl Cursor<'_> {
    /// The 8-byte header at the cursor of an item, a delimiter or an implicit-VR element: group,
    /// element, 32-bit length (`None`: the bytes end inside it).
    fn short_header(&self) -> Option<(u16, u16, u32)> {
        Some((
            self.u16(self.pos)?,
            self.u16(self.pos + 2)?,
            self.u32(self.pos + 4)?,
        ))
    }

    /// Skips the items of an undefined-length sequence in implicit VR, nested sequences included,
    /// past its sequence delimiter (`None`: the bytes end first).
    fn implicit_sequence(&mut self) -> Result<Option<()>, Reject> {
        let mut depth = 0usize;
        loop {
            let Some((group, elem, len)) = self.short_header() else {
                return Ok(None);
            };
            let defined = len != u32::MAX;
            match (group, elem) {
                (0xFFFE, 0xE0DD) => {
                    self.pos += 8;
                    if depth == 0 {
                        return Ok(Some(()));
                    }
                    depth -= 1;
                }
                // Items: their elements are walked; a delimiter ends an undefined-length one.
                (0xFFFE, 0xE000) | (0xFFFE, 0xE00D) => self.pos += 8,
                (0xFFFE, _) => {
                    return Err(corrupt(format!(
                        "an undefined-length UN holds (FFFE,{elem:04X})"
                    )));
                }
                _ if !defined => {
                    depth += 1;
                    if depth > MAX_SEQUENCE_DEPTH {
                        return Err(corrupt(format!(
                            "sequences nest deeper than {MAX_SEQUENCE_DEPTH} levels"
                        )));
                    }
                    self.pos += 8;
                }
                _ if len as u64 > self.remaining_after(8) => {
                    return Err(corrupt(format!(
                        "element ({group:04X},{elem:04X}) in an undefined-length UN declares {len} bytes"
                    )));
                }
                _ => self.pos += 8 + len as usize,
            }
        }
    }

    /// Skips encapsulated fragments to their sequence delimiter (`None`: the bytes end first).
    fn fragments(&mut self) -> Result<Option<()>, Reject> {
        loop {
            let Some((group, elem, len)) = self.short_header() else {
                return Ok(None);
            };
            match (group, elem) {
                (0xFFFE, 0xE0DD) => {
                    self.pos += 8;
                    return Ok(Some(()));
                }
                (0xFFFE, 0xE000) if len as u64 <= self.remaining_after(8) => {
                    self.pos += 8 + len as usize;
                }
                _ => {
                    return Err(corrupt(format!(
                        "an encapsulated value holds ({group:04X},{elem:04X}) of {len} bytes where a fragment item belongs"
                    )));
                }
            }
        }
    }
}

/// The TransferSyntaxUID value inside a meta group's bytes (explicit VR little endian).
fn transfer_syntax(meta: &[u8]) -> Option<String> {
    let at = meta
        .windows(6)
        .position(|w| w == [0x02, 0x00, 0x10, 0x00, b'U', b'I'])?;
    let len = u16::from_le_bytes([*meta.get(at + 6)?, *meta.get(at + 7)?]) as usize;
    let v = meta.get(at + 8..at + 8 + len)?;
    Some(
        String::from_utf8_lossy(v)
            .trim_end_matches(['\0', ' '])
            .to_string(),
    )
}
