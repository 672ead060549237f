//! SMS length (3GPP TS 23.038): a message is GSM-7 when every character is in the GSM
//! 03.38 default alphabet or its extension table (extension characters take two
//! septets), otherwise UCS-2 (UTF-16 code units). One segment holds 160 septets or 70
//! units; a multi-part message loses room to its concatenation header: 153 septets or
//! 67 units per part. A part never splits an escape pair or a surrogate pair.

use serde::{Deserialize, Serialize};

/// GSM-7 septets in a single-part message.
pub const GSM7_SINGLE_MAX: u32 = 160;
/// GSM-7 septets per part of a multi-part message.
pub const GSM7_PART_MAX: u32 = 153;
/// UCS-2 code units in a single-part message.
pub const UCS2_SINGLE_MAX: u32 = 70;
/// UCS-2 code units per part of a multi-part message.
pub const UCS2_PART_MAX: u32 = 67;

/// How an SMS is encoded on the air.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SmsEncoding {
    #[serde(rename = "GSM-7")]
    Gsm7,
    #[serde(rename = "UCS-2")]
    Ucs2,
}

impl SmsEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            SmsEncoding::Gsm7 => "GSM-7",
            SmsEncoding::Ucs2 => "UCS-2",
        }
    }
}

impl std::fmt::Display for SmsEncoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The length of an SMS body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsLength {
    pub encoding: SmsEncoding,
    /// GSM-7 septets or UCS-2 code units.
    pub units: u32,
    pub segments: u32,
    /// The first character that forced UCS-2, if any.
    pub ucs2_because: Option<char>,
}

/// The GSM 03.38 default alphabet (the escape code 0x1B excluded).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The extension table: each costs an escape plus the character (two septets).
const GSM7_EXTENSION: &str = "\u{000C}^{}\\[~]|€";

/// Septets a character takes in GSM-7, or None when it is not representable.
pub fn gsm7_septets(c: char) -> Option<u32> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Measure `text` as an SMS.
pub fn sms_length(text: &str) -> SmsLength {
    let ucs2_because = text.chars().find(|c| gsm7_septets(*c).is_none());
    let (encoding, single, part) = match ucs2_because {
        None => (SmsEncoding::Gsm7, GSM7_SINGLE_MAX, GSM7_PART_MAX),
        Some(_) => (SmsEncoding::Ucs2, UCS2_SINGLE_MAX, UCS2_PART_MAX),
    };
    let cost = |c: char| match encoding {
        SmsEncoding::Gsm7 => gsm7_septets(c).unwrap_or(1),
        SmsEncoding::Ucs2 => c.len_utf16() as u32,
    };
    let units: u32 = text.chars().map(cost).sum();
    let segments = if units == 0 {
        0
    } else if units <= single {
        1
    } else {
        // Pack greedily: a character that does not fit whole starts the next part.
        let (mut segments, mut used) = (1, 0);
        for c in text.chars() {
            let n = cost(c);
            if used + n > part {
                segments += 1;
                used = 0;
            }
            used += n;
        }
        segments
    };
    SmsLength { encoding, units, segments, ucs2_because }
}
