//! Just enough of the WebAssembly binary format to sign a module or
//! component: its 8-byte preamble and its top-level sections, each kept as
//! the raw bytes it was read from.

use std::ops::Range;

const MAGIC: &[u8; 4] = b"\0asm";
/// Core module version 1, and component-model layer 1.
const PREAMBLES: [[u8; 4]; 2] = [[1, 0, 0, 0], [0x0d, 0, 1, 0]];

/// The id of custom sections.
pub const CUSTOM: u8 = 0;

/// One top-level section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section<'a> {
    /// The section id (0 for custom sections).
    pub id: u8,
    /// The custom section's name, for custom sections.
    pub name: Option<&'a str>,
    /// The custom section's data after its name, or the whole payload.
    pub data: &'a [u8],
    /// The section as it appears in the binary, id and length included.
    pub raw: &'a [u8],
}

/// A parsed binary: its preamble and sections.
#[derive(Debug)]
pub struct Binary<'a> {
    /// The first 8 bytes (magic and version).
    pub preamble: &'a [u8],
    /// The top-level sections, in order.
    pub sections: Vec<Section<'a>>,
}

/// Reads an unsigned LEB128 `u32` at `*pos`, advancing it.
pub fn read_u32(bytes: &[u8], pos: &mut usize) -> Result<u32, String> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes
            .get(*pos)
            .ok_or("unexpected end of data in a length")?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return u32::try_from(value).map_err(|_| "length does not fit in 32 bits".to_string());
        }
    }
    Err("length is longer than 5 bytes".into())
}

/// Appends `value` as unsigned LEB128 (the shortest form).
pub fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends a length-prefixed byte string.
pub fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_u32(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

/// Reads a length-prefixed byte string.
pub fn read_bytes<'a>(bytes: &'a [u8], pos: &mut usize) -> Result<&'a [u8], String> {
    let len = read_u32(bytes, pos)? as usize;
    let range: Range<usize> = *pos..pos.checked_add(len).ok_or("length overflows")?;
    let slice = bytes
        .get(range)
        .ok_or("a length runs past the end of the data")?;
    *pos += len;
    Ok(slice)
}

/// Encodes a custom section named `name` holding `data`, in the shortest form.
pub fn custom_section(name: &str, data: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(name.len() + data.len() + 5);
    write_bytes(&mut payload, name.as_bytes());
    payload.extend_from_slice(data);
    let mut out = vec![CUSTOM];
    write_bytes(&mut out, &payload);
    out
}

impl<'a> Binary<'a> {
    /// Splits `bytes` into its preamble and top-level sections.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        let preamble = bytes
            .get(..8)
            .ok_or("shorter than a WebAssembly preamble")?;
        if &preamble[..4] != MAGIC || !PREAMBLES.iter().any(|p| preamble[4..] == p[..]) {
            return Err("not a WebAssembly module or component".into());
        }
        let mut sections = Vec::new();
        let mut pos = 8;
        while pos < bytes.len() {
            let start = pos;
            let id = bytes[pos];
            pos += 1;
            let payload =
                read_bytes(bytes, &mut pos).map_err(|e| format!("section at byte {start}: {e}"))?;
            let (name, data) = if id == CUSTOM {
                let mut at = 0;
                let name = read_bytes(payload, &mut at)
                    .map_err(|e| format!("custom section at byte {start}: {e}"))?;
                let name = std::str::from_utf8(name).map_err(|_| {
                    format!("custom section at byte {start} has a name that is not UTF-8")
                })?;
                (Some(name), &payload[at..])
            } else {
                (None, payload)
            };
            sections.push(Section {
                id,
                name,
                data,
                raw: &bytes[start..pos],
            });
        }
        Ok(Self { preamble, sections })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128_round_trips() {
        for value in [0u32, 1, 127, 128, 300, 16_384, u32::MAX] {
            let mut out = Vec::new();
            write_u32(&mut out, value);
            let mut pos = 0;
            assert_eq!(read_u32(&out, &mut pos).unwrap(), value);
            assert_eq!(pos, out.len());
        }
        assert!(read_u32(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01], &mut 0).is_err());
        assert!(read_u32(&[0x80], &mut 0).is_err());
    }

    #[test]
    fn splits_sections() {
        let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
        bytes.extend(custom_section("hello", b"world"));
        bytes.extend([1, 2, 0xaa, 0xbb]);
        let binary = Binary::parse(&bytes).unwrap();
        assert_eq!(binary.sections.len(), 2);
        assert_eq!(binary.sections[0].name, Some("hello"));
        assert_eq!(binary.sections[0].data, b"world");
        assert_eq!(binary.sections[1].data, &[0xaa, 0xbb]);
        assert!(Binary::parse(b"\0asm\x02\0\0\0").is_err());
        assert!(Binary::parse(&bytes[..bytes.len() - 1]).is_err());
    }
}
