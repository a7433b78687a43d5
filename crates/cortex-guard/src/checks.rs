//! The arithmetic checks that turn "looks like a number" into "is one": Luhn for payment cards
//! and ISO 7064 mod-97 for IBANs. Without them most 16-digit order numbers would be redacted.

/// Luhn over ASCII digits (the last one is the check digit). Anything but digits fails.
pub fn luhn(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let mut sum = 0u32;
    for (i, &b) in digits.iter().rev().enumerate() {
        if !b.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

/// The IBAN check: move the first four characters to the end, read letters as 10..35, and the
/// number must be 1 modulo 97. `iban` is the compact form (no spaces), upper case.
pub fn iban_mod97(iban: &[u8]) -> bool {
    if iban.len() < 5 {
        return false;
    }
    // Accumulate in 64 bits and reduce only when it could overflow: one division per dozen
    // digits instead of one per digit.
    let mut acc = 0u64;
    for &b in iban[4..].iter().chain(&iban[..4]) {
        if acc >= 1 << 56 {
            acc %= 97;
        }
        match b {
            b'0'..=b'9' => acc = acc * 10 + u64::from(b - b'0'),
            b'A'..=b'Z' => acc = acc * 100 + u64::from(b - b'A' + 10),
            _ => return false,
        }
    }
    acc % 97 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_refuses_one_digit_off() {
        for good in [
            "4111111111111111",
            "5555555555554444",
            "378282246310005",
            "0",
        ] {
            assert!(luhn(good.as_bytes()), "{good}");
        }
        for bad in [
            "4111111111111112",
            "5555555555554445",
            "378282246310006",
            "",
            "41x1",
        ] {
            assert!(!luhn(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn mod97_accepts_published_examples_and_refuses_bad_check_digits() {
        for good in [
            "DE89370400440532013000",
            "GB82WEST12345698765432",
            "FR1420041010050500013M02606",
        ] {
            assert!(iban_mod97(good.as_bytes()), "{good}");
        }
        for bad in [
            "DE88370400440532013000",
            "GB82WEST12345698765433",
            "GB82",
            "de89370400440532013000",
        ] {
            assert!(!iban_mod97(bad.as_bytes()), "{bad}");
        }
    }
}
