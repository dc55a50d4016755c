//! Tenant and timeline ids: 128-bit values written as 32 lowercase hex characters, on the wire
//! (gRPC requests, the replication protocol's `options`, object store keys) and as directory
//! names. Lowercase only, so that one id has exactly one spelling. Every part parses and checks
//! them here.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

/// Why a string is not a 128-bit hex id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id {input:?}: expected 32 lowercase hex characters")]
pub struct ParseIdError {
    kind: &'static str,
    input: String,
}

fn parse_hex16(kind: &'static str, s: &str) -> Result<[u8; 16], ParseIdError> {
    let err = || ParseIdError {
        kind,
        input: s.chars().take(64).collect(),
    };
    if s.len() != 32
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(err());
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| err())?;
    }
    Ok(out)
}

/// 16 bytes from the kernel's random source.
fn random16() -> std::io::Result<[u8; 16]> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

macro_rules! id_type {
    ($name:ident, $kind:literal) => {
        #[doc = concat!("A ", $kind, " id.")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            #[doc = concat!("A fresh random ", $kind, " id (from `/dev/urandom`).")]
            pub fn generate() -> std::io::Result<Self> {
                random16().map($name)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex16($kind, s).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}

id_type!(TenantId, "tenant");
id_type!(TimelineId, "timeline");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let s = "0123456789abcdef0011223344556677";
        let id: TenantId = s.parse().unwrap();
        assert_eq!(id.to_string(), s);
        assert_eq!(format!("{id:?}"), s);
        for bad in [
            "",
            "0123",
            &s.to_uppercase(),
            &format!("{s}0"),
            "0123456789abcdef001122334455667g",
            "é123456789abcdef00112233445566",
        ] {
            let e = bad.parse::<TimelineId>().unwrap_err().to_string();
            assert!(
                e.contains("timeline id") && e.contains("32 lowercase hex"),
                "{e}"
            );
        }
    }

    #[test]
    fn generated_ids_differ_and_parse() {
        let a = TimelineId::generate().unwrap();
        let b = TimelineId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.to_string().parse::<TimelineId>().unwrap(), a);
    }
}
